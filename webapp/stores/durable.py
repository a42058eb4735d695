"""Files that survive a crash at any point: the few primitives every store on disk uses
(model registry, teach-live datasets and jobs, kiosk settings)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``path`` itself durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, data, *, durable: bool = True, **dump_options) -> None:
    """``data`` as JSON, atomically (``write_text``)."""
    dump_options.setdefault("indent", 2)
    dump_options.setdefault("ensure_ascii", False)
    write_text(path, json.dumps(data, **dump_options) + "\n", durable=durable)


def write_text(path: str | os.PathLike, text: str, *, durable: bool = True,
               mode: int = 0o666) -> None:
    """Temp file in the same directory, ``os.replace``: a reader sees the old file or the
    new one, never a mix.  ``durable`` also fsyncs the file and the directory, so the new
    content survives a power cut (progress updates that come again may skip that);
    ``mode``: the new file's permissions (before the umask)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if durable:
        with contextlib.suppress(OSError):
            fsync_dir(path.parent)


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy ``source`` to ``target`` (which must not exist yet), fsynced: on disk before
    it returns."""
    with open(source, "rb") as src, open(target, "xb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())


@contextlib.contextmanager
def locked(lock_file: str | os.PathLike) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_file`` (created if needed) for the block: one
    writer at a time across threads, processes and gunicorn workers."""
    with open(lock_file, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sweep(directory: str | os.PathLike, older_than: float,
          match: Callable[[str], bool] | None = None) -> int:
    """Remove leftovers of interrupted writes from a temp ``directory`` (only the entries
    whose name ``match`` accepts, when given): only entries older than ``older_than``
    seconds (a young one may be a write in progress elsewhere).  A folder that cannot be
    read or written is left as it is."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:  # missing, or not ours to read
        return 0
    cutoff = time.time() - older_than
    for entry in entries:
        if match is not None and not match(entry.name):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError:  # read-only: the next start with write access sweeps it
            break
    return removed


def is_temp_name(name: str) -> bool:
    """A name ``write_json`` and the engine cache give a file while it is written
    (``.<name>.tmp-<pid>-...``, and the folders beside one)."""
    return name.startswith(".") and ".tmp-" in name
