// Upload page: preview the chosen photo, post it to /predict, draw the top-3 bars.
// Without JavaScript the form posts to the server, which renders the same markup.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = document.getElementById("image-input");
  const zone = document.getElementById("drop-zone");
  const button = document.getElementById("classify-button");
  const result = document.getElementById("result");
  const preview = document.getElementById("preview");
  const bars = document.getElementById("bars");
  const meta = document.getElementById("result-meta");
  const alertBox = document.getElementById("alert");
  let previewUrl = null;

  function showError(message) {
    alertBox.textContent = message;
    alertBox.classList.remove("d-none");
  }

  function capitalise(text) {
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function renderBars(predictions) {
    const list = PredictionBars.list(predictions, { labelText: function (p) {
      return capitalise(p.label);
    }, animate: true });
    list.id = "predictions";
    bars.replaceChildren(list);
  }

  async function classify(file) {
    document.dispatchEvent(new CustomEvent("image-classifying", { detail: { file: file } }));
    alertBox.classList.add("d-none");
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.hidden = false;
    result.classList.remove("d-none");
    bars.replaceChildren();
    meta.textContent = "Thinking…";
    button.disabled = true;
    const body = new FormData();
    body.append("image", file, file.name);
    body.append("topk", "3");
    try {
      const response = await fetch(form.dataset.api || "/predict", {
        method: "POST", body: body, headers: { "Accept": "application/json" },
      });
      let data = null;
      try { data = await response.json(); } catch (e) { data = null; }
      if (!response.ok || !data || !data.predictions) {
        const message = data && data.error ? data.error.message
          : "The server answered " + response.status + ".";
        result.classList.add("d-none");
        showError(message);
        return;
      }
      renderBars(data.predictions);
      document.dispatchEvent(new CustomEvent("image-classified", { detail: { file: file, result: data } }));
      meta.textContent = "Answered by " + data.model.name + " in " +
        Math.round(data.timings_ms.total) + " ms";
    } catch (err) {
      result.classList.add("d-none");
      showError("Could not reach the server: " + err.message);
    } finally {
      button.disabled = false;
    }
  }

  form.addEventListener("submit", function (event) {
    if (!input.files || !input.files.length) return;
    event.preventDefault();
    classify(input.files[0]);
  });
  input.addEventListener("change", function () {
    if (input.files && input.files.length) classify(input.files[0]);
  });
  ["dragenter", "dragover"].forEach(function (name) {
    zone.addEventListener(name, function (event) {
      event.preventDefault();
      zone.classList.add("dragover");
    });
  });
  ["dragleave", "drop"].forEach(function (name) {
    zone.addEventListener(name, function () { zone.classList.remove("dragover"); });
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) {
      try { input.files = files; } catch (e) { /* read-only in old browsers */ }
      classify(files[0]);
    }
  });
  // Paste a screenshot or copied image straight into the page.
  document.addEventListener("paste", function (event) {
    const items = event.clipboardData ? event.clipboardData.files : null;
    if (items && items.length) classify(items[0]);
  });
})();
