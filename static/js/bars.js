// Top-k predictions as labelled confidence bars (Bootstrap progress bars): the one
// drawing the upload page, the admin "try an image" and the Teach page share.
// The server renders the same markup for pages posted without JavaScript.
(function () {
  "use strict";

  // The class as the page's language names it (/predict's display_label).
  function shownLabel(p) { return p.display_label || p.label; }

  // predictions: [{label, display_label, index, score}], best first.  Options: labelText(p)
  // for the visible label, spacing (Bootstrap margin class of each item), animate (bars
  // grow from zero), unknown (the answer says "unknown": grey bars, no winner).  Returns
  // the <ol>.
  function predictionList(predictions, options) {
    const opts = Object.assign({ labelText: shownLabel,
                                 spacing: "mb-3", animate: false, unknown: false },
                               options || {});
    const list = document.createElement("ol");
    list.className = "predictions list-unstyled mb-0" + (opts.unknown ? " predictions-unknown" : "");
    list.setAttribute("aria-label", _("Top predictions"));
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
      progress.setAttribute("aria-label", opts.labelText(p));
      progress.setAttribute("aria-valuenow", pct);
      progress.setAttribute("aria-valuemin", "0");
      progress.setAttribute("aria-valuemax", "100");
      const fill = document.createElement("div");
      fill.className = "progress-bar" + (opts.unknown ? " bg-secondary" : i === 0 ? " bg-success" : "");
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

  // Live answers: move the bars of ``list`` to ``predictions`` in place (their widths
  // glide: Bootstrap's transition) when it has as many bars; false when it has not.
  function update(list, predictions, options) {
    const opts = Object.assign({ labelText: shownLabel, unknown: false }, options || {});
    if (!list || list.children.length !== predictions.length) return false;
    list.classList.toggle("predictions-unknown", Boolean(opts.unknown));
    predictions.forEach(function (p, i) {
      const item = list.children[i];
      const pct = (p.score * 100).toFixed(1);
      item.dataset.index = p.index;
      item.querySelector(".label").textContent = opts.labelText(p);
      item.querySelector(".score").textContent = pct + "%";
      const progress = item.querySelector(".progress");
      progress.setAttribute("aria-label", opts.labelText(p));
      progress.setAttribute("aria-valuenow", pct);
      const fill = item.querySelector(".progress-bar");
      fill.className = "progress-bar" + (opts.unknown ? " bg-secondary" : i === 0 ? " bg-success" : "");
      fill.style.width = pct + "%";
    });
    return true;
  }

  // What an answer marked "unknown" says above its (grey) bars: the model's open-set
  // criterion found the picture unlike anything it was taught (templates/_predictions.html
  // has the same words).
  function unsure() {
    const note = document.createElement("p");
    note.className = "prediction-unknown alert alert-secondary py-2";
    const strong = document.createElement("strong");
    strong.textContent = _("I'm not sure what this is.");
    note.append(strong, " ", _("It does not look like anything this model was taught; these are only its best guesses."));
    return note;
  }

  // The heading over n bars (templates/_predictions.html has the same words).
  function heading(n) { return n === 1 ? _("Its guess") : _("Top {num} guesses", { num: n }); }

  // One sentence for a screen reader: "Tabby 62%, tiger cat 20%, Egyptian cat 8%."
  function sentence(predictions, labelText) {
    const name = labelText || shownLabel;
    return _("{answers}.", { answers: joinNames(predictions.map(function (p) {
      return name(p) + " " + Math.round(p.score * 100) + "%";
    })) });
  }

  window.PredictionBars = { list: predictionList, heading: heading, sentence: sentence,
                            unsure: unsure, update: update };
})();
