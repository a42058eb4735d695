"""Background training jobs, the web side: "Train" on the Teach page queues a job here;
the fine-tuning recipe (``webapp.training.recipe.train``) runs in a separate process
(``webapp.training.runner``), **never inside a web worker**, ``JOB_SLOTS`` jobs at a time
per ``DATA_DIR`` (one on a machine of fewer than 4 CPUs), queued otherwise.  This module
is the queue and the jobs' state on disk; it never imports torch, so a web worker that
shows the jobs stays small.

What holds.

* **State on disk**, one ``job.json`` per job replaced atomically; state changes
  (``queued -> running``, ``queued -> cancelled``, the end of a job) happen under a short
  ``flock`` on ``.jobs/.state.lock``.  States: ``queued | running | done | failed |
  cancelled``.
* **A job never stays "running" after its runner is gone.**  A runner holds the lock of
  its slot (``.runner.lock``, ``.runner-1.lock``, ...) for as long as it lives; the kernel
  releases it when the process dies, however it dies.  A ``running`` job whose slot's
  lock is free is marked ``failed`` ("the training process stopped ...") by whoever looks
  first: a web worker answering ``GET /jobs/<id>``, a server starting, the next runner.
  A runner asked to stop (SIGTERM, e.g. the machine shutting down) ends its job as
  ``failed`` with that reason.
* **Where a group stands.**  A queued job says its place (``queue_position``) and when its
  turn should come (``starts_in_s``); a job says how long it should take in all
  (``estimate_s``) and, running, how long is left (``left_s``): guessed from the jobs this
  ``DATA_DIR`` ran before (``estimate_seconds``).
* **Cancelling** a queued job cancels it at once; a running job gets a ``cancel`` file,
  checked before every training batch: the recipe raises ``TrainingCancelled`` and writes
  nothing.  Models reach the registry only at the very end, through ``Registry.add``
  (validated, one atomic rename), so a cancelled, failed or killed job leaves no model and
  no half-written file in ``MODEL_DIR``.
* **The model is not activated**: a finished job has a ``model_id``; the model carries its
  report (``report.json``, ``confusion.png``, ``curves.png``) in the registry.

Layout under ``DATA_DIR/.jobs/``::

    <job id>/job.json     state, options, progress, per-epoch metrics, result or error
    <job id>/data/        the dataset as it was when Train was pressed (hard links)
    <job id>/out/         checkpoint and report while training (removed afterwards)
    <job id>/log.txt      what the recipe said, and a traceback for an unexpected error
    <job id>/cancel       exists once a cancel was asked for
    .runner.lock          held by the process that trains in slot 0 (.runner-1.lock: 1, ...)
    .state.lock           serialises state changes
    runner.log            the runners' own stderr
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from webapp.config import PROJECT_ROOT
from webapp.durable import locked, write_json
from webapp.messages import Message, MessageList

log = logging.getLogger(__name__)

JOBS_DIR = ".jobs"
STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
MAX_QUEUED = 10
KEEP_FINISHED = 50
RUNNER_LOCK_WAIT = 3.0  # a web worker's liveness probe holds the lock for microseconds
WATCH_POLL = 2.0  # seconds between two looks at the queue by `watch` (polling works on NFS)
PROGRESS_EVERY = 0.5  # seconds between progress writes (every epoch is written at once)
_JOB_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
# How long a job takes, before this DATA_DIR has run any: the fixed part (starting torch,
# loading the backbone, the "I'm not sure" views, storing and converting the model) and
# seconds per picture and epoch at 160 px on one thread (docs/teach.md: 2 x 30 pictures,
# 6 epochs in 15-22 s on 2 busy cores).  Once jobs have run, their own figures are used.
FIXED_SECONDS = 12.0
SECONDS_PER_PICTURE_EPOCH = 0.025
TYPICAL_EPOCHS = 6  # early stopping usually ends the default 12 epochs about here
ORPHANED = Message("The training process stopped while this job was running (the server "
                   "or the machine restarted, or the process was killed). Nothing was "
                   "stored; press Train to start again.")

# Defaults for the small datasets a class captures in a few minutes: the pretrained
# backbone, the head first and then one block more per epoch, 160 px (EfficientNet-Lite0
# fits multiples of 32), early stopping.  Measured on 2 cores: docs/teach.md.
# The store keeps when each picture was taken, so the split keeps bursts together.
TEACH_DEFAULTS = {"strategy": "progressive", "image_size": 160, "epochs": 12,
                  "patience": 3, "batch_size": 16, "bursts": "times"}


def _int_option(low: int, high: int):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(Message("a whole number from %(low)s to %(high)s", low=low,
                                     high=high))
        return value
    return check


def _float_option(low: float, high: float):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not low <= value <= high:
            raise ValueError(Message("a number from %(low)s to %(high)s", low=f"{low:g}",
                                     high=f"{high:g}"))
        return float(value)
    return check


def _bool_option(value):
    if not isinstance(value, bool):
        raise ValueError(Message("true or false"))
    return value


def _strategy_option(value):
    if value not in ("head", "progressive", "full"):
        raise ValueError(Message("head, progressive or full"))
    return value


OPTIONS: dict[str, Callable] = {
    "strategy": _strategy_option,
    "epochs": _int_option(1, 100),
    "patience": _int_option(0, 100),
    "image_size": _int_option(64, 448),
    "batch_size": _int_option(2, 128),
    "lr": _float_option(1e-6, 1.0),
    "color_jitter": _bool_option,
    "flip": _bool_option,
    "seed": _int_option(0, 2**31 - 1),
}


class JobError(Exception):
    """A request about jobs that cannot be honoured; ``status`` is the HTTP status."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def check_options(raw) -> tuple[dict, str | None]:
    """The training options a request may set (``OPTIONS``) and the model's name; 400
    naming every bad field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise JobError(400, "bad_options", Message(
            'Send the training options as a JSON object, e.g. {"epochs": 12, "image_size": '
            '160}, or nothing for the defaults.'))
    options, errors, name = {}, {}, None
    for key, value in raw.items():
        if key == "name":
            # numpy, PIL: not in the runner's idle watch, which imports this module
            from webapp.stores.registry import RegistryError, clean_name

            try:
                name = clean_name(value) if isinstance(value, str) else None
            except RegistryError as exc:
                errors[key] = exc.message
            continue
        check = OPTIONS.get(key)
        if check is None:
            errors[key] = Message("unknown option (use: %(known)s)",
                                  known=", ".join(["name", *OPTIONS]))
            continue
        try:
            options[key] = check(value)
        except ValueError as exc:
            errors[key] = Message("expected %(what)s", what=exc.args[0])
    if errors:
        raise JobError(400, "bad_options", Message(
            "Some training options are not accepted: %(fields)s",
            fields=MessageList([Message("%(key)s: %(problem)s", key=k, problem=v)
                                for k, v in errors.items()])), fields=errors)
    return options, name


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class JobQueue:
    """The jobs under ``DATA_DIR/.jobs``; safe to use from any number of threads and
    processes.  ``threads`` is what a runner started from here uses (``JOB_THREADS``);
    ``spawn=False`` (``JOB_RUNNER=external``): this process never starts one."""

    def __init__(self, data_dir: str | os.PathLike, *, threads: int = 1, spawn: bool = True,
                 slots: int = 1):
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / JOBS_DIR
        self.threads = max(1, int(threads))
        self.spawn = spawn
        self.slots = max(1, int(slots))

    # ------------------------------------------------------------------ files and locks

    def job_dir(self, job_id) -> Path:
        if not isinstance(job_id, str) or not _JOB_RE.match(job_id):
            raise self._unknown(job_id)
        return self.root / job_id

    @staticmethod
    def _unknown(job_id) -> JobError:
        shown = job_id if isinstance(job_id, str) and len(job_id) <= 40 else "?"
        return JobError(404, "unknown_job", Message("There is no training job %(id)s.",
                                                    id=repr(shown)))

    @contextlib.contextmanager
    def _state_lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with locked(self.root / ".state.lock"):
            yield

    @staticmethod
    def lock_name(slot: int) -> str:
        return ".runner.lock" if slot == 0 else f".runner-{slot}.lock"

    def _try_runner_lock(self, slot: int = 0):
        """The lock of runner ``slot``: its file object when we got it, else None (never
        waits).  ``slot`` is then the file object's ``slot`` attribute."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / self.lock_name(slot), "a+")  # noqa: SIM115 - returned or closed
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        return _SlotLock(fh, slot)

    def acquire_runner_lock(self, wait: float = RUNNER_LOCK_WAIT):
        """For a runner: the lock of a free slot, retried for ``wait`` seconds (a liveness
        probe may hold one for an instant), or None when every slot has its runner."""
        deadline = time.monotonic() + wait
        while True:
            for slot in range(self.slots):
                fh = self._try_runner_lock(slot)
                if fh is not None:
                    return fh
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def slot_alive(self, slot: int) -> bool:
        """Whether some process (here or on another server sharing DATA_DIR) holds the
        lock of runner ``slot``, i.e. is training there or about to."""
        fh = self._try_runner_lock(slot)
        if fh is None:
            return True
        fh.close()  # closing releases the flock
        return False

    def runner_alive(self) -> bool:
        """Whether any runner is at work."""
        return any(self.slot_alive(slot) for slot in range(self.slots))

    def free_slot(self) -> bool:
        """Whether a runner could start now (a slot has none)."""
        return not all(self.slot_alive(slot) for slot in range(self.slots))

    def read(self, job_id) -> dict:
        path = self.job_dir(job_id) / "job.json"
        try:
            return json.loads(path.read_text("utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            raise self._unknown(job_id) from None
        except (OSError, ValueError) as exc:
            raise JobError(500, "job_damaged", f"{job_id}: job.json: {exc}") from None

    def save(self, job: dict, *, durable: bool = True) -> None:
        write_json(self.job_dir(job["id"]) / "job.json", job, durable=durable, indent=1)

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted((n for n in names if _JOB_RE.match(n)), reverse=True)

    def all_jobs(self) -> list[dict]:
        jobs = []
        for job_id in self.ids():
            with contextlib.suppress(JobError):
                jobs.append(self.read(job_id))
        jobs.sort(key=lambda j: (j.get("created_ts", 0), j["id"]), reverse=True)  # newest first
        return jobs

    # ------------------------------------------------------------------ the web side

    def create(self, store, dataset: str, *, options: dict, name: str | None,
               model_dir: str | os.PathLike, language: str = "en") -> dict:
        """Snapshot ``dataset`` and queue a job for it; start a runner.  ``language``:
        the teacher's (the report's pictures are drawn in it)."""
        describe = store.describe(dataset)  # 404 for an unknown dataset
        with self._state_lock():
            queued = [j for j in self.all_jobs() if j.get("state") == "queued"]
        if len(queued) >= MAX_QUEUED:
            raise JobError(409, "queue_full", Message(
                "%(count)s training jobs are waiting already; wait for them or cancel some.",
                count=len(queued)))
        job_id = (_dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S-")
                  + secrets.token_hex(3))
        staging = store.staging_dir(f"job-{job_id}-")
        try:
            counts = store.snapshot(dataset, staging / "data")
            job = {
                "id": job_id,
                "dataset": dataset,
                "dataset_name": describe.get("display_name", dataset),
                "language": language,
                "name": name,
                "state": "queued",
                "created": now_iso(),
                "created_ts": time.time(),
                "started": None,
                "finished": None,
                "options": {**TEACH_DEFAULTS, **options},
                "classes": counts,
                "images": sum(counts.values()),
                "progress": {"stage": "queued", "fraction": 0.0},
                "history": [],
                "messages": [],
                "metrics": {},
                "model_id": None,
                "error": None,
                "runner": None,
                "model_dir": str(model_dir),
            }
            write_json(staging / "job.json", job, indent=1)
            self.root.mkdir(parents=True, exist_ok=True)
            os.rename(staging, self.root / job_id)
            staging = None
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        log.info("queued training job %s for dataset %s (%d images, %d classes)",
                 job_id, dataset, job["images"], len(describe["classes"]))
        self.prune()
        self.start_runner()
        return self.view(job)

    def get(self, job_id) -> dict:
        job = self.read(job_id)
        if job["state"] == "running" and self.fail_orphans():
            job = self.read(job_id)
        elif job["state"] == "queued" and time.time() - job.get("created_ts", 0) > 10 \
                and self.free_slot():
            self.start_runner()  # e.g. the runner could not start: try again
        return self.view(job)

    def list(self, dataset: str | None = None) -> list[dict]:
        jobs = self.all_jobs()
        if any(j.get("state") == "running" for j in jobs) and self.fail_orphans():
            jobs = self.all_jobs()
        return [self.view(j, jobs) for j in jobs
                if dataset is None or j.get("dataset") == dataset]

    def view(self, job: dict, others: list[dict] | None = None) -> dict:
        """What the API shows: the job without server paths, plus whether a cancel is
        pending and, for a job not ended, how long it should take (``estimate_s``); a
        running one, how long is left (``left_s``); a queued one, its place in the queue
        and when its turn should come (``starts_in_s``)."""
        out = {k: v for k, v in job.items()
               if k not in ("model_dir", "created_ts", "started_ts")}
        out["cancel_requested"] = (self.root / job["id"] / "cancel").exists()
        if job["state"] in ("queued", "running"):
            others = others if others is not None else self.all_jobs()
            finished = [o for o in others if o.get("state") == "done"]
            out["estimate_s"] = round(estimate_seconds(job, finished))
        if job["state"] == "running":
            out["left_s"] = round(left_seconds(job, out["estimate_s"]))
        if job["state"] == "queued":
            ahead = [o for o in others if o.get("state") in ("queued", "running")
                     and o.get("created_ts", 0) < job.get("created_ts", 0)]
            out["queue_position"] = len(ahead) + 1
            out["queue_slots"] = self.slots
            out["starts_in_s"] = round(self._starts_in(ahead, finished))
        return out

    def _starts_in(self, ahead: list[dict], finished: list[dict]) -> float:
        """Seconds until a job behind ``ahead`` (running and queued jobs) gets a slot:
        the running ones end when they should, the queued ones take the next free slot
        in turn."""
        free = [0.0] * self.slots
        running = [j for j in ahead if j.get("state") == "running"]
        for n, job in enumerate(running[:self.slots]):
            free[n] = left_seconds(job, estimate_seconds(job, finished))
        for job in sorted((j for j in ahead if j.get("state") == "queued"),
                          key=lambda j: j.get("created_ts", 0)):
            slot = free.index(min(free))
            free[slot] += estimate_seconds(job, finished)
        return min(free)

    def cancel(self, job_id) -> dict:
        """Cancel a queued job at once, or ask the runner to stop a running one."""
        self.read(job_id)  # 404 before anything is locked or created
        with self._state_lock():
            job = self.read(job_id)
            state = job["state"]
            if state == "queued":
                job.update(state="cancelled", finished=now_iso(),
                           progress={**job.get("progress", {}), "stage": "cancelled"},
                           error=None)
                job["messages"] = [*job.get("messages", []), "Cancelled before it started."]
                self.save(job)
                shutil.rmtree(self.job_dir(job_id) / "data", ignore_errors=True)
            elif state == "running":
                (self.job_dir(job_id) / "cancel").touch()
            else:
                raise JobError(409, "job_finished", Message(
                    "Job %(id)s has already ended (%(state)s); there is nothing to cancel.",
                    id=job_id, state=state), state=state)
        log.info("cancel requested for training job %s (%s)", job_id, state)
        return self.view(self.read(job_id))

    def fail_orphans(self, *, held_slot: int | None = None) -> int:
        """Mark ``running`` jobs whose runner is gone (their slot's lock is free, or is
        ``held_slot``: the caller's, a runner that has not claimed a job yet) as failed;
        how many were."""
        if not any(j.get("state") == "running" for j in self.all_jobs()):
            return 0  # the common case: nothing to look at, no lock taken
        with self._state_lock():
            orphans = [j for j in self.all_jobs() if j.get("state") == "running"
                       and (_slot(j) == held_slot
                            or (_slot(j) != held_slot and not self.slot_alive(_slot(j))))]
            for job in orphans:
                model_id = _stored_model(job)
                if model_id:  # died in the instant between storing the model and saying so
                    job.update(state="done", finished=now_iso(), model_id=model_id,
                               error=None, progress={**job.get("progress", {}),
                                                     "stage": "done", "fraction": 1.0})
                else:
                    job.update(state="failed", finished=now_iso(), error=str(ORPHANED),
                               error_message=ORPHANED.to_json(),
                               progress={**job.get("progress", {}), "stage": "failed"})
                    log.warning("training job %s: %s", job["id"], ORPHANED)
                self._clean_work_files(job["id"])  # first: a finished job has none
                self.save(job)
        return len(orphans)

    def has_queued(self) -> bool:
        return any(j.get("state") == "queued" for j in self.all_jobs())

    def recover(self) -> None:
        """At server start: fail orphaned jobs, and start a runner when jobs wait."""
        try:
            self.fail_orphans()
            if self.has_queued() and self.free_slot():
                self.start_runner()
        except OSError as exc:
            log.warning("cannot look at the training jobs in %s: %s", self.root, exc)

    def prune(self, keep: int = KEEP_FINISHED) -> None:
        finished = [j for j in self.all_jobs() if j.get("state") in FINAL_STATES]
        for job in finished[keep:]:  # newest first
            shutil.rmtree(self.root / job["id"], ignore_errors=True)

    def _clean_work_files(self, job_id: str) -> None:
        for sub in ("data", "out"):
            shutil.rmtree(self.root / job_id / sub, ignore_errors=True)

    def start_runner(self) -> subprocess.Popen | None:
        """Start ``python -m webapp.jobs work DATA_DIR`` detached (own session, so a
        worker restart or Ctrl-C of the server does not kill it).  It exits at once when
        every slot has its runner.  Not with ``JOB_RUNNER=external``: ``watch`` does it."""
        if not self.spawn:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        runner_log = self.root / "runner.log"
        with contextlib.suppress(OSError):
            if runner_log.stat().st_size > 1_000_000:
                runner_log.unlink()
        with open(runner_log, "ab") as err:
            proc = self.spawn_runner(err)
        if proc is not None:
            # Reap it when it ends (no zombie); if this worker exits first, init does.
            threading.Thread(target=proc.wait, name=f"job-runner-{proc.pid}",
                             daemon=True).start()
        return proc

    def spawn_runner(self, stderr=None) -> subprocess.Popen | None:
        """The runner process, in its own session, with this queue's thread cap; its
        stderr to ``stderr`` (None: this process's own)."""
        threads = str(self.threads)
        env = {**os.environ, "JOB_THREADS": threads, "OMP_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads, "JOB_SLOTS": str(self.slots),
               "PYTHONUNBUFFERED": "1"}
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "webapp.jobs", "work", str(self.data_dir)],
                cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            log.error("cannot start the training process: %s", exc)
            return None

    # ------------------------------------------------------------------ the runner side

    def claim_next(self, slot: int = 0) -> dict | None:
        """The oldest queued job, now ``running`` under this process in runner ``slot``
        (runner only)."""
        with self._state_lock():
            queued = [j for j in self.all_jobs() if j.get("state") == "queued"]
            if not queued:
                return None
            job = min(queued, key=lambda j: (j.get("created_ts", 0), j["id"]))
            job.update(state="running", started=now_iso(), started_ts=time.time(),
                       runner={"pid": os.getpid(), "host": socket.gethostname(),
                               "slot": slot},
                       progress={"stage": "starting", "fraction": 0.0})
            self.save(job)
            return job

    def finish(self, job: dict, state: str, **fields) -> None:
        # The work files go before the job says it has ended, so whoever sees it ended
        # (the Teach page, a test) never finds its snapshot or half-written output.
        self._clean_work_files(job["id"])
        with self._state_lock():
            job.update(state=state, finished=now_iso(), **fields)
            if job.get("started_ts"):
                job["duration_s"] = round(time.time() - job["started_ts"], 1)
            if (job.get("runner") or {}).get("pid") == os.getpid():  # the runner's memory
                import resource

                peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                job["peak_memory_mb"] = round(peak_kb / 1024)
            job["progress"] = {**job.get("progress", {}), "stage": state}
            if state == "done":
                job["progress"].update(fraction=1.0, eta_s=0)
            self.save(job)


class _SlotLock:
    """A runner slot's lock: the open file holding the ``flock``, and the slot's number."""

    def __init__(self, fh, slot: int):
        self.fh, self.slot = fh, slot

    def close(self) -> None:
        self.fh.close()  # closing releases the flock


def _slot(job: dict) -> int:
    """The runner slot a running job was claimed in (0 for jobs from before slots)."""
    slot = (job.get("runner") or {}).get("slot", 0)
    return slot if isinstance(slot, int) and slot >= 0 else 0


def estimate_seconds(job: dict, finished: list[dict]) -> float:
    """How long ``job`` should take from start to stored model: the fixed part and the
    seconds per picture and epoch of the jobs ``finished`` here (the median of the last
    ten; FIXED_SECONDS and SECONDS_PER_PICTURE_EPOCH before any), times its pictures and
    the epochs such jobs ran (early stopping), scaled by its image size."""
    options = job.get("options") or {}
    size = (options.get("image_size") or 160) / 160
    rates, ran = [], []
    for done in finished[:10]:
        images = done.get("images") or 0
        epochs = len(done.get("history") or [])
        seconds = done.get("duration_s")
        done_size = ((done.get("options") or {}).get("image_size") or 160) / 160
        if images and epochs and seconds:
            rates.append(max(0.0, seconds - FIXED_SECONDS) / (images * epochs * done_size**2))
            ran.append(epochs / max(1, (done.get("options") or {}).get("epochs") or epochs))
    rate = _median(rates) if rates else SECONDS_PER_PICTURE_EPOCH
    epochs = options.get("epochs") or TEACH_DEFAULTS["epochs"]
    share = _median(ran) if ran else min(1.0, TYPICAL_EPOCHS / epochs)
    return FIXED_SECONDS + rate * (job.get("images") or 0) * epochs * share * size**2


def left_seconds(job: dict, estimate: float) -> float:
    """Seconds a running ``job`` should still take: what its training says once it has
    trained a while (``progress.eta_s``, plus the storing), else the estimate less the
    time it has run."""
    progress = job.get("progress") or {}
    if progress.get("eta_s") is not None and progress.get("stage") in ("train", "epoch"):
        return float(progress["eta_s"]) + FIXED_SECONDS / 2
    elapsed = time.time() - job.get("started_ts", time.time())
    return max(1.0, estimate - elapsed)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def plan_jobs(slots: int, threads: int, cpus: int) -> tuple[int, int]:
    """How many jobs train at once and with how many torch threads each, from the
    ``JOB_SLOTS`` and ``JOB_THREADS`` settings (0: chosen here) and the CPUs.  Training
    gets half the CPUs, serving keeps the rest.  Below 4 CPUs that is one core: two jobs
    at once would share it, each ending about when both end one after the other, the
    first group later than in a queue and the kiosk's answers slower meanwhile; so one
    job at a time, and the queue says when each group's turn comes.  From 4 CPUs two
    jobs, each on its share (a small job's threads do not use many cores well)."""
    slots = slots or (1 if cpus < 4 else 2)
    return slots, threads or max(1, cpus // 2 // slots)


def _stored_model(job: dict) -> str | None:
    """The registry's model made by ``job``, if it got that far."""
    try:
        # numpy, PIL: not in the runner's idle watch, which imports this module
        from webapp.stores.registry import Registry

        for meta in Registry(job["model_dir"]).list_models():
            if (meta.get("trained_from") or {}).get("job") == job["id"]:
                return meta["id"]
    except Exception as exc:  # noqa: BLE001 - an unreadable store: the job failed
        log.warning("cannot look for the model of job %s: %s", job.get("id"), exc)
    return None
