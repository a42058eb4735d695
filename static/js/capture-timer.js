// The Teach page's timer capture, for a teacher alone in front of the camera: press a
// class's "Timer" button, and after a count-down of COUNTDOWN_S seconds (time to pick up
// the object and step back) the camera takes about 4 pictures a second for the seconds
// chosen beside the camera, while the teacher turns and moves the object with both
// hands.  The count-down and the time left show in big numbers over the camera picture;
// pressing the button again (or Escape) stops it.  Every MOMENT_S seconds of a timed
// capture count as one moment (a burst: pictures of one moment stay together when the
// pictures are split to test the model), so a long capture can test the model as well.
//
// attachTimer({sections, grab, upload, error, busy}) wires every class section's
// ".teach-timer" button: grab() -> a JPEG Blob of the camera (null when off), upload(
// section, blob, name, taken) -> Promise, error(section, message), busy() -> true while
// a hold of "Hold to capture" runs.
import { _, ngettext } from "./i18n.js";

export const COUNTDOWN_S = 3;
const EVERY_MS = 250;
export const MOMENT_S = 3;

// The moment a picture taken ``elapsed`` ms into a capture started at ``started`` (ms
// since 1970) counts for: the start of its MOMENT_S-second slice.
export function momentOf(started, elapsed) {
  return started + Math.floor(elapsed / (MOMENT_S * 1000)) * MOMENT_S * 1000;
}

// The whole seconds left of a capture of ``seconds`` after ``elapsed`` ms (what shows).
export function secondsLeft(seconds, elapsed) {
  return Math.ceil((seconds * 1000 - elapsed) / 1000);
}

function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

export function attachTimer(options) {
  const overlay = document.getElementById("timer-overlay");
  const number = document.getElementById("timer-number");
  const words = document.getElementById("timer-words");
  const length = document.getElementById("timer-seconds");
  let running = null;  // {section, stop: bool}

  function showOverlay(big, text, capturing) {
    overlay.hidden = false;
    overlay.classList.toggle("teach-timer-capturing", Boolean(capturing));
    number.textContent = big;
    words.textContent = text;
  }

  async function run(section, button) {
    const label = section.dataset.label;
    const run = { section: section, stop: false };
    running = run;
    button.setAttribute("aria-pressed", "true");
    section.classList.add("teach-timed");
    try {
      for (let n = COUNTDOWN_S; n > 0 && !run.stop; n--) {
        showOverlay(String(n), _("Get ready to show {label}…", { label: label }));
        await sleep(1000);
      }
      const seconds = Number(length.value) || 10;
      const started = Date.now();
      let taken = 0;
      while (!run.stop) {
        const elapsed = Date.now() - started;
        if (elapsed >= seconds * 1000) break;
        const left = secondsLeft(seconds, elapsed);
        showOverlay(String(left), _("Taking pictures of {label}: turn it, move it closer " +
          "and farther.", { label: label }), true);
        const blob = await options.grab();
        if (blob) {
          const moment = momentOf(started, elapsed);
          try {
            await options.upload(section, blob, "camera.jpg", moment);
            taken += 1;
          } catch (err) {
            options.error(section, err.message);
            break;
          }
        }
        const wait = EVERY_MS - ((Date.now() - started) - elapsed);
        if (wait > 0) await sleep(wait);
      }
      if (taken) {
        showOverlay("✓", ngettext("{n} picture of {label}", "{n} pictures of {label}",
          taken, { label: label }));
        await sleep(1200);
      }
    } finally {
      if (running === run) running = null;
      overlay.hidden = true;
      button.setAttribute("aria-pressed", "false");
      section.classList.remove("teach-timed");
    }
  }

  // The buttons work once the camera is on (#teach[data-camera="on"]), and are hidden
  // when there is none.
  const root = document.getElementById("teach");
  function followCamera() {
    const state = root.dataset.camera;
    document.querySelectorAll(".teach-timer").forEach(function (button) {
      button.disabled = state !== "on";
      button.hidden = state === "off";
    });
    document.getElementById("timer-options").hidden = state === "off";
  }
  new MutationObserver(followCamera).observe(root, { attributes: true,
    attributeFilter: ["data-camera"] });
  followCamera();

  options.sections.forEach(function (section) {
    const button = section.querySelector(".teach-timer");
    if (!button) return;
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", function () {
      if (running) { running.stop = true; return; }
      if (options.busy()) return;
      options.error(section, "");
      run(section, button);
    });
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && running) running.stop = true;
  });
  return { get running() { return Boolean(running); } };
}
