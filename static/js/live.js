// Live answers from a camera: frames to /predict, one after the other, for the
// kiosk and the Teach page's "Try it live".
//
// * Never more than one request in flight per viewer: the next frame is taken only when
//   the answer to the last one has arrived, so a slow server (or a slow phone) gets
//   fewer frames instead of a queue; after an error the pause doubles (up to 5 s).
// * At most one frame every PERIOD_MS (8 a second): enough for bars that follow the
//   hand, without a fast machine spending every core on one viewer.
// * A frame is the camera's whole picture with its shorter side at most FRAME_SIDE px
//   (640x480 from a 4:3 camera, 853x480 from a 16:9 one), a JPEG of ~50 kB: the very
//   picture the kiosk's button sends (liveFrame), so a still scene gets the same
//   answer live and from the button (the model resizes the shorter side to 256 and
//   crops the middle).
import { grabFrame } from "./camera.js";
import { pictureForm, request } from "./api.js";

export const PERIOD_MS = 125;
export const FRAME_SIDE = 480;
const QUALITY = 0.85;
const MAX_BACKOFF_MS = 5000;

// The camera's picture now as a JPEG (null while the camera is starting), drawn into
// ``canvas``: what live answers and the kiosk's button both send.
export function liveFrame(video, canvas) {
  return grabFrame(video, canvas, { side: FRAME_SIDE, quality: QUALITY });
}

// The pause after a failed answer, given the pause before it: 0.5 s, doubling, 5 s at most.
export function nextBackoff(backoff) {
  return Math.min(Math.max(backoff * 2, 500), MAX_BACKOFF_MS);
}

// options: video (a playing <video>), url (the predict endpoint; the returned object's
// ``url`` may be changed later), topk() (bars wanted), wanted() (false stops the loop),
// onAnswer(data) (a 200 /predict body).  The page's CSRF token goes along (api.js).
export function liveAnswers(options) {
  const canvas = document.createElement("canvas");
  let running = false;
  let inFlight = false;
  let timer = null;
  let round = 0;       // bumps at every stop: an answer of an earlier round is dropped
  let backoff = 0;

  function schedule(delay) {
    if (!running || timer !== null || inFlight) return;
    timer = setTimeout(tick, Math.max(0, delay));
  }

  async function tick() {
    timer = null;
    if (!running || inFlight) return;
    if (!options.wanted()) { stop(); return; }
    const mine = round;
    const started = performance.now();
    inFlight = true;
    let wait = PERIOD_MS;
    try {
      const blob = await liveFrame(options.video, canvas);
      if (!blob) {
        wait = 250;  // the camera is still starting
      } else {
        const answer = await request("POST", api.url,
          pictureForm(blob, "live.jpg", { topk: options.topk() }));
        if (answer.ok && answer.data && answer.data.predictions) {
          backoff = 0;
          if (mine === round && running) options.onAnswer(answer.data);
        } else {
          backoff = nextBackoff(backoff);
        }
      }
    } catch {
      backoff = nextBackoff(backoff);
    } finally {
      inFlight = false;
    }
    schedule(Math.max(wait - (performance.now() - started), backoff));
  }

  function start() {
    if (running) return;
    running = true;
    schedule(0);
  }

  function stop() {
    running = false;
    round += 1;
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  const api = { url: options.url, start: start, stop: stop,
                get running() { return running; } };
  return api;
}
