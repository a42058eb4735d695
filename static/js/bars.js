// Top-k predictions as labelled confidence bars (Bootstrap progress bars): the one
// drawing the upload page, the admin "try an image" and the Teach page share.
// The server renders the same markup for pages posted without JavaScript.
(function () {
  "use strict";

  // predictions: [{label, index, score}], best first.  Options: labelText(p) for the
  // visible label, spacing (Bootstrap margin class of each item), animate (bars grow
  // from zero).  Returns the <ol>.
  function predictionList(predictions, options) {
    const opts = Object.assign({ labelText: function (p) { return p.label; },
                                 spacing: "mb-3", animate: false }, options || {});
    const list = document.createElement("ol");
    list.className = "predictions list-unstyled mb-0";
    list.setAttribute("aria-label", "Top predictions");
    predictions.forEach(function (p, i) {
      const pct = (p.score * 100).toFixed(1);
      const item = document.createElement("li");
      item.className = "prediction " + opts.spacing;
      item.dataset.index = p.index;
      const row = document.createElement("div");
      row.className = "d-flex justify-content-between align-items-baseline";
      const label = document.createElement("span");
      label.className = "label fw-semibold";
      label.textContent = opts.labelText(p);
      const score = document.createElement("span");
      score.className = "score text-body-secondary";
      score.textContent = pct + "%";
      row.append(label, score);
      const progress = document.createElement("div");
      progress.className = "progress";
      progress.setAttribute("role", "progressbar");
      progress.setAttribute("aria-label", p.label);
      progress.setAttribute("aria-valuenow", pct);
      progress.setAttribute("aria-valuemin", "0");
      progress.setAttribute("aria-valuemax", "100");
      const fill = document.createElement("div");
      fill.className = "progress-bar" + (i === 0 ? " bg-success" : "");
      fill.style.width = opts.animate ? "0%" : pct + "%";
      progress.append(fill);
      item.append(row, progress);
      list.append(item);
      if (opts.animate) {
        requestAnimationFrame(function () {
          requestAnimationFrame(function () { fill.style.width = pct + "%"; });
        });
      }
    });
    return list;
  }

  // The heading over n bars (templates/_predictions.html has the same words).
  function heading(n) { return n === 1 ? "Its guess" : "Top " + n + " guesses"; }

  // One sentence for a screen reader: "Tabby 62%, tiger cat 20%, Egyptian cat 8%."
  function sentence(predictions, labelText) {
    const name = labelText || function (p) { return p.label; };
    return predictions.map(function (p) {
      return name(p) + " " + Math.round(p.score * 100) + "%";
    }).join(", ") + ".";
  }

  window.PredictionBars = { list: predictionList, heading: heading, sentence: sentence };
})();
