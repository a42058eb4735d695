// What the camera sees, in brief: a 16×12 grey thumbnail of block means (sensor noise and
// a 1-pixel shake vanish in them) and whether two thumbnails show the same scene.  The
// kiosk keeps an answer on screen while the camera still sees what was answered, and
// lets a press of the button join the live answers of a scene that has not changed.
//
// thumb(source) -> thumbnail or null   (a <video>, <canvas> or <img>)
// same(a, b)                             the same scene (false when either is null)
// watch(video) -> {stillFor(), stop()}   how long the picture has shown one scene
// (window.Scene has thumb and same too, to compare scenes from the browser's console.)
export const W = 16, H = 12;  // the thumbnail: blocks of 1/16 × 1/12 of the picture
const STEP = 4;              // drawn at 4 × 4 pixels a block, then averaged
export const SAME = 12;      // mean difference of the blocks (grey levels of 255)
const WATCH_MS = 250;

let context = null;  // the canvas a thumbnail is drawn in, made at the first

function drawing() {
  if (!context) {
    const canvas = document.createElement("canvas");
    canvas.width = W * STEP;
    canvas.height = H * STEP;
    context = canvas.getContext("2d", { willReadFrequently: true });
    context.imageSmoothingEnabled = true;
    context.imageSmoothingQuality = "high";
  }
  return context;
}

// The W × H block means of grey levels of RGBA ``pixels`` (W·STEP × H·STEP of them).
export function blocks(pixels) {
  const width = W * STEP, height = H * STEP;
  const means = new Float32Array(W * H);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 4;
      const grey = 0.299 * pixels[i] + 0.587 * pixels[i + 1] + 0.114 * pixels[i + 2];
      means[Math.floor(y / STEP) * W + Math.floor(x / STEP)] += grey / (STEP * STEP);
    }
  }
  return means;
}

export function thumb(source) {
  const width = source.videoWidth || source.naturalWidth || source.width;
  const height = source.videoHeight || source.naturalHeight || source.height;
  if (!width || !height) return null;
  const draw = drawing();
  try {
    draw.drawImage(source, 0, 0, W * STEP, H * STEP);
  } catch {
    return null;  // not ready to be drawn
  }
  return blocks(draw.getImageData(0, 0, W * STEP, H * STEP).data);
}

export function difference(a, b) {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += Math.abs(a[i] - b[i]);
  return sum / a.length;
}

export function same(a, b) {
  return Boolean(a && b) && a.length === b.length && difference(a, b) < SAME;
}

// Looks at ``video`` every WATCH_MS: stillFor() is how long (ms) it has shown the same
// scene as when it last changed (0 before the first look).
export function watch(video) {
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

if (globalThis.window) window.Scene = { thumb: thumb, same: same };
