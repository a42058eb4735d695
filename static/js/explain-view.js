// "How the model sees it": asks POST /explain and draws the heatmap (first: it is the
// point) with a colour key, then the story of the preprocessing steps.  Shared by the
// upload page (explain-toggle.js) and the kiosk (kiosk.js).
import { _ } from "./i18n.js";
import { errorOf, pictureForm, request } from "./api.js";

// url: the explain endpoint (the page's data-explain-url); classIndex (optional): the
// class to explain (default: the picture's top answer).
export async function requestExplanation(url, blob, filename, classIndex) {
  const fields = classIndex !== undefined && classIndex !== null
    ? { class_index: classIndex } : {};
  const answer = await request("POST", url, pictureForm(blob, filename || "photo.jpg", fields));
  if (!answer.ok || !answer.data || !answer.data.heatmap) {
    throw new Error(errorOf(answer.data, answer.status));
  }
  return answer.data;
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

// The colours of the heatmap, from "hardly" to "a lot" (webapp/serving/explain.py's ramp).
function legend() {
  const key = document.createElement("div");
  key.className = "explain-legend";
  key.setAttribute("aria-hidden", "true");  // the caption says it in words
  const low = document.createElement("span");
  low.textContent = _("hardly");
  const bar = document.createElement("span");
  bar.className = "explain-legend-bar";
  const high = document.createElement("span");
  high.textContent = _("a lot");
  key.append(low, bar, high);
  return key;
}

// options.label: the class name to show (by default the answer's display_label);
// options.sentences: the text; options.technical: true adds the grid size and layer name
// (for people who ask).
export function renderExplanation(container, data, options) {
  options = options || {};
  const label = options.label || data.explained.display_label || data.explained.label;
  const sentences = options.sentences || data.explanation;
  const caption = options.technical
    ? _("This is a heatmap: its colours show how much each part of the square counted. Red and yellow counted a lot, blue hardly at all ({areas} areas, Grad-CAM on layer {layer}).",
      { areas: data.heatmap.grid.join(" × "), layer: data.heatmap.layer })
    : _("This is a heatmap: its colours show how much each part of the square counted. Red and yellow counted a lot, blue hardly at all.");
  const heat = figure("data:image/png;base64," + data.heatmap.overlay_png,
    _("Heatmap over the square: the red and yellow parts made the computer think {label}", { label: label }),
    _("Where it looked for \u201c{label}\u201d", { label: label }),
    caption, "explain-step-heatmap");
  heat.querySelector("img").classList.add("explain-heatmap");
  heat.insertBefore(legend(), heat.querySelector("figcaption"));

  const intro = document.createElement("p");
  intro.className = "explain-sentences";
  intro.textContent = sentences;
  const steps = document.createElement("ol");
  steps.className = "explain-steps";
  steps.setAttribute("aria-label", _("What happens to the photo first"));
  const alts = {
    original: _("Your photo"),
    resized: _("Your photo shrunk, drawn in a grey frame as big as the photo was"),
    cropped: _("The square from the middle that the model looks at"),
    tensor: _("Four dots from the middle of the square, drawn big, each with its three numbers for red, green and blue"),
  };
  data.steps.forEach(function (step, i) {
    const item = document.createElement("li");
    item.append(figure("data:image/png;base64," + step.png, alts[step.name] || step.title,
      (i ? "→ " : "") + step.title, step.caption, "explain-step-" + step.name));
    steps.append(item);
  });
  const story = document.createElement("div");
  story.className = "explain-story";
  story.append(intro, steps);
  const layout = document.createElement("div");
  layout.className = "explain-layout";
  layout.append(heat, story);
  container.replaceChildren(layout);
}
