// The teaching kiosk: live camera + one big button (or a photo chooser when there is no
// camera), big animated bars, "How does it see it?", start over after an idle time,
// optional auto-capture.  Settings come from /kiosk/settings.json, read again at every
// start-over so a teacher's change reaches a running kiosk.  While the explanation is
// open (a class listening) the idle time is longer: EXPLAIN_IDLE_FACTOR times the setting,
// at least EXPLAIN_IDLE_MIN_SECONDS, and its countdown shows in the explanation itself.
// Live mode (a teacher setting, on by default; static/js/live.js): while the camera is
// live, the answer and its bars follow it; the button still freezes a full picture.
// An answer the model marks "unknown" is shown as "I'm not sure what this is", bars grey.
// Live answers are steadied over about a second (static/js/steady.js); a press of the
// button on a scene that has not changed joins them, so the two agree.  An answer stays
// while the camera still sees what was answered: the idle time runs once the scene
// changes (static/js/scene.js).
// Every word is in the page's language (static/js/i18n.js); the class names come with each
// answer (display_label); the language switch reloads the page in another language.
import { _ } from "./i18n.js";
import { pictureForm, request, withQuery } from "./api.js";
import { barItems, updateBars } from "./bars.js";
import { startCamera } from "./camera.js";
import { explain as explainCamera, show as showCameraHelp } from "./camera-help.js";
import { renderExplanation, requestExplanation } from "./explain-view.js";
import { liveAnswers, liveFrame } from "./live.js";
import { createSteady } from "./steady.js";
import { same as sameScene, thumb, watch } from "./scene.js";

