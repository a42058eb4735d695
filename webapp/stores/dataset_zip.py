"""Teach datasets as zip files: the export streamed while it is made, and the pieces of a
safe import -- member names only *read* (never used as paths), the central directory
counted before it is parsed, every member read with a size cap.  The store
(``webapp.stores.datasets``) decodes, re-encodes and writes what these let through."""

from __future__ import annotations

import contextlib
import io
import re
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from webapp import imaging
from webapp.messages import Message
from webapp.stores.dataset_names import MAX_CLASSES, DatasetStoreError, check_class_name

SPLIT_FOLDERS = {"train", "val", "valid", "validation", "test"}


@dataclass
class ImportResult:
    name: str
    imported: Counter = field(default_factory=Counter)  # per class
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (member, reason)

    def as_dict(self) -> dict:
        reasons = Counter(reason for _, reason in self.skipped)
        return {
            "name": self.name,
            "imported": sum(self.imported.values()),
            "per_class": dict(sorted(self.imported.items())),
            "skipped": len(self.skipped),
            "skipped_reasons": dict(reasons.most_common()),
            "skipped_examples": [{"file": f, "reason": r} for f, r in self.skipped[:20]],
        }


class ChunkSink(io.RawIOBase):
    """A write-only, unseekable stream collecting what ``zipfile`` writes, so the zip can
    be sent while it is being made (zipfile uses data descriptors then)."""

    def __init__(self):
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._chunks = b"".join(self._chunks), []
        return data


def plan_import(infos: list[zipfile.ZipInfo], result: ImportResult):
    """(member, class name) for every file that sits in a class folder (the rest is
    skipped with the reason), and the class folders that hold no file (an export keeps
    empty classes as folder entries).  Member names are only *read* here, never used as
    paths."""
    entries, folders = [], []
    for info in infos:
        raw_name = info.filename.replace("\\", "/")
        parts = [p for p in PurePosixPath(raw_name).parts if p not in ("", "/")]
        unsafe = raw_name.startswith("/") or re.match(r"^[A-Za-z]:", raw_name) or ".." in parts
        hidden = not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts)
        if info.is_dir():
            if not (unsafe or hidden):
                folders.append(parts)
            continue
        if unsafe:
            result.skipped.append((info.filename[:200],
                                   Message("an unsafe path (outside its folder)")))
            continue
        if hidden:
            result.skipped.append((info.filename[:200], Message("hidden or system file")))
            continue
        entries.append((info, parts))
    # One enclosing folder (what an export or zipping a folder gives): strip it.
    tops = {parts[0] for _, parts in entries}
    if len(tops) == 1 and all(len(parts) >= 3 for _, parts in entries):
        top = tops.pop()
        entries = [(info, parts[1:]) for info, parts in entries]
        folders = [parts[1:] for parts in folders if parts[0] == top]
    empty = []
    for parts in folders:
        if len(parts) == 2 and parts[0].lower() in SPLIT_FOLDERS:
            parts = parts[1:]
        if len(parts) == 1:
            with contextlib.suppress(DatasetStoreError):
                empty.append(check_class_name(parts[0]))
    plan = []
    for info, parts in entries:
        if len(parts) >= 3 and parts[0].lower() in SPLIT_FOLDERS:
            parts = parts[1:]  # train/ val/ test/ are merged (the split is made anew)
        if len(parts) < 2:
            result.skipped.append((info.filename[:200], Message("not in a class folder")))
            continue
        try:
            label = check_class_name(parts[0])
        except DatasetStoreError:
            result.skipped.append((info.filename[:200], Message(
                "the folder name is not a usable class name")))
            continue
        plan.append((info, label))
    labels = {label.casefold() for _, label in plan}
    if len(labels) > MAX_CLASSES:
        raise DatasetStoreError(413, "too_many_classes", Message(
            "The archive has %(count)s class folders; at most %(limit)s.", count=len(labels),
            limit=MAX_CLASSES))
    # Two folders differing only in case would be two classes on Linux but collide on
    # other systems: keep the first spelling.
    spelling: dict[str, str] = {}
    plan = [(info, spelling.setdefault(label.casefold(), label)) for info, label in plan]
    empty = [label for label in empty if label.casefold() not in spelling][:MAX_CLASSES]
    return plan, list(dict.fromkeys(empty))


def read_members(zf: zipfile.ZipFile, plan, result: ImportResult, *, max_member_bytes: int,
                 max_total_bytes: int) -> Iterator[tuple[zipfile.ZipInfo, str, bytes]]:
    """(member, class name, bytes) for every planned member that can be read within the
    caps: each member at most ``max_member_bytes``, all of them ``max_total_bytes``
    (read, not as the archive claims); the rest is skipped in ``result`` with the
    reason."""
    budget = max_total_bytes
    for info, label in plan:
        if info.file_size > max_member_bytes:
            result.skipped.append((info.filename, Message("larger than the upload limit")))
            continue
        if budget <= 0:
            result.skipped.append((info.filename, Message("the archive unpacks to too much data")))
            continue
        try:
            with zf.open(info) as member:
                data = member.read(min(max_member_bytes, budget) + 1)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError,
                OSError, EOFError, ValueError) as exc:
            result.skipped.append((info.filename, zip_problem(exc)))
            continue
        budget -= len(data)
        if len(data) > max_member_bytes:
            result.skipped.append((info.filename, Message("larger than the upload limit")))
            continue
        yield info, label, data


def member_time(info: zipfile.ZipInfo) -> float | None:
    """A zip member's own time (zip keeps local time, 2-second steps)."""
    try:
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return None


def zip_entry_count(archive, limit: int) -> int | None:
    """How many entries the zip's central directory holds, counted in the directory
    itself (its entry signatures) before ``ZipFile`` builds an object per entry.  The
    end record's count is whatever the archive's maker wrote (``ZipFile`` ignores it
    too): 100,000 entries behind a claim of 1 took 4 s and 66 MB to parse.  Counting
    stops past ``limit``; a name that happens to hold a signature only counts high."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:  # pragma: no cover - private helper of the standard library
        return None
    try:
        with open(archive, "rb") as fh:
            record = end_record(fh)
            if not record:
                return None
            size = record[zipfile._ECD_SIZE]
            start = record[zipfile._ECD_LOCATION] - size  # where ZipFile will read it
            if record[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
                start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
            if start < 0:
                return None  # ZipFile says what is wrong
            fh.seek(start)
            count, tail = 0, b""
            while size > 0 and count <= limit:
                chunk = fh.read(min(1 << 20, size))
                if not chunk:
                    break
                size -= len(chunk)
                window = tail + chunk  # a signature across two reads counts once
                count += window.count(zipfile.stringCentralDir)
                tail = window[-3:]
            return count
    except OSError:
        return None


def zip_problem(exc: Exception) -> str:
    if isinstance(exc, RuntimeError) and "encrypted" in str(exc).lower():
        return Message("encrypted")
    if isinstance(exc, NotImplementedError):
        return Message("compressed with a method this server does not read")
    return Message("damaged in the archive")


def image_problem(exc: imaging.ImageError) -> str:
    return {
        "not_an_image": Message("not an image"),
        "unsupported_format": Message("an image format that is not accepted"),
        "empty_file": Message("empty"),
        "too_many_pixels": Message("too many pixels"),
    }.get(exc.code, Message("a damaged image"))
