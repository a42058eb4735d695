// The steadied live answers (static/js/steady.js): what the kiosk shows while a camera
// hesitates, changes scene, or pauses.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createSteady, LEAD } from "../../static/js/steady.js";

const EVERY_MS = 125;  // 8 answers a second, as live mode asks

function answer(scores, unknown) {
  return {
    predictions: Object.entries(scores).map(([label, score], index) => (
      { label, display_label: label.toUpperCase(), index, score })),
    unknown: Boolean(unknown),
  };
}

test("the first answer is shown as it is", () => {
  const steady = createSteady();
  const shown = steady.update(answer({ tabby: 0.6, tiger: 0.3 }), 1000);
  assert.equal(shown.label, "tabby");
  assert.equal(shown.predictions[0].display_label, "TABBY");
  assert.equal(shown.changed, false);
});

test("one answer for the runner-up does not change the label on screen", () => {
  const steady = createSteady();
  let now = 1000;
  for (let i = 0; i < 8; i++) steady.update(answer({ tabby: 0.55, tiger: 0.45 }), now += EVERY_MS);
  const shown = steady.update(answer({ tabby: 0.4, tiger: 0.6 }), now += EVERY_MS);
  assert.equal(shown.label, "tabby");
  assert.equal(shown.changed, false);
});

test("a runner-up that keeps the lead takes over after LEAD answers, once", () => {
  const steady = createSteady();
  let now = 1000;
  for (let i = 0; i < 8; i++) steady.update(answer({ tabby: 0.6, tiger: 0.4 }), now += EVERY_MS);
  const labels = [], changes = [];
  for (let i = 0; i < 20; i++) {
    const shown = steady.update(answer({ tabby: 0.3, tiger: 0.7 }), now += EVERY_MS);
    labels.push(shown.label);
    changes.push(shown.changed);
  }
  assert.equal(labels.at(-1), "tiger");
  assert.ok(labels.indexOf("tiger") >= LEAD - 1, "changed before the lead held");
  assert.equal(changes.filter(Boolean).length, 1);
});

test("a new object takes over after two answers", () => {
  const steady = createSteady();
  let now = 1000;
  for (let i = 0; i < 16; i++) steady.update(answer({ tabby: 0.7, tiger: 0.3 }), now += EVERY_MS);
  assert.equal(steady.update(answer({ mug: 0.9, cup: 0.1 }), now += EVERY_MS).label, "tabby");
  const shown = steady.update(answer({ mug: 0.9, cup: 0.1 }), now += EVERY_MS);
  assert.equal(shown.label, "mug");
  assert.ok(shown.changed);
});

test("after a pause the next answer is taken as it is", () => {
  const steady = createSteady();
  steady.update(answer({ tabby: 0.7, tiger: 0.3 }), 1000);
  const shown = steady.update(answer({ tiger: 0.51, tabby: 0.49 }), 1000 + 5000);
  assert.equal(shown.label, "tiger");
  assert.equal(shown.predictions[0].score, 0.51);
});

test("'not sure' needs more than one unknown answer to show, and reset forgets", () => {
  const steady = createSteady();
  let now = 1000;
  for (let i = 0; i < 8; i++) steady.update(answer({ tabby: 0.7, tiger: 0.3 }), now += EVERY_MS);
  assert.equal(steady.update(answer({ tabby: 0.7, tiger: 0.3 }, true), now += EVERY_MS).unknown, false);
  for (let i = 0; i < 16; i++) steady.update(answer({ tabby: 0.7, tiger: 0.3 }, true), now += EVERY_MS);
  assert.equal(steady.unknown, true);
  steady.reset();
  assert.equal(steady.label, null);
  assert.deepEqual(steady.answer().predictions, []);
});
