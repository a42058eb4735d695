// Top-k predictions as labelled confidence bars: the one drawing of the upload page, the
// admin "try an image", the Teach page (Bootstrap progress bars: the "page" look) and the
// kiosk (its own big bars: the "kiosk" look, static/css).  The server renders the page
// look's markup for pages posted without JavaScript (templates/_predictions.html).
import { _, joinNames } from "./i18n.js";

// The class names of each look: the list's when the answer is "unknown", an item's (and
// the best one's), the row of label and score, the track and its fill; whole: scores in
// whole percent; minWidth: the narrowest fill (%), so a tiny score still shows a sliver.
export const LOOKS = {
  page: {
    unknown: "predictions-unknown", item: "prediction", top: "", key: "index",
    row: "d-flex justify-content-between align-items-baseline", label: "label fw-semibold",
    score: "score text-body-secondary", track: "progress", whole: false, minWidth: 0,
    fill: function (i, unknown) {
      return "progress-bar" + (unknown ? " bg-secondary" : i === 0 ? " bg-success" : "");
    },
  },
  kiosk: {
    unknown: "kiosk-bars-unsure", item: "kiosk-bar", top: "kiosk-bar-top", key: "label",
    row: "kiosk-bar-text", label: "kiosk-bar-label", score: "kiosk-bar-score",
    track: "kiosk-bar-track", whole: true, minWidth: 1,
    fill: function () { return "kiosk-bar-fill"; },
  },
};

// The class as the page's language names it (/predict's display_label).
export function shownLabel(p) { return p.display_label || p.label; }

function settle(options) {
  const opts = Object.assign({ look: "page", labelText: shownLabel, spacing: "mb-3",
                               animate: false, unknown: false }, options || {});
  opts.style = LOOKS[opts.look];
  return opts;
}

// What one bar shows for prediction ``p`` (the i-th, best first): its name, its score
// ("62.3%"; the kiosk: "62%"), the value a screen reader hears, the fill's width and class.
export function barOf(p, i, options) {
  const opts = settle(options);
  const look = opts.style;
  const pct = p.score * 100;
  const value = look.whole ? String(Math.round(pct)) : pct.toFixed(1);
  return {
    name: opts.labelText(p), score: value + "%", value: value,
    width: Math.max(pct, look.minWidth).toFixed(1) + "%",
    fill: look.fill(i, opts.unknown), key: String(look.key === "label" ? p.label : p.index),
  };
}

function first(className) { return "." + className.split(" ")[0]; }

// The <li> of every prediction.  Options: look ("page" or "kiosk"), labelText(p) for the
// visible label, spacing (the page look: Bootstrap margin class of each item), animate
// (bars grow from zero), unknown (the answer says "unknown": grey bars, no winner).
export function barItems(predictions, options) {
  const opts = settle(options);
  const look = opts.style;
  return predictions.map(function (p, i) {
    const bar = barOf(p, i, opts);
    const item = document.createElement("li");
    item.className = look.item + (look.top && i === 0 ? " " + look.top : "") +
      (opts.look === "page" ? " " + opts.spacing : "");
    item.dataset[look.key] = bar.key;
    const row = document.createElement("div");
    row.className = look.row;
    const label = document.createElement("span");
    label.className = look.label;
    label.textContent = bar.name;
    const score = document.createElement("span");
    score.className = look.score;
    score.textContent = bar.score;
    row.append(label, score);
    const track = document.createElement("div");
    track.className = look.track;
    track.setAttribute("role", "progressbar");
    track.setAttribute("aria-label", bar.name);
    track.setAttribute("aria-valuenow", bar.value);
    track.setAttribute("aria-valuemin", "0");
    track.setAttribute("aria-valuemax", "100");
    const fill = document.createElement("div");
    fill.className = bar.fill;
    fill.style.width = opts.animate ? "0%" : bar.width;
    track.append(fill);
    item.append(row, track);
    if (opts.animate) {
      requestAnimationFrame(function () {
        requestAnimationFrame(function () { fill.style.width = bar.width; });
      });
    }
    return item;
  });
}

// predictions: [{label, display_label, index, score}], best first, as a new <ol> of the
// page look (options: those of barItems).
export function predictionList(predictions, options) {
  const opts = settle(options);
  const list = document.createElement("ol");
  list.className = "predictions list-unstyled mb-0" + (opts.unknown ? " predictions-unknown" : "");
  list.setAttribute("aria-label", _("Top predictions"));
  list.append(...barItems(predictions, opts));
  return list;
}

// Live answers: move the bars of ``list`` to ``predictions`` in place (their widths
// glide: a CSS transition) when it has as many bars; false when it has not.
export function updateBars(list, predictions, options) {
  const opts = settle(options);
  const look = opts.style;
  if (!list || list.children.length !== predictions.length) return false;
  list.classList.toggle(look.unknown, Boolean(opts.unknown));
  predictions.forEach(function (p, i) {
    const bar = barOf(p, i, opts);
    const item = list.children[i];
    item.dataset[look.key] = bar.key;
    item.querySelector(first(look.label)).textContent = bar.name;
    item.querySelector(first(look.score)).textContent = bar.score;
    const track = item.querySelector(first(look.track));
    track.setAttribute("aria-label", bar.name);
    track.setAttribute("aria-valuenow", bar.value);
    const fill = track.firstElementChild;
    fill.className = bar.fill;
    fill.style.width = bar.width;
  });
  return true;
}

// What an answer marked "unknown" says above its (grey) bars: the model's open-set
// criterion found the picture unlike anything it was taught (templates/_predictions.html
// has the same words).
export function unsure() {
  const note = document.createElement("p");
  note.className = "prediction-unknown alert alert-secondary py-2";
  const strong = document.createElement("strong");
  strong.textContent = _("I'm not sure what this is.");
  note.append(strong, " ", _("It does not look like anything this model was taught; these are only its best guesses."));
  return note;
}

// The heading over n bars (templates/_predictions.html has the same words).
export function heading(n) { return n === 1 ? _("Its guess") : _("Top {num} guesses", { num: n }); }

// One sentence for a screen reader: "Tabby 62%, tiger cat 20%, Egyptian cat 8%."
export function sentence(predictions, labelText, language) {
  const name = labelText || shownLabel;
  return _("{answers}.", { answers: joinNames(predictions.map(function (p) {
    return name(p) + " " + Math.round(p.score * 100) + "%";
  }), language) });
}
