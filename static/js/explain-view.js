// "How the model sees it": asks POST /explain and draws the preprocessing steps and the
// Grad-CAM heatmap.  Shared by the upload page (explain-toggle.js) and the kiosk (kiosk.js).
(function () {
  "use strict";

  async function request(url, blob, filename) {
    const body = new FormData();
    body.append("image", blob, filename || "photo.jpg");
    const response = await fetch(url || "/explain", {
      method: "POST", body: body, headers: { "Accept": "application/json" },
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok || !data || !data.heatmap) {
      throw new Error(data && data.error ? data.error.message
        : "The server answered " + response.status + ".");
    }
    return data;
  }

  function figure(src, alt, title, caption, className) {
    const fig = document.createElement("figure");
    fig.className = "explain-step " + (className || "");
    const img = document.createElement("img");
    img.src = src;
    img.alt = alt;
    img.className = "explain-image";
    const cap = document.createElement("figcaption");
    const strong = document.createElement("strong");
    strong.textContent = title;
    cap.append(strong, document.createElement("br"), caption);
    fig.append(img, cap);
    return fig;
  }

  // options.label: the class name to show (e.g. translated); options.sentences: the text;
  // options.technical: false leaves out the grid size and layer name (kiosk).
  function render(container, data, options) {
    options = options || {};
    const label = options.label || data.explained.label;
    const sentences = options.sentences || data.explanation;
    const intro = document.createElement("p");
    intro.className = "explain-sentences";
    intro.textContent = sentences;
    const steps = document.createElement("div");
    steps.className = "explain-steps";
    const alts = {
      original: "Your photo",
      resized: "Your photo, shrunk",
      cropped: "The square from the middle that the model looks at",
      tensor: "The three grids of numbers for red, green and blue, drawn in grey",
    };
    data.steps.forEach(function (step, i) {
      const arrow = i ? "→ " : "";
      steps.append(figure("data:image/png;base64," + step.png, alts[step.name] || step.title,
        arrow + step.title, step.caption, "explain-step-" + step.name));
    });
    const detail = options.technical === false ? "."
      : " (" + data.heatmap.grid.join(" × ") + " areas, Grad-CAM on layer " +
        data.heatmap.layer + ").";
    const heat = figure("data:image/png;base64," + data.heatmap.overlay_png,
      "Heatmap over the square: the red and yellow parts made the computer think " + label,
      "Where it looked for \u201c" + label + "\u201d",
      "Red and yellow mattered most, blue least" + detail, "explain-step-heatmap");
    heat.querySelector("img").classList.add("explain-heatmap");
    steps.append(heat);
    container.replaceChildren(intro, steps);
  }

  window.ExplainView = { request: request, render: render };
})();
