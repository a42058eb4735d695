// Steady live answers: a camera's picture is never still (sensor noise, a hand, a 1-pixel
// shake), and a model that hesitates between two close answers (two cat breeds) would
// change its answer several times a second.  So the answers to the frames of one camera
// are smoothed over time before they are shown:
//
// * the scores are an exponential average over about a second (time constant TAU_S:
//   the last second weighs 92 %), in time rather than in frames, so a slower server
//   (fewer answers a second) smooths over the same time;
// * the label on screen changes only when another one leads the average by MARGIN for
//   LEAD answers in a row (and LEAD_MIN_S); "I'm not sure" likewise comes and goes only
//   when the average of the model's "unknown" is clearly on the other side;
// * a new object takes over at once: two answers in a row that have next to nothing in
//   common with the average (GONE) start it afresh -- a quarter of a second at 8 answers
//   a second.  A slow change (an object turned in the hand) goes the average's way;
// * after a pause (GAP_S without an answer) the next answer is taken as it is.
//
// createSteady() -> {update(data, nowMs), answer(), reset(), label, unknown}: ``data``
// is a /predict body ({predictions: [{label, display_label, score, index}], unknown});
// update returns the steady answer: {predictions (averaged; the label on screen first,
// each with the display_label of its latest answer), unknown, label, changed (the label
// or "not sure" on screen changed with this answer)}.

export const TAU_S = 0.4;
export const MARGIN = 0.1;
export const LEAD = 3;
export const LEAD_MIN_S = 0.2;
const GAP_S = 2;
const UNSURE_ON = 0.65;   // the average of "unknown" above which "not sure" shows ...
const UNSURE_OFF = 0.35;  // ... and below which it goes again
const FORGET = 0.002;     // averages below this fade out (of labels no answer names now)
const GONE = 0.25;        // an answer sharing less than this with the average ...
const GONE_ANSWERS = 2;   // ... this many times in a row: a new scene

export function createSteady(options) {
  const o = Object.assign({ tau: TAU_S, margin: MARGIN, lead: LEAD, gone: GONE },
    options || {});
  let average = new Map();  // label -> {score, index}
  let unsure = 0;           // the average of the model's "unknown" (0 or 1 per answer)
  let shown = null;         // the label on screen
  let shownUnsure = false;
  let challenger = null;    // {label, count, since}: the label leading the average
  let unsureTurn = null;    // {count, since}: "unknown" on the other side of shownUnsure
  let gone = 0;             // answers in a row unlike the average (a new scene?) ...
  let before = null;        // ... and the average before the first of them
  let last = 0;

  function reset() {
    average = new Map();
    unsure = 0;
    shown = null;
    shownUnsure = false;
    challenger = null;
    unsureTurn = null;
    gone = 0;
    before = null;
    last = 0;
  }

  // The scores an answer and an average both give the same labels, summed (0 to 1).
  function overlap(predictions, scores) {
    let sum = 0;
    predictions.forEach(function (p) {
      const item = scores.get(p.label);
      if (item) sum += Math.min(p.score, item.score);
    });
    return sum;
  }

  function scoreOf(label) {
    const item = average.get(label);
    return item ? item.score : 0;
  }

  function leader() {
    let best = null, bestScore = -1;
    average.forEach(function (item, label) {
      if (item.score > bestScore) { best = label; bestScore = item.score; }
    });
    return best;
  }

  // A change that must hold for LEAD answers in a row and LEAD_MIN_S: the turn so far.
  function held(turn, now) {
    turn.count += 1;
    return turn.count >= o.lead && now - turn.since >= LEAD_MIN_S * 1000;
  }

  function update(data, now) {
    now = now === undefined ? performance.now() : now;
    const predictions = (data && data.predictions) || [];
    // A new scene: the answer has next to nothing in common with the average (the
    // scores both give a label, summed, below GONE) in GONE_ANSWERS answers in a row,
    // each compared with the average as it was before the first of them.  Start
    // afresh rather than wait for the average to turn.  A close race between two
    // labels always shares most of the scores.
    if (shown !== null && overlap(predictions, before || average) < o.gone) {
      before = before || new Map(Array.from(average, function (e) {
        return [e[0], { score: e[1].score }];
      }));
      gone += 1;
    } else {
      before = null;
      gone = 0;
    }
    const fresh = !last || now - last > GAP_S * 1000 || shown === null ||
      gone >= GONE_ANSWERS;
    if (fresh) { gone = 0; before = null; }
    const weight = fresh ? 1 : 1 - Math.exp(-(now - last) / 1000 / o.tau);
    last = now;
    if (fresh) average = new Map();
    average.forEach(function (item) { item.score *= 1 - weight; });
    predictions.forEach(function (p) {
      const item = average.get(p.label) || { score: 0, index: p.index };
      item.score += weight * p.score;
      item.index = p.index;
      item.display_label = p.display_label;
      average.set(p.label, item);
    });
    const named = new Set(predictions.map(function (p) { return p.label; }));
    average.forEach(function (item, label) {  // what the answers no longer name fades out
      if (item.score < FORGET && label !== shown && !named.has(label)) average.delete(label);
    });
    unsure = fresh ? (data.unknown ? 1 : 0)
      : unsure * (1 - weight) + weight * (data.unknown ? 1 : 0);
    const was = shown, wasUnsure = shownUnsure;

    const first = leader();
    if (fresh) {
      shown = first;
      shownUnsure = data.unknown === true;
      challenger = null;
      unsureTurn = null;
    } else {
      if (first !== null && first !== shown &&
          scoreOf(first) >= scoreOf(shown) + o.margin) {
        if (!challenger || challenger.label !== first) {
          challenger = { label: first, count: 0, since: now };
        }
        if (held(challenger, now)) { shown = first; challenger = null; }
      } else {
        challenger = null;
      }
      const other = shownUnsure ? unsure < UNSURE_OFF : unsure > UNSURE_ON;
      if (other) {
        unsureTurn = unsureTurn || { count: 0, since: now };
        if (held(unsureTurn, now)) { shownUnsure = !shownUnsure; unsureTurn = null; }
      } else {
        unsureTurn = null;
      }
    }
    const result = answer();
    result.changed = was !== null && (was !== shown || wasUnsure !== shownUnsure);
    return result;
  }

  // The steady answer now: the label on screen first, then the others by their average.
  function answer() {
    const rest = [];
    average.forEach(function (item, label) {
      if (label !== shown) {
        rest.push({ label: label, display_label: item.display_label, index: item.index,
                    score: item.score });
      }
    });
    rest.sort(function (a, b) { return b.score - a.score; });
    const top = average.get(shown) || {};
    const first = shown === null ? []
      : [{ label: shown, display_label: top.display_label, index: top.index,
           score: scoreOf(shown) }];
    return { predictions: first.concat(rest), unknown: shownUnsure, label: shown,
             changed: false };
  }

  return { update: update, answer: answer, reset: reset,
           get label() { return shown; }, get unknown() { return shownUnsure; } };
}