function setUp(root) {
  const $ = function (id) { return document.getElementById(id); };
  const video = $("camera");
  const still = $("still");
  const uploadZone = $("upload-zone");
  const uploadReason = $("upload-reason");
  const fileInput = $("file-input");
  const chooseButton = $("choose-button");
  const startingNote = $("starting-note");
  const stage = $("stage");
  const statusBox = $("status");
  const barsList = $("kiosk-bars");
  const captureButton = $("capture-button");
  const againButton = $("again-button");
  const explainButton = $("explain-button");
  const dialog = $("explain-dialog");
  const dialogTitle = $("explain-title");
  const closeButton = $("explain-close");
  const panel = $("explain-panel");
  const idleNote = $("idle-note");
  const explainIdleNote = $("explain-idle-note");
  const canvas = $("capture-canvas");
  const fullscreenButton = $("fullscreen-button");
  const behindDialog = [root.querySelector(".kiosk-header"), root.querySelector(".kiosk-main")];
  const liveAnswer = $("live-answer");
  const START_TEXT = statusBox.textContent;
  const UNSURE_TEXT = _("I'm not sure what this is");
  const UPLOAD_TEXT = _("Show me a photo, and I will tell you what is in it.");
  // The confidence chip's colour, by level (the words come translated with the settings).
  const CONFIDENCE_CLASSES = ["very-sure", "fairly-sure", "not-sure", "just-a-guess"];
  const EXPLAIN_IDLE_FACTOR = 3;
  const EXPLAIN_IDLE_MIN_SECONDS = 180;
  const ANSWER_TOPK = 5;          // steady averages need the runners-up as well
  const STILL_TO_JOIN_MS = 1000;  // the button's picture joins live answers of this long

  let settings = {
    idle_seconds: Number(root.dataset.idleSeconds),
    auto_capture_seconds: Number(root.dataset.autoCaptureSeconds),
    bars: Number(root.dataset.bars),
    explain: root.dataset.explain === "true",
    live: root.dataset.live === "true",
    confidence_words: [[0.7, _("very sure")], [0.4, _("fairly sure")], [0.15, _("not sure")],
      [0, _("just a guess")]],
    explanation_template: null,
  };
  let cameraOn = false;
  let busy = false;
  let lastActivity = Date.now();
  let lastPicture = null;   // {blob, name, label} of the answer on screen
  let pictureUrl = null;
  let explained = null;     // the picture the explanation panel was drawn for
  let generation = 0;       // bumps at every start-over: late answers are dropped
  let autoTimer = null;
  let stillShowable = true;  // false when the browser cannot draw the picture (HEIC, junk)

  function setState(state) {
    root.dataset.state = state;
    if (typeof updateLive === "function") updateLive();
  }
  function setStage(name) {
    root.dataset.stage = name;
    video.hidden = name !== "video";
    still.hidden = name !== "still";
    uploadZone.hidden = name !== "upload";
  }

  function say(text) {
    statusBox.classList.remove("kiosk-status-problem");
    statusBox.textContent = text;
  }

  // The button to press next: the camera's, or "Choose a photo".
  function primaryButton() { return cameraOn ? captureButton : chooseButton; }

  // A prediction's class as the page's language names it, capitalised.
  function display(p) {
    const shown = p.display_label || p.label;
    return shown.charAt(0).toUpperCase() + shown.slice(1);
  }

  // [words, level] for a score: "very sure" is level 0.
  function confidence(score) {
    const words = settings.confidence_words;
    for (let i = 0; i < words.length; i++) {
      if (score >= words[i][0]) return [words[i][1], i];
    }
    return [words[words.length - 1][1], words.length - 1];
  }

  // ------------------------------------------------------------------ settings

  async function loadSettings() {
    try {
      const answer = await request("GET", root.dataset.settingsUrl, null, { cache: "no-store" });
      if (answer.ok && answer.data) settings = answer.data;
    } catch { /* keep the settings the page was rendered with */ }
    root.dataset.idleSeconds = settings.idle_seconds;
    root.dataset.autoCaptureSeconds = settings.auto_capture_seconds;
    root.dataset.bars = settings.bars;
    root.dataset.explain = settings.explain ? "true" : "false";
    root.dataset.live = settings.live ? "true" : "false";
    scheduleAutoCapture();
    updateLive();
  }

  // ------------------------------------------------------------------ camera / upload

  async function openCamera() {
    try {
      const on = await startCamera(video, { facingMode: "environment", width: 1280, height: 720 });
      if (!on) { useUpload(null); return; }
      cameraOn = true;
      startingNote.hidden = true;
      setStage("video");
      setState("live");
      captureButton.hidden = false;
      say(START_TEXT);
      updateLive();
    } catch (err) {
      useUpload(err);
    }
  }

  function useUpload(error) {  // why there is no camera, and what to do: camera-help.js
    cameraOn = false;
    startingNote.hidden = true;
    showCameraHelp(uploadReason, explainCamera(error, "kiosk"));
    captureButton.hidden = true;
    setStage("upload");
    setState("upload");
    say(UPLOAD_TEXT);
  }

  async function capture(auto) {
    if (busy || !cameraOn) return;
    // A scene the live answers have seen for a while: this picture joins their average.
    const join = live.running && steady.label !== null &&
      scene.stillFor() >= STILL_TO_JOIN_MS;
    const blob = await liveFrame(video, canvas);  // the same picture as live answers
    if (!blob) { say(_("The camera is still starting…")); return; }
    const seen = thumb(canvas);
    classify(blob, "camera.jpg", auto, function (data) {
      const answer = join ? steady.update(data) : data;
      return Object.assign({}, answer, { scene: seen });
    });
  }

  // ------------------------------------------------------------------ answer

  function showPicture(blob) {
    if (pictureUrl) URL.revokeObjectURL(pictureUrl);
    pictureUrl = URL.createObjectURL(blob);
    stillShowable = true;
    still.src = pictureUrl;
    setStage("still");
  }

  // settle(data): the answer to show for a /predict body (default: as it is).
  async function classify(blob, name, auto, settle) {
    busy = true;
    const mine = generation;
    if (!auto) {
      showPicture(blob);
      setState("thinking");
      say(_("Let me look…"));
      barsList.replaceChildren();
    }
    captureButton.disabled = true;
    try {
      const answer = await request("POST", root.dataset.predictUrl, pictureForm(blob, name,
        { topk: Math.max(settings.bars, ANSWER_TOPK) }));
      const data = answer.data;
      if (mine !== generation) return;
      if (!answer.ok || !data || !data.predictions) {
        showProblem(data && data.error ? data.error.message
          : _("The computer answered {status}.", { status: answer.status }));
        return;
      }
      const settled = settle ? settle(data) : data;
      showAnswer(settled.predictions, { blob: blob, name: name, scene: settled.scene }, auto,
        settled.unknown === true);
    } catch {
      if (mine === generation) showProblem(_("The computer could not be reached."));
    } finally {
      busy = false;
      captureButton.disabled = false;
    }
  }

  // The headline of an answer: the label and how sure, or "I'm not sure what this is"
  // (the model's open-set criterion said the picture is unlike anything it knows).
  function headlineOf(top, unknown) {
    const headline = document.createElement("span");
    headline.className = "kiosk-answer-label";
    if (unknown) {
      headline.textContent = UNSURE_TEXT;
      const hint = document.createElement("span");
      hint.className = "kiosk-unsure-hint";
      hint.textContent = _("It does not look like anything I was taught. My best guess is {label}.",
        { label: display(top) });
      return [headline, " ", hint];
    }
    headline.textContent = display(top);
    const level = confidence(top.score);
    const chip = document.createElement("span");
    chip.className = "kiosk-confidence kiosk-confidence-" + CONFIDENCE_CLASSES[Math.min(level[1], 3)];
    chip.textContent = level[0];
    return [headline, " ", chip];
  }

  function showAnswer(predictions, picture, auto, unknown) {
    lastActivity = Date.now();
    const top = predictions[0];
    picture.label = top.label;
    picture.index = top.index;
    lastPicture = picture;
    explained = null;
    statusBox.classList.remove("kiosk-status-problem");
    statusBox.classList.toggle("kiosk-unsure", unknown);
    statusBox.replaceChildren.apply(statusBox, headlineOf(top, unknown));
    renderBars(predictions, unknown);
    setState("result");
    if (!auto && stillShowable) setStage("still");
    againButton.hidden = false;
    captureButton.hidden = !auto || !cameraOn;
    explainButton.hidden = !settings.explain;
    if (!auto) againButton.focus({ preventScroll: true });
  }

  function showProblem(message) {
    lastActivity = Date.now();
    statusBox.classList.remove("kiosk-unsure");
    statusBox.textContent = _("Sorry, that did not work. {reason}", { reason: message });
    statusBox.classList.add("kiosk-status-problem");  // a sentence, not a headline
    barsList.replaceChildren();
    if (root.dataset.stage === "still") setStage(cameraOn ? "video" : "upload");
    setState("result");
    againButton.hidden = false;
    captureButton.hidden = true;
    explainButton.hidden = true;
  }

  // live: update the bars on screen in place (their widths glide) instead of growing
  // new ones from zero.
  function renderBars(predictions, unknown, live) {
    const options = { look: "kiosk", labelText: display, animate: true, unknown: unknown };
    const shown = predictions.slice(0, settings.bars);
    barsList.classList.toggle("kiosk-bars-unsure", Boolean(unknown));
    if (live && updateBars(barsList, shown, options)) return;
    barsList.replaceChildren(...barItems(shown, options));
  }

  // ------------------------------------------------------------------ live mode

  // Live while the camera shows its moving picture and nothing else is on screen: the
  // start screen, or an answer from auto-capture.  A frozen answer, the explanation and
  // the upload screen stop it.
  function liveWanted() {
    return settings.live && cameraOn && dialog.hidden && !document.hidden &&
      root.dataset.stage === "video" && root.dataset.state === "live";
  }

  const steady = createSteady();
  const scene = watch(video);
  const live = liveAnswers({
    video: video,
    url: root.dataset.predictUrl,
    topk: function () { return Math.max(settings.bars, ANSWER_TOPK); },
    wanted: liveWanted,
    onAnswer: function (raw) {
      if (!liveWanted()) return;
      const data = steady.update(raw);
      const top = data.predictions[0];
      const unknown = data.unknown === true;
      root.dataset.liveLabel = top.label;
      if (data.changed) {
        root.dataset.liveChanges = String(Number(root.dataset.liveChanges || 0) + 1);
      }
      liveAnswer.classList.toggle("kiosk-unsure", unknown);
      liveAnswer.replaceChildren.apply(liveAnswer, headlineOf(top, unknown));
      liveAnswer.hidden = false;
      statusBox.hidden = true;  // the live answer takes the prompt's place on the screen
      root.dataset.liveState = "on";
      root.dataset.liveAnswers = String(Number(root.dataset.liveAnswers || 0) + 1);
      renderBars(data.predictions, unknown, true);
    },
  });

  function updateLive() {
    if (liveWanted()) {
      live.start();
    } else {
      live.stop();
      liveAnswer.hidden = true;
      statusBox.hidden = false;
      if (root.dataset.state === "live") barsList.replaceChildren();
      root.dataset.liveState = "off";
    }
  }

  // ------------------------------------------------------------------ explanation

  async function openExplanation() {
    if (!lastPicture) return;
    lastActivity = Date.now();
    dialog.hidden = false;
    dialog.scrollTop = 0;
    behindDialog.forEach(function (el) { el.inert = true; });
    explainButton.setAttribute("aria-expanded", "true");
    root.dataset.explaining = "true";
    updateLive();
    dialogTitle.focus();
    if (explained === lastPicture) return;
    const picture = lastPicture;
    panel.replaceChildren();
    panel.textContent = _("Looking closer…");
    try {
      const data = await requestExplanation(root.dataset.explainUrl, picture.blob,
        picture.name, picture.index);
      if (picture !== lastPicture) return;
      const label = display(data.explained);
      const sentences = settings.explanation_template
        ? settings.explanation_template.replace("{label}", label) : data.explanation;
      renderExplanation(panel, data, {
        label: label, sentences: sentences, technical: false,
      });
      explained = picture;
    } catch (err) {
      if (picture === lastPicture) {
        panel.textContent = _("Sorry, that did not work. {reason}", { reason: err.message });
      }
    }
  }

  function closeExplanation() {
    if (dialog.hidden) return;
    dialog.hidden = true;
    explainIdleNote.hidden = true;
    behindDialog.forEach(function (el) { el.inert = false; });
    delete root.dataset.explaining;
    updateLive();
    explainButton.setAttribute("aria-expanded", "false");
    if (!explainButton.hidden) explainButton.focus({ preventScroll: true });
  }

  // ------------------------------------------------------------------ start over

  function startOver() {
    generation += 1;
    statusBox.classList.remove("kiosk-unsure");
    closeExplanation();
    lastPicture = null;
    explained = null;
    panel.replaceChildren();
    barsList.replaceChildren();
    idleNote.hidden = true;
    const focusWasOnAnswer = [againButton, explainButton, document.body]
      .indexOf(document.activeElement) >= 0 || !document.activeElement;
    againButton.hidden = true;
    explainButton.hidden = true;
    busy = false;
    captureButton.disabled = false;
    if (cameraOn) {
      setStage("video");
      setState("live");
      captureButton.hidden = false;
      say(START_TEXT);
    } else {
      setStage("upload");
      setState("upload");
      say(UPLOAD_TEXT);
    }
    // The focused button just disappeared: the keyboard goes on from the next one to press.
    if (focusWasOnAnswer) primaryButton().focus({ preventScroll: true });
    lastActivity = Date.now();
    loadSettings();
  }

  function checkIdle() {
    const explaining = !dialog.hidden;
    const setting = Number(settings.idle_seconds) || 0;
    const idle = explaining && setting
      ? Math.max(setting * EXPLAIN_IDLE_FACTOR, EXPLAIN_IDLE_MIN_SECONDS) : setting;
    const note = explaining ? explainIdleNote : idleNote;
    // The camera still sees what was answered: the idle time has not begun.
    if (cameraOn && lastPicture && sameScene(lastPicture.scene, thumb(video))) {
      lastActivity = Date.now();
    }
    (explaining ? idleNote : explainIdleNote).hidden = true;
    if (!idle || root.dataset.state !== "result") { note.hidden = true; return; }
    const left = idle * 1000 - (Date.now() - lastActivity);
    if (left <= 0) { startOver(); return; }
    const warn = explaining ? 10000 : 5000;
    if (idle >= 10 && left <= warn) {
      note.textContent = _("Starting over in {n} s. Touch the screen to keep this.",
        { n: Math.ceil(left / 1000) });
      note.hidden = false;
    } else {
      note.hidden = true;
    }
  }

  function scheduleAutoCapture() {
    if (autoTimer) clearInterval(autoTimer);
    autoTimer = null;
    const every = Number(settings.auto_capture_seconds) || 0;
    if (every > 0) {
      autoTimer = setInterval(function () {
        const state = root.dataset.state;
        const showingStill = root.dataset.stage === "still";
        if (cameraOn && !busy && !showingStill && dialog.hidden &&
            (state === "live" || state === "result")) {
          capture(true);
        }
      }, every * 1000);
    }
  }

  // ------------------------------------------------------------------ events

  ["pointerdown", "keydown", "wheel", "touchstart"].forEach(function (name) {
    document.addEventListener(name, function () { lastActivity = Date.now(); },
      { passive: true, capture: true });
  });
  captureButton.addEventListener("click", function () { capture(false); });
  againButton.addEventListener("click", startOver);
  explainButton.addEventListener("click", openExplanation);
  closeButton.addEventListener("click", closeExplanation);
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") closeExplanation();
  });
  chooseButton.addEventListener("click", function () { fileInput.click(); });
  fileInput.addEventListener("change", function () {
    if (fileInput.files && fileInput.files.length) {
      classify(fileInput.files[0], fileInput.files[0].name, false);
      fileInput.value = "";
    }
  });
  // Drops anywhere are caught, so a dropped file never navigates away from the kiosk.
  ["dragenter", "dragover"].forEach(function (name) {
    document.addEventListener(name, function (event) {
      event.preventDefault();
      stage.classList.add("dragover");
    });
  });
  ["dragleave", "drop"].forEach(function (name) {
    document.addEventListener(name, function (event) {
      event.preventDefault();
      stage.classList.remove("dragover");
    });
  });
  document.addEventListener("drop", function (event) {
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length && !busy) classify(files[0], files[0].name, false);
  });
  if (document.fullscreenEnabled) {
    fullscreenButton.hidden = false;
    fullscreenButton.addEventListener("click", function () {
      if (document.fullscreenElement) document.exitFullscreen();
      else document.documentElement.requestFullscreen().catch(function () {});
    });
  }
  // A file the browser cannot show (not a picture): no broken-image icon on the stage.
  still.addEventListener("error", function () {
    stillShowable = false;
    if (root.dataset.stage === "still") setStage(cameraOn ? "video" : "upload");
  });
  setInterval(checkIdle, 500);
  document.addEventListener("visibilitychange", updateLive);

  // The language switch: the same kiosk in another language (remembered in a cookie);
  // the address keeps no ?lang= afterwards.
  root.querySelectorAll("[data-lang]").forEach(function (button) {
    button.addEventListener("click", function () {
      window.location.replace(withQuery(window.location.pathname, { lang: button.dataset.lang }));
    });
  });
  if (/[?&]lang=/.test(window.location.search)) {
    window.history.replaceState(null, "", window.location.pathname);
  }

  loadSettings().then(openCamera);
}

const root = document.getElementById("kiosk");
if (root) setUp(root);
