// The new model's card on the Teach page, in plain words: how often it was right on
// pictures it never learned from (each class on its own line), what to do when it could
// not be tested, and that it says "I'm not sure" about other things.  The figures behind
// it (accuracies, moments, the confusion matrix) stay in the card's "Details".
//
// renderResult(model, reportUrl) fills #result-plain from the model (GET
// /admin/api/models/<id>) and its training report (report.json: the evaluation's
// confusion matrix).
import { _, ngettext } from "./i18n.js";
import { request } from "./api.js";

const MOMENTS_TO_TEST = 3;  // webapp/training/bursts.py MIN_BURSTS_TO_TEST

function line(text, className) {
  const p = document.createElement("p");
  p.className = className || "mb-1";
  p.textContent = text;
  return p;
}

function perClass(evaluation, classes) {
  const matrix = evaluation.confusion_matrix || [];
  const list = document.createElement("ul");
  list.className = "teach-result-classes mb-2";
  classes.forEach(function (name, i) {
    const row = matrix[i] || [];
    const total = row.reduce(function (a, b) { return a + b; }, 0);
    if (!total) return;
    const item = document.createElement("li");
    let text = ngettext("{label}: right on {right} of {n} picture",
      "{label}: right on {right} of {n} pictures", total,
      { label: name, right: row[i] || 0 });
    const worst = row.map(function (n, j) { return j === i ? 0 : n; });
    const most = Math.max.apply(null, worst);
    if (most > 0) {
      text += " " + ngettext("(once taken for {other})", "({count} times taken for {other})",
        most, { count: most, other: classes[worst.indexOf(most)] });
    }
    item.textContent = text;
    list.append(item);
  });
  return list;
}

export async function renderResult(model, reportUrl) {
  const box = document.getElementById("result-plain");
  box.replaceChildren();
  let report = null;
  try {
    const answer = await request("GET", reportUrl);
    if (answer.ok) report = answer.data;
  } catch { report = null; }
  const metrics = model.metrics || {};
  const evaluation = (report && report.evaluation) || {};
  const classes = (report && report.classes) || model.classes || [];
  const matrix = evaluation.confusion_matrix || [];
  const n = matrix.reduce(function (sum, row) {
    return sum + row.reduce(function (a, b) { return a + b; }, 0);
  }, 0);
  const right = matrix.reduce(function (sum, row, i) { return sum + (row[i] || 0); }, 0);
  const tested = metrics.evaluated_on === "test" || evaluation.split === "test";
  if (n && tested) {
    box.append(line(ngettext("It was right on {right} of {n} picture it never learned from.",
      "It was right on {right} of {n} pictures it never learned from.", n,
      { right: right }), "fs-5 mb-1"));
  } else if (n) {
    box.append(line(ngettext(
      "It was right on {right} of {n} picture kept aside while it learned.",
      "It was right on {right} of {n} pictures kept aside while it learned.", n,
      { right: right }), "fs-5 mb-1"));
  }
  if (n) box.append(perClass(evaluation, classes));
  const untested = metrics.untested || [];
  if (!tested || untested.length) {
    box.append(line(_("To test it on pictures it never learned from, show each thing at " +
      "{n} moments or more: a 10-second timer, or {n} holds of the button.",
      { n: MOMENTS_TO_TEST }) + (untested.length && tested
      ? " " + _("Not tested yet: {classes}.", { classes: untested.join(", ") }) : ""),
    "small text-body-secondary mb-1"));
  }
  if (report && report.openset) {
    box.append(line(_("For things that look like none of these ({classes}), it says " +
      "“I'm not sure what this is”.", { classes: classes.join(", ") }),
    "small text-body-secondary mb-1"));
  }
  return report;
}
