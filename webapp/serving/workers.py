"""Which model each worker process of this server serves, for "activate and wait".

Every process that serves (each gunicorn worker; the one process of the development
server or a test) writes ``<RUN_DIR>/<pid>.json`` -- its pid, when the process started
and the model it serves -- each time it starts serving a model (``ModelHolder``'s
listener).  ``wait_for`` reads them until every live worker names the model asked for.
A file whose process is gone (or whose pid now belongs to another process: the start
time differs) is removed and never waited for, so a dead worker cannot block; a
replacement worker loads the active model before it takes requests, and reports it.

``RUN_DIR`` defaults to a folder of the machine's temporary directory named after
``MODEL_DIR``: the workers of every server on this machine that use that store, and the
``flask models`` commands run there, find the same folder.  No Flask, no torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from webapp.messages import Message

log = logging.getLogger(__name__)


class NotServing(Exception):
    """``wait_for`` gave up: the message says which workers serve what."""

    def __init__(self, message: str, serving: dict[int, str]):
        super().__init__(message)
        self.message, self.serving = message, serving


def run_dir(config: dict) -> Path:
    """``RUN_DIR``, or the default folder for this ``MODEL_DIR`` on this machine."""
    if config.get("RUN_DIR"):
        return Path(config["RUN_DIR"])
    store = os.path.realpath(str(config["MODEL_DIR"]))
    digest = hashlib.sha256(store.encode("utf-8")).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"offline-classifier-{os.getuid()}" / digest


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc), or None if it is gone
    (or this is not Linux: then only whether it exists)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text("utf-8", errors="replace")
        fields = text.rsplit(")", 1)[1].split()  # the fields after the command name
        return None if fields[0] in "ZX" else fields[19]  # a zombie is gone; field 22
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "?"


class WorkerReports:
    """The report files in one folder."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._failed = False

    def report(self, model_id: str) -> None:
        """This process serves ``model_id`` from now on."""
        pid = os.getpid()
        data = {"pid": pid, "started": _started(pid), "model": model_id, "since": time.time()}
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.folder / f".{pid}.tmp"
            tmp.write_text(json.dumps(data), "utf-8")
            os.replace(tmp, self.folder / f"{pid}.json")
        except OSError as exc:  # never a reason not to serve; "wait" will say it timed out
            if not self._failed:
                log.warning("cannot note the model this worker serves in %s (%s); "
                            "activate's wait option will not see it", self.folder, exc)
            self._failed = True

    def serving(self) -> dict[int, str]:
        """{pid: model} of the live processes that reported; stale files are removed."""
        out = {}
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return out
        for name in names:
            if not name.endswith(".json"):
                continue
            path = self.folder / name
            try:
                data = json.loads(path.read_text("utf-8"))
                pid, model = int(data["pid"]), str(data["model"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being replaced right now, or not ours
            started = _started(pid)
            if started is None or started not in ("?", data.get("started")):
                with contextlib.suppress(OSError):
                    path.unlink()  # the worker is gone: it serves nothing
                continue
            out[pid] = model
        return out

    def wait_for(self, model_id: str, seconds: float, *, poll: Callable[[], object] | None = None,
                 interval: float = 0.1) -> dict[int, str]:
        """Until every live worker serves ``model_id`` (then {pid: model}), at most
        ``seconds``; ``NotServing`` otherwise.  ``poll`` runs before each look (in a
        serving process: its own holder's ``get``, which swaps when nothing else does)."""
        deadline = time.monotonic() + seconds
        while True:
            if poll is not None:
                with contextlib.suppress(Exception):  # a load failure: the holder says why
                    poll()
            serving = self.serving()
            if serving and all(model == model_id for model in serving.values()):
                return serving
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        if not serving:
            raise NotServing(Message(
                "No server process using this model store runs on this machine (none "
                "reported in %(folder)s), so nothing serves %(model)s yet.",
                folder=str(self.folder), model=model_id), serving)
        behind = {pid: model for pid, model in serving.items() if model != model_id}
        listed = ", ".join(f"{pid} ({model})" for pid, model in sorted(behind.items()))
        raise NotServing(Message(
            "%(model)s is active, but after %(seconds)s s %(behind)s of %(workers)s "
            "worker(s) still serve another model: %(listed)s. They keep trying; /readyz says "
            "why a model cannot be loaded.", model=model_id, seconds=f"{seconds:g}",
            behind=len(behind), workers=len(serving), listed=listed), serving)
