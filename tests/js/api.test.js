// The addresses the scripts call (static/js/api.js): url_for's templates filled in.
import { test } from "node:test";
import assert from "node:assert/strict";
import { errorOf, fillUrl, pictureForm, withQuery } from "../../static/js/api.js";

test("a url_for template gets its placeholders filled, escaped", () => {
  assert.equal(fillUrl("/admin/api/models/%7Bid%7D/predict", { id: "m 1/2" }),
    "/admin/api/models/m%201%2F2/predict");
  assert.equal(fillUrl("/a/%7bid%7d/report/%7Bfile%7D", { id: "x", file: "confusion.png" }),
    "/a/x/report/confusion.png");
  assert.equal(fillUrl("/classes/{label}", { label: "猫" }), "/classes/%E7%8C%AB");
});

test("a placeholder without a value is an error, not a wrong address", () => {
  assert.throws(() => fillUrl("/models/%7Bid%7D", {}), /no value for \{id\}/);
});

test("a query string is added once, escaped", () => {
  assert.equal(withQuery("/img/1", { size: 128 }), "/img/1?size=128");
  assert.equal(withQuery("/admin/?x=1", { added: "a b" }), "/admin/?x=1&added=a+b");
  assert.equal(withQuery("/kiosk", {}), "/kiosk");
});

test("the error a user reads: the server's message, else its status", () => {
  assert.equal(errorOf({ error: { message: "Too big" } }, 413), "Too big");
  assert.equal(errorOf(null, 502), "The server answered 502.");
});

test("a picture goes as the form /predict reads", () => {
  const form = pictureForm(new Blob(["x"], { type: "image/jpeg" }), "a.jpg", { topk: 3 });
  assert.equal(form.get("image").name, "a.jpg");
  assert.equal(form.get("topk"), "3");
});
