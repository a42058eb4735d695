// What the camera sees, in brief: a 16×12 grey thumbnail of block means (sensor noise and
// a 1-pixel shake vanish in them) and whether two thumbnails show the same scene.  The
// kiosk keeps an answer on screen while the camera still sees what was answered, and
// lets a press of the button join the live answers of a scene that has not changed.
//
// Scene.thumb(source) -> thumbnail or null   (a <video>, <canvas> or <img>)
// Scene.same(a, b)                             the same scene (false when either is null)
// Scene.watch(video) -> {stillFor(), stop()}   how long the picture has shown one scene
(function () {
  "use strict";
  const W = 16, H = 12;        // the thumbnail: blocks of 1/16 × 1/12 of the picture
  const STEP = 4;              // drawn at 4 × 4 pixels a block, then averaged
  const SAME = 12;             // mean difference of the blocks (grey levels of 255)
  const WATCH_MS = 250;

  const canvas = document.createElement("canvas");
  canvas.width = W * STEP;
  canvas.height = H * STEP;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";

  function thumb(source) {
    const width = source.videoWidth || source.naturalWidth || source.width;
    const height = source.videoHeight || source.naturalHeight || source.height;
    if (!width || !height) return null;
    try {
      context.drawImage(source, 0, 0, canvas.width, canvas.height);
    } catch (e) {
      return null;  // not ready to be drawn
    }
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    const blocks = new Float32Array(W * H);
    for (let y = 0; y < canvas.height; y++) {
      for (let x = 0; x < canvas.width; x++) {
        const i = (y * canvas.width + x) * 4;
        const grey = 0.299 * pixels[i] + 0.587 * pixels[i + 1] + 0.114 * pixels[i + 2];
        blocks[Math.floor(y / STEP) * W + Math.floor(x / STEP)] += grey / (STEP * STEP);
      }
    }
    return blocks;
  }

  function difference(a, b) {
    let sum = 0;
    for (let i = 0; i < a.length; i++) sum += Math.abs(a[i] - b[i]);
    return sum / a.length;
  }

  function same(a, b) {
    return Boolean(a && b) && a.length === b.length && difference(a, b) < SAME;
  }

  // Looks at ``video`` every WATCH_MS: stillFor() is how long (ms) it has shown the same
  // scene as when it last changed (0 before the first look).
  function watch(video) {
    let reference = null;
    let since = 0;
    const timer = setInterval(function () {
      const now = thumb(video);
      if (!now) return;
      if (!same(reference, now)) {
        reference = now;
        since = performance.now();
      }
    }, WATCH_MS);
    return {
      stillFor: function () { return reference ? performance.now() - since : 0; },
      stop: function () { clearInterval(timer); },
    };
  }

  window.Scene = { thumb: thumb, same: same, difference: difference, watch: watch,
                   SAME: SAME };
})();
