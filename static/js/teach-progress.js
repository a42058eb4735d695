// A training job in plain words, from its first second: what it is doing now, how long
// it should still take, and for a job that waits, its place and when its turn comes
// (GET /admin/api/jobs/<id>: progress.stage, estimate_s, left_s, queue_position,
// starts_in_s; webapp/training/jobs.py).
//
// summary(job) -> the sentence; fraction(job) -> 0..1 for
// the progress bar (time-based until the training itself says how far it is).
import { _, ngettext } from "./i18n.js";

export function duration(seconds) {
  const s = Math.max(1, Math.round(Number(seconds) || 0));
  if (s < 90) return _("{n} s", { n: s });
  return _("{n} min", { n: Math.round(s / 60) });
}

function doing(job) {
  const p = job.progress || {};
  switch (p.stage) {
    case "data": return _("Looking through the pictures…");
    case "backbone": return _("Getting the starting model ready…");
    case "train":
    case "epoch":
      return _("Learning from the pictures: round {epoch} of at most {epochs}.",
        { epoch: p.epoch, epochs: p.epochs });
    case "test": return _("Checking the new model on pictures it never learned from…");
    case "openset":
      return _("Looking at the pictures from new sides, to learn what it does not know…");
    case "storing":
    case "done":
      return _("Storing the new model and getting it ready to answer…");
    default: return _("Starting the training…");
  }
}

export function summary(job) {
  if (job.state === "queued") {
    const ahead = Math.max(0, (job.queue_position || 1) - 1);
    if (!ahead) {
      return _("Starting in a moment. It should take about {time}.",
        { time: duration(job.estimate_s) });
    }
    return ngettext(
      "Waiting for its turn: {n} group is training or waiting before it. " +
        "Its turn should come in about {time}.",
      "Waiting for its turn: {n} groups are training or waiting before it. " +
        "Its turn should come in about {time}.",
      ahead, { time: duration(job.starts_in_s) });
  }
  if (job.state === "running") {
    if (job.cancel_requested) return _("Cancelling…");
    const left = job.left_s;
    return doing(job) + (left ? " " + _("About {time} left.", { time: duration(left) }) : "");
  }
  if (job.state === "done") return _("Done in {time}.", { time: duration(job.duration_s) });
  if (job.state === "cancelled") return _("Cancelled: nothing was stored.");
  if (job.state === "failed") return _("The training failed.");
  return "";
}

export function fraction(job) {
  if (job.state === "done") return 1;
  if (job.state !== "running") return 0;
  const estimate = Number(job.estimate_s) || 0, left = Number(job.left_s) || 0;
  const byTime = estimate ? 1 - left / Math.max(estimate, left + 1) : 0;
  return Math.min(0.99, Math.max(0.02, byTime));
}
