"""Teach-live datasets on disk: what a class shows the camera, kept per class, in exactly
the layout the fine-tuning command reads (``python -m webapp.finetune DATA_DIR/<name>``).

Layout under ``DATA_DIR``::

    <dataset>/<class>/<image id>.jpg   one folder per dataset, one folder per class
    .tmp/                              images, imports and deletions in progress; swept
    .jobs/                             training jobs (``webapp.jobs``)

* **Names never become paths unchecked.**  A dataset name is a slug (``pens-and-cups``),
  a class name is a short label (``red pen``) without ``/``, ``\\``, control characters or
  a leading dot, image ids are made here (``20261123-120102-a1b2c3d4``).  Anything else is
  refused with a 400 before the filesystem is touched.
* **No hostile bytes are kept.**  Every image is decoded with the server's own decoder
  (``webapp.serving.imaging``: format allow-list, ``MAX_IMAGE_PIXELS``, EXIF rotation, colour
  modes), scaled down to at most ``MAX_SIDE`` pixels and stored re-encoded as a plain JPEG:
  no metadata, no trailing data, nothing the uploader chose but the pixels.
* **Writes are atomic.**  An image is written to ``.tmp/`` and renamed into its class
  folder; an import is built in ``.tmp/`` and appears with one rename; a deletion renames
  the folder away first.  Several workers and servers can share one ``DATA_DIR``.
* **Zip import is safe**: member names are only used to find the class name (validated
  like any other), never as paths (no zip-slip); the entries are counted in the central
  directory before it is parsed; every member is read with a size cap (no zip bomb),
  decoded and re-encoded like an upload; anything else is skipped and counted with the
  reason, except a file built to be slow to decode, which stops the import.

Knows nothing about Flask.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import os
import re
import secrets
import shutil
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from webapp.serving import imaging
from webapp.stores import durable
from webapp.stores.durable import fsync_dir

MAX_SIDE = 1024  # stored images: the longer side at most this (training uses ≤ 448)
JPEG_QUALITY = 90
MAX_CLASSES = 50
MAX_CLASS_NAME = 40
MAX_DATASET_NAME = 48
STALE_TMP_SECONDS = 6 * 3600
TMP_DIR = ".tmp"
_DATASET_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_IMAGE_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{8}$")
_FORBIDDEN_IN_CLASS = set('/\\<>:"|?*')  # path separators, and what Windows refuses
# Names Windows keeps for devices, whatever the extension: an exported dataset with a
# class folder "CON" or "nul.txt" cannot be unzipped there.
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                    *(f"{port}{n}" for port in ("COM", "LPT") for n in "123456789¹²³")}
SPLIT_FOLDERS = {"train", "val", "valid", "validation", "test"}


class DatasetStoreError(Exception):
    """Something the caller asked for cannot be done; ``status`` is the HTTP status."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


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


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def suggest_slug(raw: str) -> str:
    """``"Pens & Cups!"`` -> ``"pens-cups"`` (for the error message and the page)."""
    text = unicodedata.normalize("NFKD", raw or "").encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-_")
    return slug[:MAX_DATASET_NAME].rstrip("-_") or "my-dataset"


def check_dataset_name(raw) -> str:
    """A dataset name is a slug: lowercase letters, digits, ``-`` and ``_``."""
    if not isinstance(raw, str) or not raw.strip():
        raise DatasetStoreError(400, "bad_name", "Give the dataset a name, e.g. 'pens-and-cups'.")
    name = raw.strip()
    if len(name) > MAX_DATASET_NAME or not _DATASET_RE.match(name):
        raise DatasetStoreError(
            400, "bad_name", f"The dataset name {name[:60]!r} is not accepted: use up to "
            f"{MAX_DATASET_NAME} lowercase letters, digits, '-' and '_', starting with a "
            f"letter or digit, e.g. {suggest_slug(name)!r}.",
        )
    return name


