"""Starting the builder (``python -m webapp.engines.build``) as a short-lived child process
and reading its answer.  No torch here: this runs in the web worker, which only waits.

An uploaded checkpoint is opened under a memory cap (``RLIMIT_AS``, set in the child
after torch is imported) and a time limit, so a file built to explode (zip records that
deflate 1000:1, tensors that claim gigabytes) costs the child, never the worker, and the
uploader reads what was wrong.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from webapp.checkpoints.loaded import ModelLoadError
from webapp.engines.artefacts import EngineCacheError
from webapp.messages import Message

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
BUILD_TIMEOUT = 600  # seconds for a trusted build (the built-in model, a trained one)


def upload_limits(size_bytes: int) -> tuple[int, float]:
    """(memory MB, seconds) an uploaded checkpoint of ``size_bytes`` may take to open,
    validate and convert: room for the file's tensors a few times over (the state_dict,
    the model, the exported network) plus the exporter's own working memory."""
    megabytes = size_bytes / 2**20
    return int(1536 + 6 * megabytes), 180 + 2 * megabytes


def run_builder(args: list[str], *, timeout: float = BUILD_TIMEOUT,
                what: str | None = None, stdin: str | None = None) -> dict:
    """Run the builder with ``args`` (and ``stdin`` as its input) and return its JSON
    answer; ``ModelLoadError`` with the builder's message (a ``Message``, as the child
    sent it) or what went wrong with the process otherwise, ``EngineCacheError`` when it
    could not write the engine cache.  ``what`` names the model at the start of a
    sentence."""
    what = what or Message("The model")
    argv = [sys.executable, "-m", "webapp.engines.build", *args]
    proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                            # Not the locale's encoding: OpenVINO sets the process's locale
                            # to "C" while it compiles (in the background, after a swap).
                            encoding="utf-8", errors="replace",
                            preexec_fn=_die_with_parent)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise ModelLoadError(Message(
            "%(what)s took longer than %(seconds)s s to open and convert, so it was "
            "stopped; nothing was stored", what=what, seconds=f"{timeout:.0f}")) from None
    for line in (err or "").strip().splitlines()[-20:]:
        log.info("builder: %s", line)
    answer = _last_json(out)
    if proc.returncode == 0 and answer and "card" in answer:
        return answer
    if answer and answer.get("error") == "memory":
        raise ModelLoadError(Message(
            "%(what)s needs more than %(limit)s MB of memory to open (a file this small "
            "should not); it was refused and nothing was stored", what=what,
            limit=answer.get("limit_mb")))
    if answer and answer.get("error") == "cache":
        raise EngineCacheError(errno_=answer.get("errno"), why=answer.get("reason"))
    if answer and answer.get("error"):
        raise ModelLoadError(Message.from_json(answer["error"]))
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise ModelLoadError(Message("%(what)s stopped the converter (%(signal)s) while it "
                                     "was being opened; nothing was stored", what=what,
                                     signal=name))
    tail = (err or "").strip().splitlines()[-1:] or ["-"]
    raise ModelLoadError(Message("%(what)s could not be converted for serving (%(error)s)",
                                 what=what, error=tail[0][:300]))


def _die_with_parent() -> None:
    """In the child, before it runs: the kernel kills it when the worker that waits for it
    dies (a worker killed by gunicorn's timeout leaves no converter behind)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux/glibc: the timeout still applies
        pass


def _last_json(out: str | None) -> dict | None:
    for line in reversed((out or "").strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def run_convert(file: str, facts: dict, out: str, *, timeout: float = BUILD_TIMEOUT) -> None:
    """Write the PyTorch model ``file`` as a checkpoint v1 at ``out`` with ``python -m
    model_loader convert`` in a child process (a worker never imports torch).  ``facts``:
    ``arch``, ``classes`` (a list), ``input_size``, ``mean``, ``std``, as stored."""
    labels = Path(f"{out}.labels.json")
    labels.write_text(json.dumps(list(facts["classes"])), "utf-8")
    argv = [sys.executable, "-m", "model_loader", "convert", str(file), "--out", str(out),
            "--arch", facts["arch"], "--labels", str(labels),
            "--input-size", str(facts["input_size"]),
            "--mean", ",".join(map(str, facts["mean"])),
            "--std", ",".join(map(str, facts["std"]))]
    try:
        done = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, encoding="utf-8",
                              errors="replace", timeout=timeout, preexec_fn=_die_with_parent)
    except subprocess.TimeoutExpired:
        raise ModelLoadError(Message("writing the checkpoint took longer than %(seconds)s s",
                                     seconds=f"{timeout:.0f}")) from None
    finally:
        labels.unlink(missing_ok=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["-"]
        raise ModelLoadError(Message("the checkpoint could not be written (%(error)s)",
                                     error=tail[0][:300]))


DOWNLOAD_TIMEOUT = 300


def run_download() -> None:
    """``ALLOW_DOWNLOAD=1``: fetch ResNet18's weights into the torchvision cache with
    ``python -m model_loader download`` (torchvision's downloader needs torch, so a
    child runs it).  A failure is logged; the weight sources go on to the next one."""
    argv = [sys.executable, "-m", "model_loader", "download", "--quiet"]
    try:
        done = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True,
                              encoding="utf-8", errors="replace",
                              timeout=DOWNLOAD_TIMEOUT)
    except subprocess.TimeoutExpired:
        log.warning("downloading ResNet18's weights took over %d s; gave up", DOWNLOAD_TIMEOUT)
        return
    if done.returncode != 0:
        log.warning("could not download ResNet18's weights: %s",
                    (done.stderr or done.stdout).strip()[-300:])
