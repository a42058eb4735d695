"""The job runner: the process that trains the queued Teach jobs (``webapp.training.jobs``
is the queue).  ``python -m webapp.jobs work|watch`` runs it.

How it runs.  The worker that receives ``POST .../train`` snapshots the dataset, writes a
``queued`` job and starts a runner: a separate process, ``python -m webapp.jobs work
DATA_DIR``, in its own session (a gunicorn worker restart or ``max_requests`` does not
take it down), at ``nice`` 10, with ``JOB_THREADS`` torch threads, so serving keeps the
other cores.  The runner takes an exclusive ``flock`` on the lock of a free slot
(``.jobs/.runner.lock``, ``.runner-1.lock``, ... up to ``JOB_SLOTS``), runs the queued
jobs oldest first until there are none, and exits.  Runners started meanwhile (by other
workers, other servers sharing ``DATA_DIR``, or a restart) find every slot held and
exit; the last runner looks at the queue again after letting go of its lock, so no job is
left waiting.  At most ``JOB_SLOTS`` processes train (one below 4 CPUs:
``jobs.plan_jobs`` says why), whatever the number of workers and replicas.

With ``JOB_RUNNER=external`` the server never starts a runner: ``python -m webapp.jobs
watch`` does, a long-running process of its own (the Kubernetes runner Deployment).  It
looks at the queue every ``WATCH_POLL`` seconds and, when a job waits, runs the same
runner as a child and waits for it (one at a time: run one watch per slot for more);
while idle it holds no lock and no torch, so it stays
small.  SIGTERM is passed on to the child (its job ends ``failed``, saying why).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import signal
import subprocess
import threading
import time
import traceback
from pathlib import Path

from webapp import config
from webapp.config import Config, available_cpus
from webapp.messages import Message, reason
from webapp.training.jobs import (
    PROGRESS_EVERY,
    TEACH_DEFAULTS,
    WATCH_POLL,
    JobQueue,
    plan_jobs,
)
from webapp.training.options import FinetuneError, FinetuneOptions, TrainingCancelled

# The idle watch (``watch``) imports this module and stays small (~30 MB,
# deploy/kubernetes/base/runner.yaml): what brings torch, numpy or PIL (the recipe, the
# engines, the registry, the checkpoint readers) is imported where a job runs.
log = logging.getLogger(__name__)

STOPPED = Message("The training process was asked to stop (SIGTERM: the server or the "
                  "machine is shutting down). Nothing was stored; press Train to start "
                  "again.")


class _Failure(Exception):
    """A job that cannot succeed; the message (a ``Message``) is for the teacher."""


class _Stopping:
    """SIGTERM (the machine or the service shutting down): stop the job as cancelled-like,
    and record why."""

    requested = False

    @classmethod
    def install(cls) -> None:
        def handler(signum, frame):
            cls.requested = True
        signal.signal(signal.SIGTERM, handler)


def _check_classes(counts: dict[str, int]) -> None:
    """Fail fast, in words a teacher understands, before loading torch."""
    if len(counts) < 2:
        raise _Failure(Message("The dataset has %(count)s class(es) (%(names)s); a model "
                               "needs at least 2 to tell apart. Add a class and train again.",
                               count=len(counts), names=", ".join(map(repr, counts)))
                       if counts else Message("The dataset has no classes; a model needs at "
                                              "least 2 to tell apart. Add classes and train "
                                              "again."))
    for name, n in counts.items():
        if n == 0:
            raise _Failure(Message(
                "Class %(name)s has no images: every class needs at least 2 (one to learn "
                "from, one to check the model with). Capture or upload some and train "
                "again.", name=repr(name)))
        if n == 1:
            raise _Failure(Message(
                "Class %(name)s has only 1 image: every class needs at least 2 (one to learn "
                "from, one to check the model with). Capture or upload some and train "
                "again.", name=repr(name)))


class JobRun:
    """One claimed job from start to end: what the recipe says goes to ``log.txt`` and the
    job's messages, its progress to ``job.json`` (at most every ``PROGRESS_EVERY`` seconds
    while a batch trains, at once for everything else), and the job ends done (model
    stored), failed or cancelled."""

    def __init__(self, queue: JobQueue, job: dict):
        self.queue, self.job = queue, job
        self.job_dir = queue.job_dir(job["id"])
        self.started = time.monotonic()
        self.train_started: float | None = None
        self.last_write = 0.0
        self.log_file = None

    # ------------------------------------------------------------------ what the recipe calls

    def save_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_write >= PROGRESS_EVERY:
            self.last_write = now
            self.queue.save(self.job, durable=False)

    def say(self, message: str) -> None:
        self.log_file.write(message + "\n")
        self.log_file.flush()
        self.job["messages"] = [*self.job.get("messages", []), message][-30:]
        self.save_progress()

    def stage(self, name: str, **extra) -> None:
        self.job["progress"] = {**self.job.get("progress", {}), "stage": name, **extra,
                                "elapsed_s": round(time.monotonic() - self.started, 1)}
        self.save_progress(force=True)

    def progress(self, event) -> None:
        now = time.monotonic()
        if event.stage == "train" and self.train_started is None:
            self.train_started = now
        fraction = float(event.fraction)
        eta = None
        if self.train_started is not None and 0.02 < fraction < 1:
            eta = round((now - self.train_started) * (1 - fraction) / fraction, 1)
        self.job["progress"] = {
            "stage": event.stage, "epoch": event.epoch, "epochs": event.epochs,
            "batch": event.batch, "batches": event.batches, "fraction": round(fraction, 4),
            "elapsed_s": round(now - self.started, 1), "eta_s": eta,
        }
        if event.stage == "epoch":
            self.job["history"] = [*self.job.get("history", []), {
                "epoch": event.epoch, **{k: round(v, 4) for k, v in event.metrics.items()}}]
        self.save_progress(force=event.stage != "train")

    def should_stop(self) -> bool:
        return _Stopping.requested or (self.job_dir / "cancel").exists()

    # ------------------------------------------------------------------ the run

    def run(self) -> None:
        """Train, store, and end the job however it goes; every ending is recorded."""
        job = self.job
        self.log_file = open(self.job_dir / "log.txt", "a", encoding="utf-8")  # noqa: SIM115
        try:
            self.say(f"Job {job['id']}: dataset {job['dataset']!r}, {job['images']} images, "
                     "classes " + ", ".join(f"{c} {n}" for c, n in job["classes"].items())
                     + ".")
            _check_classes(job["classes"])
            model_id, metrics = self._store(self._train())
            self.queue.finish(job, "done", model_id=model_id, metrics=metrics, error=None)
            log.info("training job %s done: model %s", job["id"], model_id)
        except _Failure as exc:
            self.end_failed(exc.args[0])
        except TrainingCancelled as exc:
            if _Stopping.requested:
                self.end_failed(STOPPED, prefix="")
            else:
                self.say(f"Cancelled ({exc}); nothing was stored.")
                self.queue.finish(job, "cancelled", error=None)
        except Exception as exc:  # noqa: BLE001 - every ending is recorded
            message = _known_failure(exc)
            if message is None:
                self.log_file.write(traceback.format_exc())
                message = Message("Training stopped with an unexpected error: %(error)s",
                                  error=f"{type(exc).__name__}: {exc}")
            self.end_failed(message)
        finally:
            self.log_file.close()

    def end_failed(self, message: Message, prefix: str = "Failed: ") -> None:
        """The job ends failed; its ``error`` says why in English, ``error_message`` keeps
        the sentence so the page shows it in the teacher's language."""
        self.say(prefix + message)
        error_message = message.to_json() if isinstance(message, Message) else None
        self.queue.finish(self.job, "failed", error=str(message), error_message=error_message)

    def _train(self):
        """The recipe on the job's snapshot, with the Teach defaults under its options."""
        self.stage("loading")
        from webapp.training.data import DatasetError  # torch: imported when a job trains
        from webapp.training.recipe import train  # torch: imported when a job trains

        job, data_dir = self.job, self.job_dir / "data"
        options = FinetuneOptions(**{**TEACH_DEFAULTS, **job["options"]}, workers=0)
        if self.should_stop():
            raise TrainingCancelled("cancelled before training started")
        try:
            result = train(data_dir, self.job_dir / "out" / f"{job['dataset']}.pt", options,
                           progress=self.progress, should_stop=self.should_stop, say=self.say,
                           language=job.get("language"))
        except (DatasetError, FinetuneError) as exc:
            raise _Failure(str(exc).replace(str(data_dir), f"dataset {job['dataset']!r}")
                           ) from None
        if self.should_stop():
            raise TrainingCancelled("cancelled before the model was stored")
        return result

    def _store(self, result) -> tuple[str, dict]:
        """The model into the registry (not activated), its report without server paths;
        the model's id and the metrics the job shows."""
        from webapp.engines import EngineSettings  # numpy, PIL: not in the idle watch
        from webapp.stores.registry import Registry, RegistryError  # not in the idle watch

        job = self.job
        self.stage("storing", fraction=1.0, eta_s=0)
        report = result.report
        report["checkpoint"] = None
        report.get("data", {})["root"] = f"dataset {job['dataset']!r} (job {job['id']})"
        for skipped in report.get("data", {}).get("skipped", []):
            skipped["path"] = Path(skipped["path"]).name
        result.report_path.write_text(json.dumps(report, indent=2, default=str) + "\n",
                                     "utf-8")
        # The Teach page names the model (the dataset's name and its own local time); an
        # API client that did not gets the dataset's name and the UTC time.
        name = job.get("name") or (f"{job.get('dataset_name') or job['dataset']} · "
                                   + _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))
        try:
            # The server's engine settings come from the environment this process
            # inherited: the model is converted for serving now (cached by its weights),
            # so activating it swaps quickly in every worker -- as an upload does.
            engine = EngineSettings.from_config(Config.from_env())
            meta = Registry(job["model_dir"], engine).add(
                result.checkpoint, name=name, untrusted=False,
                extras={"report.json": result.report_path,
                        "confusion.png": result.confusion_png,
                        "curves.png": result.curves_png},
                trained_from={"dataset": job["dataset"],
                              "dataset_name": job.get("dataset_name") or job["dataset"],
                              "job": job["id"], "images": job["images"],
                              "classes": job["classes"]},
            )
        except RegistryError as exc:
            raise _Failure(Message("The trained model could not be stored: %(reason)s",
                                   reason=exc.message)) from None
        self.say(f"Stored the model as {meta['id']} ({meta['name']}); it is not active yet.")
        metrics = {**report.get("metrics", {}),
                   "confusion_matrix": report.get("evaluation", {}).get("confusion_matrix"),
                   "classes": report.get("classes"), "seconds": report.get("seconds")}
        return meta["id"], metrics


