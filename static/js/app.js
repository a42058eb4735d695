// Upload page: preview the chosen photo, post it to /predict, draw the bars.  Several
// photos dropped (or pasted) at once are answered one after the other ("Next photo").
// The answer is scrolled into view when it is below the screen (a phone), and read out
// to screen readers.  Without JavaScript the form posts to the server, which renders the
// same markup.  Other scripts hear about every photo through the "image-classifying" and
// "image-classified" events (explain-toggle.js draws "How the model sees it" from them).
import { _ } from "./i18n.js";
import { errorOf, pictureForm, request } from "./api.js";
import { heading as headingOf, predictionList, sentence as sentenceOf, unsure } from "./bars.js";

function setUp(form) {
  const $ = function (id) { return document.getElementById(id); };
  const input = $("image-input");
  const zone = $("drop-zone");
  const button = $("classify-button");
  const result = $("result");
  const preview = $("preview");
  const heading = $("guesses-heading");
  const bars = $("bars");
  const meta = $("result-meta");
  const alertBox = $("alert");
  const announcer = $("announcer");
  const queueBox = $("queue");
  const queuePosition = $("queue-position");
  const nextButton = $("next-button");
  const reduceMotion = window.matchMedia("(prefers-reduced-motion: reduce)");
  let previewUrl = null;
  let queue = [];          // the photos of the last drop; queue[shown] is on screen
  let shown = 0;
  let current = null;      // the file whose answer is awaited: late answers are dropped

  // Bring an element into view when it is not (fully) on the screen.
  function reveal(el) {
    const box = el.getBoundingClientRect();
    const height = window.innerHeight || document.documentElement.clientHeight;
    if (box.top >= 0 && box.bottom <= height) return;
    el.scrollIntoView({ block: box.height > height ? "start" : "nearest",
                        behavior: reduceMotion.matches ? "auto" : "smooth" });
  }

  // The result, once laid out: a photo still loading has no height yet, and its arrival
  // would push the bars below a phone's screen after the scroll, so scroll again then.
  function revealResult() {
    reveal(result);
    if (!preview.hidden && !preview.complete) {
      preview.addEventListener("load", function () { reveal(result); }, { once: true });
    }
  }

  function showError(message) {
    result.classList.add("d-none");
    alertBox.textContent = message;
    alertBox.classList.remove("d-none");
    reveal(alertBox);
  }

  function capitalise(text) {
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  // The class as the page's language names it (display_label), capitalised.
  function label(p) { return capitalise(p.display_label || p.label); }

  function renderBars(predictions, unknown) {
    const list = predictionList(predictions, { labelText: label, animate: true,
                                                    unknown: unknown });
    list.id = "predictions";
    bars.replaceChildren(...(unknown ? [unsure(), list] : [list]));
    heading.textContent = headingOf(predictions.length);
  }

  function showQueue() {
    queueBox.hidden = queue.length < 2;
    queuePosition.textContent = _("Photo {n} of {count}", { n: shown + 1, count: queue.length });
    nextButton.hidden = shown + 1 >= queue.length;
  }

  async function classify(file) {
    current = file;
    document.dispatchEvent(new CustomEvent("image-classifying", { detail: { file: file } }));
    alertBox.classList.add("d-none");
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.hidden = false;
    result.classList.remove("d-none");
    bars.replaceChildren();
    meta.textContent = _("Thinking…");
    announcer.textContent = "";
    showQueue();
    button.disabled = true;
    reveal(result);
    try {
      const answer = await request("POST", form.dataset.api,
        pictureForm(file, file.name, { topk: 3 }));
      const data = answer.data;
      if (file !== current) return;
      if (!answer.ok || !data || !data.predictions) {
        showError(errorOf(data, answer.status));
        return;
      }
      renderBars(data.predictions, data.unknown === true);
      meta.textContent = _("Answered by {name} in {ms} ms",
        { name: data.model.name, ms: Math.round(data.timings_ms.total) });
      const sentence = sentenceOf(data.predictions, label);
      announcer.textContent = data.unknown
        ? _("I'm not sure what this is. Best guesses: {answers}", { answers: sentence }) : sentence;
      revealResult();
      document.dispatchEvent(new CustomEvent("image-classified", { detail: { file: file, result: data } }));
    } catch (err) {
      if (file === current) showError(_("Could not reach the server: {reason}", { reason: err.message }));
    } finally {
      if (file === current) button.disabled = false;
    }
  }

  // One photo, or several: the first now, the others with "Next photo".
  function start(files) {
    queue = Array.from(files || []);
    shown = 0;
    if (queue.length) classify(queue[0]);
  }

  nextButton.addEventListener("click", function () {
    if (shown + 1 < queue.length) {
      shown += 1;
      classify(queue[shown]);
    }
  });

  form.addEventListener("submit", function (event) {
    if (!input.files || !input.files.length) return;
    event.preventDefault();
    start(input.files);
  });
  input.addEventListener("change", function () {
    if (input.files && input.files.length) start(input.files);
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
    if (files && files.length) start(files);
  });
  // Paste a screenshot or copied image straight into the page.
  document.addEventListener("paste", function (event) {
    const files = event.clipboardData ? event.clipboardData.files : null;
    if (files && files.length) start(files);
  });

  // "Try one": the example photos, fetched from the page's own server.
  const examples = $("examples-form");
  if (examples) {
    examples.addEventListener("click", async function (event) {
      const choice = event.target.closest(".example-button");
      if (!choice) return;
      event.preventDefault();
      try {
        const response = await fetch(choice.dataset.src);
        const blob = await response.blob();
        start([new File([blob], choice.value + ".jpg", { type: blob.type || "image/jpeg" })]);
      } catch (err) {
        showError(_("Could not load the example: {reason}", { reason: err.message }));
      }
    });
  }
}

const form = document.getElementById("upload-form");
if (form) setUp(form);
