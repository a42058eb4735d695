"""Files that survive a crash at any point: the few primitives every store on disk uses
(model registry, teach-live datasets and jobs, kiosk settings)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import threading
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
    """``text`` (UTF-8) atomically: ``write_bytes``."""
    write_bytes(path, text.encode("utf-8"), durable=durable, mode=mode)


def write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True,
                mode: int = 0o644) -> None:
    """Temp file in the same directory, ``os.replace``: a reader sees the old file or the
    new one, never a mix.  ``durable`` also fsyncs the file and the directory, so the new
    content survives a power cut (progress updates that come again may skip that);
    ``mode``: the new file's permissions (before the umask): a private key (0o600) is
    never readable by others, not even for a moment."""
    path = Path(path)
    with _finished_temp(path, data, mode, durable) as tmp:
        os.replace(tmp, path)
    if durable:
        with contextlib.suppress(OSError):
            fsync_dir(path.parent)


def create_once(path: str | os.PathLike, data: bytes, *, mode: int = 0o600) -> bool:
    """``path`` holding ``data``, made only if it does not exist yet; False when it did
    (nothing changed).  A finished temp file is ``link``ed into place, which fails if the
    name exists: of two processes racing, one wins, and nobody sees half a file."""
    path = Path(path)
    with _finished_temp(path, data, mode) as tmp:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)
    return True


@contextlib.contextmanager
def _finished_temp(path: Path, data: bytes, mode: int, durable: bool = True
                   ) -> Iterator[Path]:
    """A temp file beside ``path`` holding ``data``, on disk (fsynced unless not
    ``durable``), made with ``mode``; gone afterwards unless it was moved."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


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


class FileCache:
    """What was read from small files (settings every request looks at), kept until the
    file changes: its modification time, size and inode (a file replaced by ``write_json``
    is a new inode).  Shared by threads; each process has its own."""

    def __init__(self):
        self._entries: dict = {}
        self._lock = threading.Lock()

    def get(self, path: Path, read: Callable[[], object], *, empty=None, key=None):
        """``read()``'s value for ``path`` (``empty`` while the file does not exist),
        read again only when the file changed; ``key``: anything else the value
        depends on."""
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            return empty
        with self._lock:
            hit = self._entries.get((path, key))
            if hit is not None and hit[0] == stamp:
                return hit[1]
        value = read()
        with self._lock:
            self._entries[(path, key)] = (stamp, value)
        return value


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
