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
//   picture the kiosk's button sends (LiveFrames.frame), so a still scene gets the same
//   answer live and from the button (the model resizes the shorter side to 256 and
//   crops the middle).
(function () {
  "use strict";
  const PERIOD_MS = 125;
  const FRAME_SIDE = 480;
  const QUALITY = 0.85;
  const MAX_BACKOFF_MS = 5000;

  // The camera's picture now as a JPEG (null while the camera is starting), drawn into
  // ``canvas``: what live answers and the kiosk's button both send.
  function frame(video, canvas) {
    return new Promise(function (resolve) {
      const width = video.videoWidth, height = video.videoHeight;
      if (!width || !height) { resolve(null); return; }
      const scale = Math.min(1, FRAME_SIDE / Math.min(width, height));
      canvas.width = Math.round(width * scale);
      canvas.height = Math.round(height * scale);
      canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
      canvas.toBlob(resolve, "image/jpeg", QUALITY);
    });
  }

  // options: video (a playing <video>), url (the predict endpoint; the returned object's
  // ``url`` may be changed later), topk() (bars
  // wanted), wanted() (false stops the loop), onAnswer(data) (a 200 /predict body),
  // headers (extra request headers, optional).
  function create(options) {
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
        const blob = await frame(options.video, canvas);
        if (!blob) {
          wait = 250;  // the camera is still starting
        } else {
          const body = new FormData();
          body.append("image", blob, "live.jpg");
          body.append("topk", String(options.topk()));
          const response = await fetch(api.url, {
            method: "POST", body: body,
            headers: Object.assign({ "Accept": "application/json" }, options.headers || {}),
          });
          const data = await response.json().catch(function () { return null; });
          if (response.ok && data && data.predictions) {
            backoff = 0;
            if (mine === round && running) options.onAnswer(data);
          } else {
            backoff = Math.min(Math.max(backoff * 2, 500), MAX_BACKOFF_MS);
          }
        }
      } catch (err) {
        backoff = Math.min(Math.max(backoff * 2, 500), MAX_BACKOFF_MS);
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

  window.LiveFrames = { create: create, frame: frame, PERIOD_MS: PERIOD_MS,
                        FRAME_SIDE: FRAME_SIDE };
})();
