"""Teach-live datasets on disk: what a class shows the camera, kept per class, in exactly
the layout the fine-tuning command reads (``python -m webapp.finetune DATA_DIR/<name>``).

Layout under ``DATA_DIR``::

    <dataset>/<class>/<image id>.jpg   one folder per dataset, one folder per class
    <dataset>/.dataset.json            the dataset's name as the teacher typed it
    .tmp/                              images, imports and deletions in progress; swept
    .jobs/                             training jobs (``webapp.training.jobs``)

* **Names never become paths unchecked.**  A dataset has a name in any script (第一课,
  ``Pens & Cups``), kept in ``.dataset.json``, and an id made from it here: a slug
  (``pens-cups``, ``dataset-2``), its folder and its address.  A class name is a short
  label in any script (``red pen``, 杯子) without ``/``, ``\\``, control characters or a
  leading dot; image ids are made here (``20261123-120102-a1b2c3d4``).  Anything else is
  refused with a 400 before the filesystem is touched.
* **No hostile bytes are kept.**  Every image is decoded with the server's own decoder
  (``webapp.imaging``: format allow-list, ``MAX_IMAGE_PIXELS``, EXIF rotation, colour
  modes), scaled down to at most ``MAX_SIDE`` pixels and stored re-encoded as a plain JPEG:
  no metadata, no trailing data, nothing the uploader chose but the pixels.
* **When a picture was taken is kept** as its file's modification time (the Teach page
  says when the capture button was pressed, or a dropped file's own time; a zip import
  keeps its members' times): training keeps the pictures of one burst together when it
  splits a dataset (``webapp.training.bursts``), and an export carries the times along.
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
import json
import os
import re
import secrets
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from webapp import durable, imaging
from webapp.durable import fsync_dir
from webapp.messages import Message
from webapp.stores import dataset_zip
from webapp.stores.dataset_names import (
    MAX_CLASSES,
    DatasetStoreError,
    check_class_name,
    check_classes,
    check_display_name,
    is_dataset_name,
    is_windows_device,
    suggest_slug,
)
from webapp.stores.dataset_zip import ImportResult

MAX_SIDE = 1024  # stored images: the longer side at most this (training uses ≤ 448)
JPEG_QUALITY = 90
STALE_TMP_SECONDS = 6 * 3600
TMP_DIR = ".tmp"
META_FILE = ".dataset.json"
_IMAGE_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{8}$")


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


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
        if not is_dataset_name(name):
            raise self._unknown(name)
        folder = self.root / name
        if not folder.is_dir():
            raise self._unknown(name)
        return folder

    @staticmethod
    def _unknown(name) -> DatasetStoreError:
        shown = name if isinstance(name, str) and len(name) <= 60 else "?"
        return DatasetStoreError(404, "unknown_dataset", Message(
            "There is no dataset %(name)s.", name=repr(shown)))

    def names(self) -> list[str]:
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        return [e.name for e in entries
                if is_dataset_name(e.name) and e.is_dir(follow_symlinks=False)]

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

    @staticmethod
    def _display_name(folder: Path) -> str:
        """The name the teacher gave the dataset (its id for one made without it)."""
        try:
            shown = json.loads((folder / META_FILE).read_text("utf-8"))["name"]
            return check_display_name(shown)
        except (OSError, ValueError, KeyError, TypeError, DatasetStoreError):
            return folder.name

    def _new_id(self, display_name: str) -> str:
        """A free id (folder name) for a dataset called ``display_name``: its slug, with
        -2, -3 ... when that is taken (第一课 -> ``dataset``, 第二课 -> ``dataset-2``) or is
        a name Windows keeps for a device (``con`` -> ``con-2``: an exported dataset must
        unzip there)."""
        base = suggest_slug(display_name)
        for n in range(1, 10_000):
            candidate = base if n == 1 else f"{base}-{n}"
            if not is_windows_device(candidate) and not (self.root / candidate).exists():
                return candidate
        raise DatasetStoreError(409, "dataset_exists", Message(
            "There is already a dataset %(name)s.", name=repr(display_name)))

    def _check_free(self, display_name: str) -> None:
        """409 when a dataset of that name exists (names differing only in case count as
        the same)."""
        wanted = display_name.casefold()
        for existing in self.names():
            if self._display_name(self.root / existing).casefold() == wanted \
                    or existing == display_name:
                raise DatasetStoreError(409, "dataset_exists", Message(
                    "There is already a dataset %(name)s.", name=repr(display_name)))

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
        return {"name": name, "display_name": self._display_name(folder),
                "classes": classes, "images": total, "size_bytes": size,
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
        raise DatasetStoreError(404, "unknown_image", Message(
            "Dataset %(name)s has no image %(image)s.", name=repr(name), image=repr(shown)))

    def _class_dir(self, name: str, label) -> Path:
        folder = self._dir(name)
        label = check_class_name(label)
        for class_dir in self._class_dirs(folder):
            if class_dir.name == label:
                return class_dir
        classes = ", ".join(repr(d.name) for d in self._class_dirs(folder))
        raise DatasetStoreError(404, "unknown_class", Message(
            "Dataset %(name)s has no class %(label)s (its classes: %(classes)s).",
            name=repr(name), label=repr(label), classes=classes) if classes else Message(
            "Dataset %(name)s has no class %(label)s (it has no classes yet).",
            name=repr(name), label=repr(label)))

    # ------------------------------------------------------------------ writing

    def staging_dir(self, prefix: str) -> Path:
        """A new path in the store's temporary folder, on the same file system as the
        datasets (so moving it into place is one atomic rename); the job queue builds its
        snapshots here too."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self.tmp_dir / f"{prefix}{secrets.token_hex(8)}"

    def create(self, name, classes) -> dict:
        """A new, empty dataset called ``name`` (any script; its id is made from it) with
        ``classes`` (a list, or one typed field: ``split_names``)."""
        display_name = check_display_name(name)
        classes = check_classes(classes)
        if not classes:
            raise DatasetStoreError(400, "bad_class", Message(
                'Give at least one class, e.g. ["pen", "cup"] (a model needs two to tell '
                'apart).'))
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep()
        self._check_free(display_name)
        dataset_id = self._new_id(display_name)
        with self._new_dataset(dataset_id, "new", display_name) as staging:
            for c in classes:
                (staging / c).mkdir()
        return self.describe(dataset_id)

    @contextlib.contextmanager
    def _new_dataset(self, name: str, prefix: str, display_name: str) -> Iterator[Path]:
        """A staging folder that becomes dataset ``name`` (called ``display_name``) with
        one rename when the block ends without an error, and is removed otherwise."""
        staging = self.staging_dir(f"{prefix}-{name}-")
        staging.mkdir()
        try:
            durable.write_json(staging / META_FILE, {"name": display_name})
            yield staging
            try:
                os.rename(staging, self.root / name)  # fails when it exists (not empty)
            except OSError:
                raise DatasetStoreError(409, "dataset_exists", Message(
                    "There is already a dataset %(name)s.", name=repr(display_name))) from None
            staging = None
            fsync_dir(self.root)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)

    def add_class(self, name: str, label) -> dict:
        folder = self._dir(name)
        label = check_class_name(label)
        existing = self._class_dirs(folder)
        if any(d.name.casefold() == label.casefold() for d in existing):
            raise DatasetStoreError(409, "class_exists", Message(
                "Dataset %(name)s already has a class %(label)s.", name=repr(name),
                label=repr(label)))
        if len(existing) >= MAX_CLASSES:
            raise DatasetStoreError(409, "too_many_classes", Message(
                "At most %(limit)s classes.", limit=MAX_CLASSES))
        with contextlib.suppress(FileExistsError):
            (folder / label).mkdir()
        return self.describe(name)

    def delete_class(self, name: str, label) -> dict:
        class_dir = self._class_dir(name, label)
        trash = self.staging_dir("deleted-class-")
        os.rename(class_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return self.describe(name)

    def delete(self, name: str) -> None:
        folder = self._dir(name)
        trash = self.staging_dir(f"deleted-{name}-")
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            raise self._unknown(name) from None
        fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def add_image(self, name: str, label, data: bytes, taken: float | None = None) -> dict:
        """Store one image in class ``label``: decoded, shrunk, re-encoded as JPEG, with
        ``taken`` (seconds since 1970, ``check_taken``) as its file time when given.
        ``imaging.ImageError`` (4xx) for what is not a usable image."""
        class_dir = self._class_dir(name, label)
        if self.count(name) >= self.max_images:
            raise DatasetStoreError(409, "dataset_full", Message(
                "Dataset %(name)s holds %(limit)s images, the most one dataset may hold "
                "(MAX_DATASET_IMAGES). Delete some first.", name=repr(name),
                limit=self.max_images))
        jpeg, width, height = self._encode(data)
        image_id = self._write(class_dir, jpeg, taken)
        return {"id": image_id, "class": class_dir.name, "width": width, "height": height,
                "bytes": len(jpeg)}

    def _encode(self, data: bytes) -> tuple[bytes, int, int]:
        return encode_image(data, max_pixels=self.max_pixels, seconds=self.decode_seconds)

    def _write(self, class_dir: Path, jpeg: bytes, taken: float | None = None) -> str:
        tmp = self.staging_dir("image-")
        try:
            with open(tmp, "xb") as fh:
                fh.write(jpeg)
                fh.flush()
                if taken is not None:
                    os.utime(fh.fileno(), (taken, taken))
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
                    shutil.copy2(entry.path, target / entry.name)  # with its time
                n += 1
            counts[class_dir.name] = n
        return counts

    # ------------------------------------------------------------------ zip

    def export_zip(self, name: str) -> Iterator[bytes]:
        """The dataset as a zip streamed in chunks: ``<name>/<class>/<id>.jpg`` -- unzip it
        and ``python -m webapp.finetune <name> --out model.pt`` trains on it."""
        folder = self._dir(name)
        sink = dataset_zip.ChunkSink()
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
        """A new dataset called ``name`` (any script; its id is made from it) from a zip of
        class folders (``<class>/<file>``, with or without one enclosing folder,
        ``train/ val/ test/`` merged).  Every member is read with a cap, decoded and
        re-encoded like an upload; anything else is skipped and counted.  Nothing appears
        unless the whole import succeeds (one rename).  The result names the new id."""
        display_name = check_display_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._check_free(display_name)
        except DatasetStoreError:
            raise DatasetStoreError(409, "dataset_exists", Message(
                "There is already a dataset %(name)s; import under another name or delete "
                "it.", name=repr(display_name))) from None
        zf = self._open_zip(archive)
        dataset_id = self._new_id(display_name)
        result = ImportResult(dataset_id)
        self.sweep()
        with self._new_dataset(dataset_id, "import", display_name) as staging:
            with zf:
                self._unpack(zf, staging, result, max_member_bytes=max_member_bytes,
                             max_total_bytes=max_total_bytes)
            if not result.imported:
                raise DatasetStoreError(422, "no_images", Message(
                    "The archive holds no usable images in class folders (%(skipped)s "
                    "file(s) skipped). Expected <class>/<image> entries, e.g. pen/1.jpg, "
                    "cup/2.jpg.", skipped=len(result.skipped)), **{"import": result.as_dict()})
        return result

    def _open_zip(self, archive) -> zipfile.ZipFile:
        """The archive, once its central directory is known to list few enough files."""
        most = 4 * self.max_images + 1000
        entries = dataset_zip.zip_entry_count(archive, most)
        if entries is not None and entries > most:
            raise DatasetStoreError(413, "too_many_files", Message(
                "The archive lists more than %(most)s files; a dataset may hold at most "
                "%(limit)s images (MAX_DATASET_IMAGES).", most=most, limit=self.max_images))
        try:
            return zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError, ValueError):
            raise DatasetStoreError(415, "not_a_zip", Message(
                "The archive is not a readable zip file. Export a dataset (or zip a folder "
                "of class folders) and import that.")) from None

    def _unpack(self, zf: zipfile.ZipFile, staging: Path, result: ImportResult, **caps) -> None:
        """Every usable member, re-encoded, into its class folder under ``staging``."""
        plan, folders = dataset_zip.plan_import(zf.infolist(), result)
        if len(plan) > self.max_images:
            raise DatasetStoreError(413, "too_many_images", Message(
                "The archive holds %(count)s files in class folders; a dataset may hold at "
                "most %(limit)s images (MAX_DATASET_IMAGES).", count=len(plan),
                limit=self.max_images))
        for info, label, data in dataset_zip.read_members(zf, plan, result, **caps):
            try:
                jpeg, _, _ = self._encode(data)
            except imaging.ImageError as exc:
                if exc.code == "too_slow_to_decode":  # built to waste time: stop
                    raise DatasetStoreError(422, "too_slow_to_decode", Message(
                        "%(file)s: %(reason)s Nothing was imported.",
                        file=info.filename[:200], reason=exc.message)) from None
                result.skipped.append((info.filename, dataset_zip.image_problem(exc)))
                continue
            class_dir = staging / label
            class_dir.mkdir(exist_ok=True)
            self._write(class_dir, jpeg, dataset_zip.member_time(info))
            result.imported[label] += 1
        for label in folders:  # class folders without a picture (yet)
            (staging / label).mkdir(exist_ok=True)

    def sweep(self, older_than: float = STALE_TMP_SECONDS) -> int:
        """Remove leftovers of interrupted writes from ``.tmp/`` (old ones only)."""
        return durable.sweep(self.tmp_dir, older_than)
