// What a confidence bar shows (static/js/bars.js): the upload page's and the kiosk's looks.
import { test } from "node:test";
import assert from "node:assert/strict";
import { barOf, sentence, heading } from "../../static/js/bars.js";

const tabby = { label: "tabby", display_label: "Tigerkatze", index: 281, score: 0.6234 };

test("the page look: one decimal, the winner green, keyed by class index", () => {
  const bar = barOf(tabby, 0);
  assert.deepEqual(bar, { name: "Tigerkatze", score: "62.3%", value: "62.3", width: "62.3%",
    fill: "progress-bar bg-success", key: "281" });
  assert.equal(barOf(tabby, 1).fill, "progress-bar");
});

test("an unknown answer has grey bars and no winner", () => {
  assert.equal(barOf(tabby, 0, { unknown: true }).fill, "progress-bar bg-secondary");
});

test("the kiosk look: whole percent, a sliver for a tiny score, keyed by label", () => {
  const bar = barOf(tabby, 0, { look: "kiosk", labelText: (p) => p.label.toUpperCase() });
  assert.deepEqual(bar, { name: "TABBY", score: "62%", value: "62", width: "62.3%",
    fill: "kiosk-bar-fill", key: "tabby" });
  assert.equal(barOf({ ...tabby, score: 0.001 }, 2, { look: "kiosk" }).width, "1.0%");
  assert.equal(barOf({ ...tabby, score: 0.001 }, 2).width, "0.1%");
});

test("the heading and the screen reader's sentence", () => {
  assert.equal(heading(1), "Its guess");
  assert.equal(heading(3), "Top 3 guesses");
  const said = sentence([tabby, { label: "tiger", score: 0.2 }], null, "en");
  assert.equal(said, "Tigerkatze 62%, tiger 20%.");
});
