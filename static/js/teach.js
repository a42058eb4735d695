// The Teach page: the webcam preview, hold-to-capture bursts per class (or dropped
// files), thumbnails with delete, Train with live progress, Cancel, and the new model's
// report with Try it / Activate.  Every call goes to /admin/api/* with the session cookie
// and the page's CSRF token (api.js); the addresses are the page's (#teach's data-*-url,
// those with a {placeholder} filled in by fillUrl).
import { _, joinNames, lang } from "./i18n.js";
import { call, fillUrl, pictureForm, withQuery } from "./api.js";
import { predictionList, unsure, updateBars } from "./bars.js";
import { grabFrame, startCamera } from "./camera.js";
import { explain as explainCamera, show as showCameraHelp } from "./camera-help.js";
import { attachTimer } from "./capture-timer.js";
import { confirmForms } from "./confirm.js";
import { liveAnswers } from "./live.js";
import { createSteady } from "./steady.js";
import { fraction, summary } from "./teach-progress.js";
import { renderResult } from "./teach-result.js";

function setUp(root) {
  const $ = function (id) { return document.getElementById(id); };
  const urls = root.dataset;
  const video = $("teach-camera");
  const canvas = $("teach-canvas");
  const cameraStatus = $("camera-status");
  const BURST_INTERVAL_MS = 250;   // about 4 pictures a second while a button is held
  const POLL_MS = 750;

  let cameraOn = false;
  let capturing = null;   // the class section a burst is running for
  let job = null;         // the job on screen
  let pollTimer = null;
  let model = null;       // the model the result card shows
  let watched = false;    // a job ran while this page was open: show its model when done

  function show(el, visible) { el.hidden = !visible; }

  // ------------------------------------------------------------------ classes

  function sections() { return Array.from(document.querySelectorAll(".teach-class")); }

  function setCounts(counts) {
    let total = 0;
    sections().forEach(function (section) {
      const n = counts[section.dataset.label];
      if (n !== undefined) section.querySelector(".teach-count").textContent = n;
      total += Number(section.querySelector(".teach-count").textContent);
    });
    $("total-count").textContent = total;
    updateTrainable();
  }

  function classError(section, message) {
    const box = section.querySelector(".teach-error");
    box.textContent = message || "";
    show(box, Boolean(message));
  }

  function addThumb(section, item) {
    const figure = document.createElement("figure");
    figure.className = "teach-thumb";
    figure.dataset.imageId = item.id;
    const img = document.createElement("img");
    img.src = withQuery(item.url, { size: 128 });
    img.alt = _("A picture of {label}", { label: section.dataset.label });
    img.width = 96;
    img.height = 72;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "teach-thumb-delete";
    button.setAttribute("aria-label", _("Delete this picture of {label}", { label: section.dataset.label }));
    button.title = _("Delete this picture");
    button.textContent = "×";
    figure.append(img, button);
    section.querySelector(".teach-thumbs").prepend(figure);
  }

  // taken: when the picture was taken (ms since 1970).  Every picture of one hold of the
  // capture button gets the moment it was pressed, so training keeps a burst together
  // (near-copies never end up on both sides of the test); a file keeps its own time.
  async function upload(section, blob, filename, taken) {
    const body = new FormData();
    body.append("label", section.dataset.label);
    body.append("image", blob, filename);
    if (taken) body.append("taken", String(Math.round(taken)));
    const data = await call("POST", urls.imagesUrl, body);
    data.added.forEach(function (item) { addThumb(section, item); });
    setCounts(data.counts);
    return data;
  }

  // Delete one picture (event delegation: thumbnails are added all the time).
  $("classes").addEventListener("click", async function (event) {
    const button = event.target.closest(".teach-thumb-delete");
    if (!button) return;
    const figure = button.closest(".teach-thumb");
    const section = button.closest(".teach-class");
    button.disabled = true;
    try {
      const data = await call("DELETE", fillUrl(urls.imageUrl, { id: figure.dataset.imageId }));
      figure.remove();
      setCounts(data.counts);
      classError(section, "");
    } catch (err) {
      button.disabled = false;
      classError(section, err.message);
    }
  });

  // Delete a class with its pictures.
  sections().forEach(function (section) {
    section.querySelector(".teach-delete-class").addEventListener("click", async function () {
      const label = section.dataset.label;
      if (!window.confirm(_("Delete the class {label} and its pictures?", { label: label }))) return;
      try {
        await call("DELETE", fillUrl(urls.classUrl, { label: label }));
        section.remove();
        setCounts({});
      } catch (err) {
        classError(section, err.message);
      }
    });
  });

  // ------------------------------------------------------------------ files

  async function uploadFiles(section, files) {
    classError(section, "");
    for (const file of files) {
      try {
        await upload(section, file, file.name, file.lastModified);
      } catch (err) {
        classError(section, _("{file}: {reason}", { file: file.name, reason: err.message }));
        if (err.status === 409 || err.status === 404) break;  // dataset full, class gone
      }
    }
  }

  sections().forEach(function (section) {
    const input = section.querySelector(".teach-files");
    input.addEventListener("change", async function () {
      const files = Array.from(input.files || []);
      input.value = "";
      await uploadFiles(section, files);
    });
    const zone = section.querySelector(".teach-drop");
    zone.addEventListener("dragover", function (event) {
      event.preventDefault();
      zone.classList.add("dragover");
    });
    zone.addEventListener("dragleave", function () { zone.classList.remove("dragover"); });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      zone.classList.remove("dragover");
      const files = Array.from(event.dataTransfer.files || []).filter(function (f) {
        return f.type.startsWith("image/");
      });
      uploadFiles(section, files);
    });
  });

  // ------------------------------------------------------------------ camera

  async function openCamera() {
    try {
      if (!(await startCamera(video, { width: 640, height: 480 }))) {
        cameraMissing(null);
        return;
      }
      cameraOn = true;
      cameraStatus.textContent = _("Camera on");
      root.dataset.camera = "on";
      sections().forEach(function (s) { s.querySelector(".teach-capture").disabled = false; });
      $("try-camera").disabled = false;
    } catch (err) {
      cameraMissing(err);
    }
  }

  function cameraMissing(error) {  // why there is no camera, and what to do: camera-help.js
    const help = explainCamera(error, "teach");
    cameraOn = false;
    root.dataset.camera = "off";
    cameraStatus.textContent = help.reason;
    showCameraHelp($("camera-off"), help);
    show(video, false);
    show($("camera-off"), true);
    sections().forEach(function (s) { s.querySelector(".teach-capture").hidden = true; });
    $("try-camera").hidden = true;
  }

  // The camera's whole picture (null when it is off or starting).
  function grab() {
    return cameraOn ? grabFrame(video, canvas, { quality: 0.9 }) : Promise.resolve(null);
  }

  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  async function burst(section) {
    if (capturing || timer.running) return;
    capturing = section;
    const button = section.querySelector(".teach-capture");
    button.classList.add("capturing");
    button.setAttribute("aria-pressed", "true");
    classError(section, "");
    const pressed = Date.now();
    try {
      while (capturing === section) {
        const started = Date.now();
        const blob = await grab();
        if (blob) {
          try {
            await upload(section, blob, "camera.jpg", pressed);
          } catch (err) {
            classError(section, err.message);
            break;
          }
        }
        const wait = BURST_INTERVAL_MS - (Date.now() - started);
        if (wait > 0) await sleep(wait);
      }
    } finally {
      capturing = null;
      button.classList.remove("capturing");
      button.setAttribute("aria-pressed", "false");
    }
  }

  function stopBurst() { capturing = null; }

  sections().forEach(function (section) {
    const button = section.querySelector(".teach-capture");
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("pointerdown", function (event) {
      event.preventDefault();
      if (button.setPointerCapture) {
        try { button.setPointerCapture(event.pointerId); } catch { /* fine */ }
      }
      burst(section);
    });
    ["pointerup", "pointercancel", "lostpointercapture"].forEach(function (name) {
      button.addEventListener(name, stopBurst);
    });
    button.addEventListener("contextmenu", function (event) { event.preventDefault(); });
    button.addEventListener("keydown", function (event) {
      if ((event.key === " " || event.key === "Enter") && !event.repeat) {
        event.preventDefault();
        burst(section);
      }
    });
    button.addEventListener("keyup", function (event) {
      if (event.key === " " || event.key === "Enter") stopBurst();
    });
    button.addEventListener("blur", stopBurst);
  });

  // A timer instead of holding the button (static/js/capture-timer.js).
  const timer = attachTimer({
    sections: sections(), grab: grab, upload: upload, error: classError,
    busy: function () { return Boolean(capturing); },
  });

  // ------------------------------------------------------------------ training

  const trainButton = $("train-button");
  const cancelButton = $("cancel-button");

  function updateTrainable() {
    const counts = sections().map(function (s) {
      return Number(s.querySelector(".teach-count").textContent);
    });
    const busy = job && (job.state === "queued" || job.state === "running");
    const ready = counts.length >= 2 && counts.every(function (n) { return n >= 2; });
    trainButton.disabled = Boolean(busy) || !ready;
    $("train-hint").textContent = counts.length < 2
      ? _("Add a second class: a model needs at least 2 things to tell apart.")
      : ready ? _("Ready. Every class has pictures (20 or more each work better).")
        : _("Every class needs at least 2 pictures (20 or more work better).");
  }

  // The new model's name: the dataset's and the moment in the teacher's own time.
  function modelName() {
    const when = new Date().toLocaleString(lang, {
      year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
    return (root.dataset.datasetName || root.dataset.dataset) + " · " + when;
  }

  function options() {
    return {
      epochs: Number($("opt-epochs").value),
      image_size: Number($("opt-size").value),
      strategy: $("opt-strategy").value,
      name: modelName().slice(0, 80),
    };
  }

  const STATES = { queued: _("queued"), running: _("running"), done: _("done"),
                   failed: _("failed"), cancelled: _("cancelled") };

  function renderJob(data) {
    job = data;
    show($("job"), true);
    const state = $("job-state");
    state.textContent = data.cancel_requested && data.state === "running"
      ? _("{state} (cancelling)", { state: STATES.running }) : (STATES[data.state] || data.state);
    state.className = "badge " + ({
      queued: "text-bg-secondary", running: "text-bg-primary", done: "text-bg-success",
      failed: "text-bg-danger", cancelled: "text-bg-warning",
    }[data.state] || "text-bg-secondary");
    root.dataset.jobState = data.state;
    const pct = Math.round(fraction(data) * 100);
    $("job-bar").style.width = pct + "%";
    $("job-progress").setAttribute("aria-valuenow", String(pct));
    $("job-summary").textContent = summary(data);
    const last = (data.history || [])[data.history ? data.history.length - 1 : 0];
    $("job-metrics").textContent = last
      ? _("Last epoch: training loss {train_loss}, validation loss {val_loss}, validation accuracy {val_acc}%", {
        train_loss: last.train_loss.toFixed(3), val_loss: last.val_loss.toFixed(3),
        val_acc: (last.val_acc * 100).toFixed(0) })
      : "";
    const errorBox = $("job-error");
    errorBox.textContent = data.error || "";
    show(errorBox, Boolean(data.error));
    $("job-log").textContent = (data.messages || []).join("\n");
    const active = data.state === "queued" || data.state === "running";
    show(cancelButton, active);
    cancelButton.disabled = Boolean(data.cancel_requested);
    updateTrainable();
    if (data.state === "done" && data.model_id && (!model || model.id !== data.model_id)) {
      loadModel(data.model_id, watched);
    }
  }

  async function poll() {
    clearTimeout(pollTimer);
    if (!job) return;
    try {
      renderJob(await call("GET", fillUrl(urls.jobUrl, { id: job.id })));
    } catch (err) {
      $("job-summary").textContent = _("Could not ask the server: {reason}", { reason: err.message });
    }
    if (job && (job.state === "queued" || job.state === "running")) {
      pollTimer = setTimeout(poll, POLL_MS);
    }
  }

  trainButton.addEventListener("click", async function () {
    trainButton.disabled = true;
    show($("result"), false);
    model = null;
    try {
      const data = await call("POST", urls.trainUrl, options());
      watched = true;
      renderJob(data);
      pollTimer = setTimeout(poll, POLL_MS);
    } catch (err) {
      show($("job"), true);
      $("job-error").textContent = err.message;
      show($("job-error"), true);
      updateTrainable();
    }
  });

  cancelButton.addEventListener("click", async function () {
    if (!job) return;
    cancelButton.disabled = true;
    try {
      renderJob(await call("DELETE", fillUrl(urls.jobUrl, { id: job.id })));
    } catch (err) {
      $("job-error").textContent = err.message;
      show($("job-error"), true);
    }
    poll();
  });

  // ------------------------------------------------------------------ the new model

  function percent(x) { return x === null || x === undefined ? "–" : (x * 100).toFixed(0) + "%"; }

  // reveal: bring the card into view and move the focus to it (a job just finished while
  // the teacher was watching; on a phone the card is far below the camera).
  async function loadModel(modelId, reveal) {
    let data;
    try {
      data = await call("GET", fillUrl(urls.modelUrl, { id: modelId }));
    } catch (err) {
      $("job-error").textContent = _("The model {id}: {reason}", { id: modelId, reason: err.message });
      show($("job-error"), true);
      return;
    }
    model = data;
    stopLive();
    $("result-name").textContent = data.name;
    $("result-id").textContent = data.id;
    const m = data.metrics || {};
    const tested = m.test_accuracy !== null && m.test_accuracy !== undefined;
    const parts = [tested
      ? _("Validation accuracy {val}, accuracy on pictures it never trained on {test}",
        { val: percent(m.val_accuracy), test: percent(m.test_accuracy) })
      : _("Validation accuracy {val}", { val: percent(m.val_accuracy) }),
    _("classes: {classes}", { classes: joinNames(data.classes || []) })];
    if (m.bursts) {
      const bursts = joinNames(Object.keys(m.bursts).map(function (c) { return c + " " + m.bursts[c]; }));
      parts.push(tested
        ? _("moments each class was taken at (bursts): {bursts}; tested only on bursts it never trained on", { bursts: bursts })
        : _("moments each class was taken at (bursts): {bursts}", { bursts: bursts }));
    }
    if (m.caveat) parts.push(_("but {caveat}.", { caveat: m.caveat }));
    $("result-metrics").textContent = parts.join(" · ");
    renderResult(data, fillUrl(urls.reportUrl, { id: data.id }));
    const img = $("result-confusion");
    if ((data.report_files || []).indexOf("confusion.png") >= 0) {
      img.src = fillUrl(urls.reportFileUrl, { id: data.id, file: "confusion.png" });
      show(img, true);
    } else {
      show(img, false);
    }
    show($("result-active"), Boolean(data.active));
    show($("activated-note"), Boolean(data.active));
    $("activate-button").disabled = Boolean(data.active);
    $("try-result").replaceChildren();
    show($("try-error"), false);
    show($("result"), true);
    if (reveal) {
      const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
      $("result").scrollIntoView({ block: "start", behavior: smooth ? "smooth" : "auto" });
      $("result-title").focus({ preventScroll: true });
    }
  }

  // live: move the bars on screen (they glide) rather than drawing new ones.
  function bars(predictions, unknown, live) {
    const box = $("try-result");
    const list = box.querySelector("ol.predictions");
    const note = box.querySelector(".prediction-unknown");
    if (live && updateBars(list, predictions, { unknown: unknown })) {
      if (unknown && !note) box.prepend(unsure());
      if (!unknown && note) note.remove();
      return;
    }
    const fresh = predictionList(predictions, { spacing: "mb-2", unknown: unknown });
    box.replaceChildren(...(unknown ? [unsure(), fresh] : [fresh]));
  }

  async function tryImage(blob, name) {
    if (!model) return;
    show($("try-error"), false);
    try {
      const data = await call("POST", fillUrl(urls.predictUrl, { id: model.id }),
        pictureForm(blob, name, { topk: 3 }));
      bars(data.predictions, data.unknown === true);
    } catch (err) {
      $("try-error").textContent = err.message;
      show($("try-error"), true);
    }
  }

  // "Try it live": the camera's picture to the new model a few times a second
  // (static/js/live.js: one request at a time), until pressed again; the answers
  // steadied as on the kiosk (static/js/steady.js).
  const tryButton = $("try-camera");
  const steady = createSteady();
  const live = liveAnswers({
    video: video,
    url: "",
    topk: function () { return 5; },  // the steady average needs the runners-up
    wanted: function () { return Boolean(model) && cameraOn && !document.hidden; },
    onAnswer: function (raw) {
      const data = steady.update(raw);
      show($("try-error"), false);
      bars(data.predictions.slice(0, 3), data.unknown === true, true);
      root.dataset.liveAnswers = String(Number(root.dataset.liveAnswers || 0) + 1);
    },
  });

  function stopLive() {
    live.stop();
    tryButton.setAttribute("aria-pressed", "false");
    tryButton.textContent = _("Try it live");
  }

  tryButton.addEventListener("click", function () {
    if (live.running) { stopLive(); return; }
    if (!model) return;
    live.url = fillUrl(urls.predictUrl, { id: model.id });
    steady.reset();
    tryButton.setAttribute("aria-pressed", "true");
    tryButton.textContent = _("Stop trying");
    live.start();
  });
  $("try-file").addEventListener("change", function () {
    const input = $("try-file");
    if (input.files && input.files.length) tryImage(input.files[0], input.files[0].name);
    input.value = "";
  });

  $("activate-button").addEventListener("click", async function () {
    if (!model) return;
    const button = $("activate-button");
    button.disabled = true;
    try {
      await call("POST", fillUrl(urls.activateUrl, { id: model.id }));
      model.active = true;
      show($("result-active"), true);
      show($("activated-note"), true);
    } catch (err) {
      button.disabled = false;
      $("try-error").textContent = err.message;
      show($("try-error"), true);
    }
  });

  // ------------------------------------------------------------------ start

  confirmForms();
  $("try-camera").disabled = true;
  updateTrainable();
  openCamera();
  if (root.dataset.latestJob) {
    job = { id: root.dataset.latestJob, state: root.dataset.latestState };
    watched = job.state === "queued" || job.state === "running";
    poll();
  }
}

const root = document.getElementById("teach");
if (root) setUp(root);