def run_job(queue: JobQueue, job: dict) -> None:
    """Train one claimed job and end it: done (model stored), failed or cancelled."""
    JobRun(queue, job).run()


def _known_failure(exc: Exception) -> str | None:
    from webapp.checkpoints.loaded import ModelLoadError  # numpy, PIL: not in the idle watch

    if isinstance(exc, ModelLoadError):
        return Message("The starting weights could not be loaded: %(reason)s",
                       reason=reason(exc))
    if isinstance(exc, MemoryError):
        return Message("The training ran out of memory; try a smaller image_size or "
                       "batch_size.")
    return None


def _limit_resources() -> int:
    """Lower this process's priority and cap torch's threads (before any work)."""
    with contextlib.suppress(OSError):
        os.nice(10)
    _, threads = plan_jobs(config.setting("JOB_SLOTS"), config.setting("JOB_THREADS"),
                           available_cpus())
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before parallel work starts
        torch.set_num_interop_threads(1)
    return threads


def work(data_dir: str | os.PathLike) -> int:
    """The runner: train queued jobs one after another while holding a slot's lock."""
    slots, _ = plan_jobs(config.setting("JOB_SLOTS"), config.setting("JOB_THREADS"),
                         available_cpus())
    queue = JobQueue(data_dir, slots=slots)
    _Stopping.install()
    limited = False
    while not _Stopping.requested:
        lock = queue.acquire_runner_lock()
        if lock is None:
            return 0  # another runner is at work; it looks at the queue before leaving
        try:
            if not limited:
                _limit_resources()
                limited = True
            queue.fail_orphans(held_slot=lock.slot)
            while not _Stopping.requested:
                job = queue.claim_next(lock.slot)
                if job is None:
                    break
                log.info("running training job %s", job["id"])
                run_job(queue, job)
        finally:
            lock.close()
        if not queue.has_queued():
            return 0
    return 0