def check_class_name(raw) -> str:
    """A class name is what the model will answer: up to 40 characters, any language,
    no path characters, no control characters, no leading or trailing dot, no name
    Windows keeps for a device (an export must unzip everywhere)."""
    if not isinstance(raw, str):
        raise DatasetStoreError(400, "bad_class", "A class name must be text, e.g. 'pen'.")
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    problem = None
    if not name:
        problem = "it is empty"
    elif len(name) > MAX_CLASS_NAME:
        problem = f"it is {len(name)} characters long (at most {MAX_CLASS_NAME})"
    elif any(unicodedata.category(ch).startswith("C") for ch in name):
        problem = "it contains control characters"
    elif _FORBIDDEN_IN_CLASS & set(name) or name.startswith(".") or ".." in name:
        problem = "it contains / \\ < > : \" | ? * .. or starts with a dot"
    elif name.split(".")[0].rstrip().upper() in _WINDOWS_DEVICES or name.endswith("."):
        problem = ("Windows cannot make a folder of that name (a device name such as CON "
                   "or NUL, or a dot at the end), so an exported dataset would not unzip")
    if problem:
        raise DatasetStoreError(
            400, "bad_class", f"The class name {name[:60]!r} is not accepted: {problem}. "
            "Use a short label such as 'pen' or 'red cup'.",
        )
    return name


def _check_classes(raw) -> list[str]:
    if isinstance(raw, str):
        raw = [c for c in raw.split(",")]
    if not isinstance(raw, list | tuple):
        raise DatasetStoreError(400, "bad_class", "Send the classes as a list of names, "
                                "e.g. [\"pen\", \"cup\"].")
    classes = [check_class_name(c) for c in raw if not (isinstance(c, str) and not c.strip())]
    if len(classes) > MAX_CLASSES:
        raise DatasetStoreError(400, "too_many_classes",
                                f"{len(classes)} classes; at most {MAX_CLASSES}.")
    seen: dict[str, str] = {}
    for c in classes:
        key = c.casefold()
        if key in seen:
            raise DatasetStoreError(400, "duplicate_class", f"The class {c!r} is given twice "
                                    f"(names differing only in case count as the same).")
        seen[key] = c
    return classes


def _new_image_id() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4)


def encode_image(data: bytes, *, max_pixels: int,
                 seconds: float | None = None) -> tuple[bytes, int, int]:
    """Decode like an upload (``imaging.load``: ``ImageError`` with a 4xx status for bad
    input), shrink to ``MAX_SIDE``, and encode a clean JPEG: (bytes, width, height)."""
    img = imaging.load(data, max_pixels=max_pixels, min_side=MAX_SIDE,
                       seconds=seconds).copy()
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    img.info = {}  # Pillow would carry a JPEG comment (and more) over to the new file
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue(), img.width, img.height


