// Words the scripts show (static/js/i18n.js, teach-progress.js, camera-help.js) and what
// the kiosk compares scenes with (scene.js).
import { test } from "node:test";
import assert from "node:assert/strict";
import { translator, fill } from "../../static/js/i18n.js";
import { summary, fraction } from "../../static/js/teach-progress.js";
import { explain } from "../../static/js/camera-help.js";
import { blocks, same, W, H } from "../../static/js/scene.js";

test("a catalog translates, with parameters and plural forms; unknown text stays English", () => {
  const zh = translator({ "Photo {n} of {count}": "第 {n} 张，共 {count} 张",
                          "{n} picture": ["{n} 张图片", "{n} 张图片"] }, "zh");
  assert.equal(zh.gettext("Photo {n} of {count}", { n: 1, count: 2 }), "第 1 张，共 2 张");
  assert.equal(zh.ngettext("{n} picture", "{n} pictures", 5), "5 张图片");
  assert.equal(zh.gettext("Thinking…"), "Thinking…");
  const en = translator({}, "en");
  assert.equal(en.ngettext("{n} picture", "{n} pictures", 1), "1 picture");
  assert.equal(en.ngettext("{n} picture", "{n} pictures", 2), "2 pictures");
  assert.equal(fill("{a} and {b}", { a: 1 }), "1 and {b}");
});

test("a training job in words, and its progress bar", () => {
  assert.equal(summary({ state: "queued", queue_position: 1, estimate_s: 30 }),
    "Starting in a moment. It should take about 30 s.");
  assert.match(summary({ state: "queued", queue_position: 3, starts_in_s: 300 }),
    /^Waiting for its turn: 2 groups .* about 5 min\.$/);
  assert.equal(summary({ state: "running", progress: { stage: "epoch", epoch: 2, epochs: 5 },
    left_s: 20 }), "Learning from the pictures: round 2 of at most 5. About 20 s left.");
  assert.equal(fraction({ state: "done" }), 1);
  assert.equal(fraction({ state: "queued" }), 0);
  assert.equal(fraction({ state: "running", estimate_s: 100, left_s: 25 }), 0.75);
});

test("why there is no camera, and what to do, by where", () => {
  assert.equal(explain(null, "kiosk", false).code, "insecure");
  assert.equal(explain(null, "kiosk", true).code, "unsupported");
  const denied = explain({ name: "NotAllowedError" }, "teach", true);
  assert.equal(denied.code, "denied");
  assert.match(denied.action, /Add files/);
  assert.match(explain({ name: "NotFoundError" }, "kiosk", true).action, /choose a photo/);
});

test("a scene's thumbnail: block means of grey, and 'the same' tolerates noise", () => {
  const side = 4;  // the pixels of a block, each way
  const pixels = new Uint8ClampedArray(W * side * H * side * 4).fill(100);
  const grey = blocks(pixels);
  assert.equal(grey.length, W * H);
  assert.ok(Math.abs(grey[0] - 100) < 1e-3);
  const noisy = grey.map((v, i) => v + (i % 2 ? 5 : -5));
  const other = grey.map((v, i) => (i < W * H / 2 ? 250 : v));
  assert.ok(same(grey, noisy));
  assert.ok(!same(grey, other));
  assert.ok(!same(grey, null));
});
