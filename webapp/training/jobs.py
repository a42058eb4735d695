"""Background training jobs, the web side: "Train" on the Teach page queues a job here;
the fine-tuning recipe (``webapp.training.recipe.train``) runs in a separate process
(``webapp.training.runner``), **never inside a web worker**, one job at a time per
``DATA_DIR``, queued otherwise.  This module is the queue and the jobs' state on disk; it
never imports torch, so a web worker that shows the jobs stays small.

What holds.

* **State on disk**, one ``job.json`` per job replaced atomically; state changes
  (``queued -> running``, ``queued -> cancelled``, the end of a job) happen under a short
  ``flock`` on ``.jobs/.state.lock``.  States: ``queued | running | done | failed |
  cancelled``.
* **A job never stays "running" after its runner is gone.**  The runner holds its lock for
  as long as it lives; the kernel releases it when the process dies, however it dies.  A
  ``running`` job whose runner lock is free is marked ``failed`` ("the training process
  stopped ...") by whoever looks first: a web worker answering ``GET /jobs/<id>``, a
  server starting, the next runner.  A runner asked to stop (SIGTERM, e.g. the machine
  shutting down) ends its job as ``failed`` with that reason.
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
    .runner.lock          held by the one process that trains
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

from webapp.messages import Message, MessageList
from webapp.stores.durable import locked, write_json

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

    def __init__(self, data_dir: str | os.PathLike, *, threads: int = 1, spawn: bool = True):
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / JOBS_DIR
        self.threads = max(1, int(threads))
        self.spawn = spawn

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

    def _try_runner_lock(self):
        """The runner lock's file object when we got it, else None (never waits)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / ".runner.lock", "a+")  # noqa: SIM115 - returned or closed
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        return fh

    def acquire_runner_lock(self, wait: float = RUNNER_LOCK_WAIT):
        """For a runner: the lock, retried for ``wait`` seconds (a liveness probe may hold
        it for an instant), or None when another runner has it."""
        deadline = time.monotonic() + wait
        while True:
            fh = self._try_runner_lock()
            if fh is not None or time.monotonic() >= deadline:
                return fh
            time.sleep(0.05)

    def runner_alive(self) -> bool:
        """Whether some process (here or on another server sharing DATA_DIR) holds the
        runner lock, i.e. is training or about to."""
        fh = self._try_runner_lock()
        if fh is None:
            return True
        fh.close()  # closing releases the flock
        return False

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
                and not self.runner_alive():
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
        pending and, for a queued job, its place in the queue."""
        out = {k: v for k, v in job.items()
               if k not in ("model_dir", "created_ts", "started_ts")}
        out["cancel_requested"] = (self.root / job["id"] / "cancel").exists()
        if job["state"] == "queued":
            others = others if others is not None else self.all_jobs()
            ahead = [o for o in others if o.get("state") in ("queued", "running")
                     and o.get("created_ts", 0) < job.get("created_ts", 0)]
            out["queue_position"] = len(ahead) + 1
        return out

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

    def fail_orphans(self, *, runner_lock_held: bool = False) -> int:
        """Mark ``running`` jobs whose runner is gone as failed; how many were."""
        if not any(j.get("state") == "running" for j in self.all_jobs()):
            return 0  # the common case: nothing to look at, no lock taken
        with self._state_lock():
            running = [j for j in self.all_jobs() if j.get("state") == "running"]
            if not running:
                return 0
            if not runner_lock_held and self.runner_alive():
                return 0
            for job in running:
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
        return len(running)

    def has_queued(self) -> bool:
        return any(j.get("state") == "queued" for j in self.all_jobs())

    def recover(self) -> None:
        """At server start: fail orphaned jobs, and start a runner when jobs wait."""
        try:
            self.fail_orphans()
            if self.has_queued() and not self.runner_alive():
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
        another runner is at work.  Not with ``JOB_RUNNER=external``: ``watch`` does it."""
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
        from webapp.config import PROJECT_ROOT

        threads = str(self.threads)
        env = {**os.environ, "JOB_THREADS": threads, "OMP_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
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

    def claim_next(self) -> dict | None:
        """The oldest queued job, now ``running`` under this process (runner only)."""
        with self._state_lock():
            queued = [j for j in self.all_jobs() if j.get("state") == "queued"]
            if not queued:
                return None
            job = min(queued, key=lambda j: (j.get("created_ts", 0), j["id"]))
            job.update(state="running", started=now_iso(), started_ts=time.time(),
                       runner={"pid": os.getpid(), "host": socket.gethostname()},
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


def _stored_model(job: dict) -> str | None:
    """The registry's model made by ``job``, if it got that far."""
    try:
        from webapp.stores.registry import Registry

        for meta in Registry(job["model_dir"]).list_models():
            if (meta.get("trained_from") or {}).get("job") == job["id"]:
                return meta["id"]
    except Exception as exc:  # noqa: BLE001 - an unreadable store: the job failed
        log.warning("cannot look for the model of job %s: %s", job.get("id"), exc)
    return None