class DatasetStore:
    """The datasets under ``root`` (``DATA_DIR``)."""

    def __init__(self, root: str | os.PathLike, *, max_images: int = 2000,
                 max_pixels: int = 50_000_000, decode_seconds: float | None = None):
        self.root = Path(root)
        self.tmp_dir = self.root / TMP_DIR
        self.max_images = max_images
        self.max_pixels = max_pixels
        self.decode_seconds = decode_seconds

    # ------------------------------------------------------------------ reading

    def _dir(self, name) -> Path:
        """The folder of an existing dataset (404 otherwise; a bad name never reaches
        the filesystem)."""
        if not isinstance(name, str) or len(name) > MAX_DATASET_NAME \
                or not _DATASET_RE.match(name):
            raise self._unknown(name)
        folder = self.root / name
        if not folder.is_dir():
            raise self._unknown(name)
        return folder

    @staticmethod
    def _unknown(name) -> DatasetStoreError:
        shown = name if isinstance(name, str) and len(name) <= 60 else "?"
        return DatasetStoreError(404, "unknown_dataset", f"There is no dataset {shown!r}.")

    def names(self) -> list[str]:
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        return [e.name for e in entries
                if _DATASET_RE.match(e.name) and e.is_dir(follow_symlinks=False)]

    def exists(self, name: str) -> bool:
        try:
            self._dir(name)
        except DatasetStoreError:
            return False
        return True

    @staticmethod
    def _class_dirs(folder: Path) -> list[Path]:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return []
        return sorted((Path(e.path) for e in entries
                       if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")),
                      key=lambda p: p.name)

    @staticmethod
    def _images_in(class_dir: Path) -> list[os.DirEntry]:
        try:
            entries = list(os.scandir(class_dir))
        except FileNotFoundError:
            return []
        return sorted((e for e in entries
                       if e.name.endswith(".jpg") and _IMAGE_RE.match(e.name[:-4])
                       and e.is_file(follow_symlinks=False)), key=lambda e: e.name)

    def classes(self, name: str) -> list[str]:
        return [d.name for d in self._class_dirs(self._dir(name))]

    def describe(self, name: str, *, images: bool = False) -> dict:
        """Classes with their image counts (and image ids when ``images``), totals."""
        folder = self._dir(name)
        classes, total, size = [], 0, 0
        for class_dir in self._class_dirs(folder):
            files = self._images_in(class_dir)
            sizes = 0
            for entry in files:
                with contextlib.suppress(FileNotFoundError):
                    sizes += entry.stat().st_size
            item = {"name": class_dir.name, "count": len(files)}
            if images:
                item["images"] = [e.name[:-4] for e in files]
            classes.append(item)
            total += len(files)
            size += sizes
        created = _dt.datetime.fromtimestamp(folder.stat().st_mtime, _dt.UTC)
        return {"name": name, "classes": classes, "images": total, "size_bytes": size,
                "max_images": self.max_images,
                "modified": created.isoformat(timespec="seconds")}

    def list(self) -> list[dict]:
        out = []
        for name in self.names():
            with contextlib.suppress(DatasetStoreError):  # deleted meanwhile
                out.append(self.describe(name))
        return out

    def count(self, name: str) -> int:
        return sum(len(self._images_in(d)) for d in self._class_dirs(self._dir(name)))

    def image_path(self, name: str, image_id) -> tuple[str, Path]:
        """(class, path) of a stored image; 404 for an unknown or malformed id."""
        folder = self._dir(name)
        if isinstance(image_id, str) and _IMAGE_RE.match(image_id):
            for class_dir in self._class_dirs(folder):
                path = class_dir / f"{image_id}.jpg"
                if path.is_file():
                    return class_dir.name, path
        shown = image_id if isinstance(image_id, str) and len(image_id) <= 40 else "?"
        raise DatasetStoreError(404, "unknown_image",
                                f"Dataset {name!r} has no image {shown!r}.")

    def _class_dir(self, name: str, label) -> Path:
        folder = self._dir(name)
        label = check_class_name(label)
        for class_dir in self._class_dirs(folder):
            if class_dir.name == label:
                return class_dir
        classes = ", ".join(repr(d.name) for d in self._class_dirs(folder)) or "none yet"
        raise DatasetStoreError(404, "unknown_class", f"Dataset {name!r} has no class "
                                f"{label!r} (its classes: {classes}).")

    # ------------------------------------------------------------------ writing

    def _tmp(self, prefix: str) -> Path:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self.tmp_dir / f"{prefix}{secrets.token_hex(8)}"

    def create(self, name, classes) -> dict:
        name = check_dataset_name(name)
        classes = _check_classes(classes)
        if not classes:
            raise DatasetStoreError(400, "bad_class", "Give at least one class, e.g. "
                                    "[\"pen\", \"cup\"] (a model needs two to tell apart).")
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep()
        if (self.root / name).exists():
            raise DatasetStoreError(409, "dataset_exists", f"There is already a dataset {name!r}.")
        staging = self._tmp(f"new-{name}-")
        staging.mkdir()
        try:
            for c in classes:
                (staging / c).mkdir()
            try:
                os.rename(staging, self.root / name)  # fails when it exists (not empty)
            except OSError:
                raise DatasetStoreError(409, "dataset_exists",
                                        f"There is already a dataset {name!r}.") from None
            staging = None
            fsync_dir(self.root)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        return self.describe(name)

    def add_class(self, name: str, label) -> dict:
        folder = self._dir(name)
        label = check_class_name(label)
        existing = self._class_dirs(folder)
        if any(d.name.casefold() == label.casefold() for d in existing):
            raise DatasetStoreError(409, "class_exists", f"Dataset {name!r} already has a "
                                    f"class {label!r}.")
        if len(existing) >= MAX_CLASSES:
            raise DatasetStoreError(409, "too_many_classes", f"At most {MAX_CLASSES} classes.")
        with contextlib.suppress(FileExistsError):
            (folder / label).mkdir()
        return self.describe(name)

    def delete_class(self, name: str, label) -> dict:
        class_dir = self._class_dir(name, label)
        trash = self._tmp("deleted-class-")
        os.rename(class_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return self.describe(name)

    def delete(self, name: str) -> None:
        folder = self._dir(name)
        trash = self._tmp(f"deleted-{name}-")
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            raise self._unknown(name) from None
        fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def add_image(self, name: str, label, data: bytes) -> dict:
        """Store one image in class ``label``: decoded, shrunk, re-encoded as JPEG.
        ``imaging.ImageError`` (4xx) for what is not a usable image."""
        class_dir = self._class_dir(name, label)
        if self.count(name) >= self.max_images:
            raise DatasetStoreError(
                409, "dataset_full", f"Dataset {name!r} holds {self.max_images} images, "
                "the most one dataset may hold (MAX_DATASET_IMAGES). Delete some first.")
        jpeg, width, height = self._encode(data)
        image_id = self._write(class_dir, jpeg)
        return {"id": image_id, "class": class_dir.name, "width": width, "height": height,
                "bytes": len(jpeg)}

    def _encode(self, data: bytes) -> tuple[bytes, int, int]:
        return encode_image(data, max_pixels=self.max_pixels, seconds=self.decode_seconds)

    def _write(self, class_dir: Path, jpeg: bytes) -> str:
        tmp = self._tmp("image-")
        try:
            with open(tmp, "xb") as fh:
                fh.write(jpeg)
                fh.flush()
                os.fsync(fh.fileno())
            while True:
                image_id = _new_image_id()
                target = class_dir / f"{image_id}.jpg"
                try:
                    os.link(tmp, target)  # never replaces an existing file
                except FileExistsError:
                    continue
                except FileNotFoundError:  # the class (or dataset) was deleted meanwhile
                    raise DatasetStoreError(404, "unknown_class", "The class was deleted "
                                            "while the image was being stored.") from None
                return image_id
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def delete_image(self, name: str, image_id) -> str:
        label, path = self.image_path(name, image_id)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return label

    def thumbnail(self, name: str, image_id, size: int) -> bytes:
        """A small JPEG of a stored image (for the Teach page's thumbnails)."""
        _, path = self.image_path(name, image_id)
        with Image.open(path) as img:
            img.draft("RGB", (size, size))
            img = img.convert("RGB")
            img.thumbnail((size, size), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=80)
        return buf.getvalue()

    def snapshot(self, name: str, dest: Path) -> dict[str, int]:
        """Copy the dataset as it is now into ``dest`` (class folders, hard links where
        possible: images are never modified in place, so a link is a true snapshot).
        Empty classes are kept as empty folders.  Returns the count per class."""
        folder = self._dir(name)
        counts = {}
        dest.mkdir(parents=True)
        for class_dir in self._class_dirs(folder):
            target = dest / class_dir.name
            target.mkdir()
            n = 0
            for entry in self._images_in(class_dir):
                try:
                    os.link(entry.path, target / entry.name)
                except FileNotFoundError:  # deleted meanwhile
                    continue
                except OSError:  # another filesystem, or links not supported
                    shutil.copyfile(entry.path, target / entry.name)
                n += 1
            counts[class_dir.name] = n
        return counts

    # ------------------------------------------------------------------ zip

    def export_zip(self, name: str) -> Iterator[bytes]:
        """The dataset as a zip streamed in chunks: ``<name>/<class>/<id>.jpg`` -- unzip it
        and ``python -m webapp.finetune <name> --out model.pt`` trains on it."""
        folder = self._dir(name)
        sink = _ChunkSink()
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as zf:  # JPEGs: no deflate
            for class_dir in self._class_dirs(folder):
                zf.writestr(zipfile.ZipInfo(f"{name}/{class_dir.name}/"), b"")
                for entry in self._images_in(class_dir):
                    with contextlib.suppress(FileNotFoundError):
                        zf.write(entry.path, f"{name}/{class_dir.name}/{entry.name}")
                    yield sink.take()
        yield sink.take()

    def import_zip(self, archive: str | os.PathLike, name, *, max_member_bytes: int,
                   max_total_bytes: int) -> ImportResult:
        """A new dataset ``name`` from a zip of class folders (``<class>/<file>``, with or
        without one enclosing folder, ``train/ val/ test/`` merged).  Every member is read
        with a cap, decoded and re-encoded like an upload; anything else is skipped and
        counted.  Nothing appears unless the whole import succeeds (one rename)."""
        name = check_dataset_name(name)
        if self.exists(name):
            raise DatasetStoreError(409, "dataset_exists", f"There is already a dataset "
                                    f"{name!r}; import under another name or delete it.")
        most = 4 * self.max_images + 1000
        entries = _zip_entry_count(archive, most)
        if entries is not None and entries > most:
            raise DatasetStoreError(
                413, "too_many_files", f"The archive lists more than {most} files; a "
                f"dataset may hold at most {self.max_images} images (MAX_DATASET_IMAGES).")
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError, ValueError):
            raise DatasetStoreError(415, "not_a_zip", "The archive is not a readable zip "
                                    "file. Export a dataset (or zip a folder of class "
                                    "folders) and import that.") from None
        result = ImportResult(name)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep()
        staging = self._tmp(f"import-{name}-")
        staging.mkdir()
        try:
            with zf:
                plan, folders = _plan_import(zf.infolist(), result)
                if len(plan) > self.max_images:
                    raise DatasetStoreError(
                        413, "too_many_images", f"The archive holds {len(plan)} files in "
                        f"class folders; a dataset may hold at most {self.max_images} "
                        "images (MAX_DATASET_IMAGES).")
                budget = max_total_bytes
                for info, label in plan:
                    if info.file_size > max_member_bytes:
                        result.skipped.append((info.filename, "larger than the upload limit"))
                        continue
                    if budget <= 0:
                        result.skipped.append((info.filename, "the archive unpacks to too "
                                               "much data"))
                        continue
                    try:
                        with zf.open(info) as member:
                            data = member.read(min(max_member_bytes, budget) + 1)
                    except (zipfile.BadZipFile, RuntimeError, NotImplementedError,
                            OSError, EOFError, ValueError) as exc:
                        result.skipped.append((info.filename, _zip_problem(exc)))
                        continue
                    budget -= len(data)
                    if len(data) > max_member_bytes:
                        result.skipped.append((info.filename, "larger than the upload limit"))
                        continue
                    try:
                        jpeg, _, _ = self._encode(data)
                    except imaging.ImageError as exc:
                        if exc.code == "too_slow_to_decode":  # built to waste time: stop
                            raise DatasetStoreError(
                                422, "too_slow_to_decode", f"{info.filename[:200]}: "
                                f"{exc.message} Nothing was imported.") from None
                        result.skipped.append((info.filename, _image_problem(exc)))
                        continue
                    class_dir = staging / label
                    class_dir.mkdir(exist_ok=True)
                    self._write(class_dir, jpeg)
                    result.imported[label] += 1
            for label in folders:  # class folders without a picture (yet)
                (staging / label).mkdir(exist_ok=True)
            if not result.imported:
                raise DatasetStoreError(
                    422, "no_images", "The archive holds no usable images in class folders "
                    f"({len(result.skipped)} file(s) skipped). Expected <class>/<image> "
                    "entries, e.g. pen/1.jpg, cup/2.jpg.", **{"import": result.as_dict()})
            try:
                os.rename(staging, self.root / name)
            except OSError:
                raise DatasetStoreError(409, "dataset_exists",
                                        f"There is already a dataset {name!r}.") from None
            staging = None
            fsync_dir(self.root)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        return result

    def sweep(self, older_than: float = STALE_TMP_SECONDS) -> int:
        """Remove leftovers of interrupted writes from ``.tmp/`` (old ones only)."""
        return durable.sweep(self.tmp_dir, older_than)


class _ChunkSink(io.RawIOBase):
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


def _plan_import(infos: list[zipfile.ZipInfo], result: ImportResult):
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
            result.skipped.append((info.filename[:200], "an unsafe path (outside its folder)"))
            continue
        if hidden:
            result.skipped.append((info.filename[:200], "hidden or system file"))
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
            result.skipped.append((info.filename[:200], "not in a class folder"))
            continue
        try:
            label = check_class_name(parts[0])
        except DatasetStoreError:
            result.skipped.append((info.filename[:200], "the folder name is not a usable "
                                   "class name"))
            continue
        plan.append((info, label))
    labels = {label.casefold() for _, label in plan}
    if len(labels) > MAX_CLASSES:
        raise DatasetStoreError(413, "too_many_classes", f"The archive has {len(labels)} "
                                f"class folders; at most {MAX_CLASSES}.")
    # Two folders differing only in case would be two classes on Linux but collide on
    # other systems: keep the first spelling.
    spelling: dict[str, str] = {}
    plan = [(info, spelling.setdefault(label.casefold(), label)) for info, label in plan]
    empty = [label for label in empty if label.casefold() not in spelling][:MAX_CLASSES]
    return plan, list(dict.fromkeys(empty))


def _zip_entry_count(archive, limit: int) -> int | None:
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


def _zip_problem(exc: Exception) -> str:
    if isinstance(exc, RuntimeError) and "encrypted" in str(exc).lower():
        return "encrypted"
    if isinstance(exc, NotImplementedError):
        return "compressed with a method this server does not read"
    return "damaged in the archive"


def _image_problem(exc: imaging.ImageError) -> str:
    return {
        "not_an_image": "not an image",
        "unsupported_format": "an image format that is not accepted",
        "empty_file": "empty",
        "too_many_pixels": "too many pixels",
    }.get(exc.code, "a damaged image")
