// The camera of the kiosk and the Teach page: start it in a <video>, take its picture
// now as a JPEG, stop it.  Why there is none, in words: camera-help.js.

// Resolves true once ``video`` shows the camera, false when the browser offers no camera
// at all; rejects with what getUserMedia rejected with (denied, missing, busy...).
// wanted: {width, height} (ideal sizes), facingMode (optional: "environment" on a phone).
export async function startCamera(video, wanted) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return false;
  const constraints = { width: { ideal: wanted.width }, height: { ideal: wanted.height } };
  if (wanted.facingMode) constraints.facingMode = wanted.facingMode;
  video.srcObject = await navigator.mediaDevices.getUserMedia({
    video: constraints, audio: false,
  });
  await video.play().catch(function () { /* autoplay: muted, so it plays */ });
  return true;
}

// Switch the camera off (its light goes out).
export function stopCamera(video) {
  const stream = video.srcObject;
  if (stream && stream.getTracks) stream.getTracks().forEach(function (track) { track.stop(); });
  video.srcObject = null;
}

// The size of a picture of width × height with its shorter side at most ``side`` (never
// enlarged; no limit when side is 0).
export function frameSize(width, height, side) {
  const scale = side ? Math.min(1, side / Math.min(width, height)) : 1;
  return { width: Math.round(width * scale), height: Math.round(height * scale) };
}

// The camera's picture now as a JPEG Blob drawn into ``canvas`` (null while the camera is
// starting).  options: side (the shorter side at most, px; 0: as the camera gives it),
// quality (JPEG, 0..1).
export function grabFrame(video, canvas, options) {
  const o = Object.assign({ side: 0, quality: 0.9 }, options || {});
  return new Promise(function (resolve) {
    const width = video.videoWidth, height = video.videoHeight;
    if (!width || !height) { resolve(null); return; }
    const size = frameSize(width, height, o.side);
    canvas.width = size.width;
    canvas.height = size.height;
    canvas.getContext("2d").drawImage(video, 0, 0, size.width, size.height);
    canvas.toBlob(resolve, "image/jpeg", o.quality);
  });
}
