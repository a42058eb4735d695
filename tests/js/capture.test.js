// The Teach page's timed capture and the camera's pictures (static/js/capture-timer.js,
// camera.js, live.js): moments, time left, frame sizes, the pause after errors.
import { test } from "node:test";
import assert from "node:assert/strict";
import { momentOf, secondsLeft, MOMENT_S } from "../../static/js/capture-timer.js";
import { frameSize } from "../../static/js/camera.js";
import { nextBackoff } from "../../static/js/live.js";

test("pictures of one MOMENT_S slice share a moment; the next slice starts a new one", () => {
  const started = 1_700_000_000_000;
  assert.equal(momentOf(started, 0), started);
  assert.equal(momentOf(started, MOMENT_S * 1000 - 1), started);
  assert.equal(momentOf(started, MOMENT_S * 1000), started + MOMENT_S * 1000);
  assert.equal(momentOf(started, 7500), started + 6000);
});

test("the seconds left count down in whole seconds", () => {
  assert.equal(secondsLeft(10, 0), 10);
  assert.equal(secondsLeft(10, 100), 10);
  assert.equal(secondsLeft(10, 9001), 1);
});

test("a frame's shorter side is at most the limit, never enlarged", () => {
  assert.deepEqual(frameSize(1280, 720, 480), { width: 853, height: 480 });
  assert.deepEqual(frameSize(640, 480, 480), { width: 640, height: 480 });
  assert.deepEqual(frameSize(320, 240, 480), { width: 320, height: 240 });
  assert.deepEqual(frameSize(1280, 720, 0), { width: 1280, height: 720 });
});

test("after errors the pause doubles from half a second up to five", () => {
  const pauses = [];
  let backoff = 0;
  for (let i = 0; i < 6; i++) pauses.push(backoff = nextBackoff(backoff));
  assert.deepEqual(pauses, [500, 1000, 2000, 4000, 5000, 5000]);
});