class _Watch:
    """The state of ``watch``: whether it was asked to stop, and the runner it waits for
    (to pass SIGTERM on to)."""

    def __init__(self, queue: JobQueue):
        self.queue = queue
        self.stopping = threading.Event()
        self.runner: subprocess.Popen | None = None
        self.orphans_possible = True  # at start: the runner of an earlier pod may have died

    def stop(self, signum, frame) -> None:
        self.stopping.set()
        proc = self.runner
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    def look(self) -> None:
        """Run a runner to its end when a job waits (or one may have been orphaned)."""
        # A runner also marks the jobs of a dead one failed: this process never loads
        # the registry (nor torch) itself.
        queue = self.queue
        wanted = queue.has_queued() or (self.orphans_possible and any(
            j.get("state") == "running" for j in queue.all_jobs()))
        self.orphans_possible = False
        if not wanted or not queue.free_slot():
            return
        self.runner = queue.spawn_runner()
        if self.runner is None:
            return
        if self.stopping.is_set():  # the signal came while it was starting
            self.runner.send_signal(signal.SIGTERM)
        code = self.runner.wait()
        self.runner = None
        if code:
            log.warning("the training process exited with %s", code)
        self.orphans_possible = True  # it may have been killed mid-job


def watch(queue: JobQueue, poll: float = WATCH_POLL) -> int:
    """The training service (``JOB_RUNNER=external``): until SIGTERM or SIGINT, start a
    runner (``work``) whenever a job waits and none is at work, and wait for it.

    The runner is a child rather than this process so that the watch stays small while
    idle (no torch: ~30 MB instead of the runner's GB) and a runner that dies (out of
    memory, say) takes nothing else with it: the next runner, started at once, marks its
    job failed.
    Kubernetes sends SIGTERM to this process only; it is passed on to the runner, whose
    job then ends ``failed`` saying why, and the watch returns when the runner is gone."""
    state = _Watch(queue)
    signal.signal(signal.SIGTERM, state.stop)
    signal.signal(signal.SIGINT, state.stop)
    log.info("waiting for training jobs in %s (every %gs)", queue.root, poll)
    while not state.stopping.is_set():
        try:
            state.look()
        except OSError as exc:  # e.g. the volume went away for a moment
            log.warning("cannot look at the training jobs in %s: %s", queue.root, exc)
        state.stopping.wait(poll)
    log.info("stopped waiting for training jobs")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m webapp.jobs",
        description="Run the queued teach-live training jobs of DATA_DIR, one at a time "
        "(the server starts this by itself; running it by hand is harmless).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("work", help="train queued jobs until there are none")
    run.add_argument("data_dir", metavar="DATA_DIR")
    keep = sub.add_parser("watch", help="keep running: train jobs as they are queued "
                          "(for JOB_RUNNER=external: a runner container or service)")
    keep.add_argument("data_dir", metavar="DATA_DIR", nargs="?",
                      help="default: the DATA_DIR setting")
    keep.add_argument("--poll", type=float, default=WATCH_POLL, metavar="SECONDS",
                      help="how often to look at the queue (default %(default)s)")
    show = sub.add_parser("list", help="print the jobs as JSON")
    show.add_argument("data_dir", metavar="DATA_DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    if args.command == "list":
        print(json.dumps(JobQueue(args.data_dir).list(), indent=2))
        return 0
    if args.command == "watch":
        config = Config.from_env()  # the server's settings: a bad value stops it here
        slots, threads = plan_jobs(config["JOB_SLOTS"], config["JOB_THREADS"],
                                   available_cpus())
        return watch(JobQueue(args.data_dir or config["DATA_DIR"], threads=threads,
                              slots=slots), poll=args.poll)
    return work(args.data_dir)
