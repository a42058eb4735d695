"""The engine cache: what a child process built for a model, kept on disk so that workers
only read it.  No torch here (workers import this).

One model's entry, all under ``ENGINE_CACHE_DIR``, named by the model's *key*::

    <key>.card.json     the model card: name, labels, preprocessing, outputs, heatmap head
    <key>.fp32.onnx     the network, outputs ``logits`` and (when a heatmap is possible)
                        ``features``, the last feature map before global pooling
    <key>.head.npz      the linear head (weight, bias) the heatmap is computed with
    <key>.openset.npy   a trained model's normalised training features, for "I'm not sure"
                        (``webapp.scores``)
    <key>-<calibration>.int8.onnx   static int8 (QDQ), built when QUANTIZE=static asks

The key is a hash of the source file's sha256, what the uploader said about it (class
names, architecture, preprocessing) and the versions of the tools that build entries, so
the same weights give the same entry wherever they come from, and a new torch or ONNX
release builds afresh.  Every file has a ``.sha256`` sidecar: a file whose bytes do not
match is rebuilt, never trusted.  Builders hold a file lock, so several workers starting
together build an entry once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from webapp import config, durable
from webapp.checkpoints.files import sha256_file
from webapp.checkpoints.loaded import ModelLoadError
from webapp.checkpoints.preprocess import CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD
from webapp.messages import Message, from_json, to_json

log = logging.getLogger(__name__)

CACHE_FORMAT = "5"  # bump when the artefacts' recipe changes: old entries are not reused
CARD_FORMAT = "webapp-model-card/1"
TOOLS = ("torch", "torchvision", "onnx", "onnxruntime")


class EngineCacheError(ModelLoadError):
    """The engine cache cannot be written (full, read-only, no permission): a model it
    does not hold yet cannot be converted for serving.  ``full`` tells the two apart."""

    FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    WRITE_ERRORS = (*FULL, errno.EROFS, errno.EACCES, errno.EPERM)

    def __init__(self, exc: OSError | None = None, *, errno_: int | None = None,
                 why: str | None = None):
        self.errno = exc.errno if exc is not None else errno_
        why = (exc.strerror if exc is not None else why) or "it cannot be written"
        self.why = why
        self.full = self.errno in self.FULL
        if self.full:
            self.message = Message(
                "The engine cache (ENGINE_CACHE_DIR) has no room for the converted model "
                "(%(reason)s); free some space there or point ENGINE_CACHE_DIR at a larger "
                "disk.", reason=why)
        else:
            self.message = Message(
                "The engine cache (ENGINE_CACHE_DIR) cannot be written (%(reason)s); make "
                "it writable by the server's user or point ENGINE_CACHE_DIR at a folder "
                "that is.", reason=why)
        super().__init__(self.message)


def default_cache_dir() -> Path:
    """``ENGINE_CACHE_DIR`` when set (also for the tools that take no app config: the
    CLI, the training runner), else ``~/.cache/offline-classifier/engines``."""
    chosen = config.setting("ENGINE_CACHE_DIR")
    if chosen:
        return Path(chosen)
    base = config.setting("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "offline-classifier" / "engines"


def tool_versions() -> str:
    """The versions of what builds entries, read without importing any of it."""
    parts = [f"fmt{CACHE_FORMAT}"]
    for package in TOOLS:
        try:
            parts.append(f"{package}{version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package}-missing")
    return "-".join(parts)


def model_key(file_sha256: str, given: dict | None = None) -> str:
    """The cache key of a model: its file and what was said about it (``given``: class
    names, arch, preprocessing), and the tools' versions."""
    payload = json.dumps({"sha256": file_sha256, "given": given or {},
                          "tools": tool_versions()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@dataclass
class ModelCard:
    """Everything a worker needs to serve one model, as built by the child process.

    The attribute names are those of ``LoadedModel`` (the torch side), so
    views and templates describe a model the same way whatever engine serves it."""

    key: str
    name: str
    arch: str
    labels: list[str]
    version: str  # first 12 hex digits of the source file's sha256
    source: str
    source_kind: str  # explicit | cache | download | bundled | registry | checkpoint
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    verified: bool | None = None
    notice: str | None = None
    metrics: dict = field(default_factory=dict)
    created: str | None = None
    onnx: str | None = None  # file name of the fp32 network in the cache
    cam: dict | None = None  # {"layer", "grid", "head"} when heatmaps are possible
    cam_unavailable: str | None = None  # why not, in words
    build_seconds: float | None = None
    kind: str = "pytorch"  # the model file: pytorch | safetensors | onnx
    outputs: str = "logits"  # or "probabilities" (an uploaded ONNX model's softmax)
    batch: int | str = "any"  # an uploaded ONNX model may take one image at a time
    found: dict = field(default_factory=dict)  # where arch, classes... were found
    summary: str = ""  # one sentence on that, for the admin page
    guard: str | None = None  # file of the model's own validation images (QUANTIZE=auto)
    openset: dict | None = None  # when it answers "unknown" (webapp.scores)
    # Filled in by the worker that serves the card (not stored):
    quantization: str = "none"
    engine_name: str = "openvino"
    engine_info: dict = field(default_factory=dict)

    STORED = ("key", "name", "arch", "labels", "version", "source", "source_kind",
              "input_size", "mean", "std", "verified", "notice", "metrics", "created", "onnx",
              "cam", "cam_unavailable", "build_seconds", "kind", "outputs", "batch", "found",
              "summary", "guard", "openset")

    @property
    def resize_size(self) -> int:
        return round(self.input_size / CROP_RATIO)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def describe(self) -> dict:
        """The model as /predict names it: ``quantization`` is the QUANTIZE setting
        (``auto``), ``precision`` what runs (fp32, bf16, int8)."""
        return {"name": self.name, "version": self.version, "arch": self.arch,
                "quantization": self.quantization, "engine": self.engine_name,
                "precision": self.engine_info.get("precision") or "fp32"}

    def metadata(self) -> dict:
        """What the model registry stores about the model (``LoadedModel.metadata``)."""
        return {"kind": self.kind, "arch": self.arch, "classes": list(self.labels),
                "num_classes": self.num_classes, "input_size": self.input_size,
                "mean": list(self.mean), "std": list(self.std), "outputs": self.outputs,
                "name": self.name, "version": self.version, "created": self.created,
                "found": self.found}

    # Sentences for people: kept as messages (``webapp.messages``), so a card made by the
    # builder child is shown in each reader's language.
    SENTENCES = ("notice", "cam_unavailable", "summary")

    def as_json(self) -> dict:
        return {"format": CARD_FORMAT, **{k: to_json(getattr(self, k)) if k in self.SENTENCES
                                          else getattr(self, k) for k in self.STORED}}

    @classmethod
    def from_json(cls, data: dict) -> ModelCard:
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            raise ValueError(f"not a model card of format {CARD_FORMAT!r}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k in cls.STORED}
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(x) for x in values[key])
        for key in cls.SENTENCES:
            if key in values:
                values[key] = from_json(values[key])
        return cls(**values)


# --------------------------------------------------------------------------- the cache


class ArtefactCache:
    """Files in one directory, each written atomically with a sha256 sidecar."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    def valid(self, name: str) -> bool:
        """The entry exists and its bytes are the ones its builder wrote."""
        path = self.root / name
        sidecar = path.with_name(path.name + ".sha256")
        try:
            return path.is_file() and sidecar.read_text("utf-8").strip() == sha256_file(path)
        except (OSError, ValueError):  # missing, unreadable, or not even text: rebuilt
            return False

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Held by whoever builds ``name`` (other processes wait; threads too).  A cache
        that cannot be written: ``EngineCacheError``."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fh = open(self.root / f".{name}.lock", "a+")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise EngineCacheError(exc) from None
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def sweep(self, older_than: float) -> int:
        """Remove what builds cut short left behind (``.<name>.tmp-*`` files and work
        folders, private OpenVINO compilations) when older than ``older_than`` seconds."""
        return durable.sweep(self.root, older_than, durable.is_temp_name) + durable.sweep(
            self.root / "openvino", older_than, lambda name: name.startswith(".compile-"))

    def discard(self, name: str) -> None:
        for path in (self.root / name, self.root / f"{name}.sha256"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def put(self, name: str, write: Callable[[Path], None]) -> Path:
        """Write an entry: ``write(tmp_path)``, then its sidecar, then rename both into
        place (the caller holds ``lock(name)`` when others may build it too)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        tmp = self.root / f".{name}.tmp-{os.getpid()}-{threading.get_ident()}"
        sidecar_tmp = tmp.with_name(tmp.name + ".sha256")
        try:
            write(tmp)
            sidecar_tmp.write_text(sha256_file(tmp) + "\n", "utf-8")
            os.replace(tmp, path)
            os.replace(sidecar_tmp, path.with_name(path.name + ".sha256"))
        finally:
            for leftover in (tmp, sidecar_tmp):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        return path

    def get(self, name: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """(path of the entry, True if it was reused); ``build(tmp_path)`` writes it."""
        if self.valid(name):
            return self.root / name, True
        with self.lock(name):
            if self.valid(name):  # another worker built it while we waited
                return self.root / name, True
            if (self.root / name).exists():
                log.warning("engine cache entry %s is damaged; rebuilding it", name)
            return self.put(name, build), False

    def seed_from(self, seed: str | os.PathLike) -> int:
        """Copy the intact entries of another cache (``ENGINE_CACHE_SEED``: read-only, made
        ahead of time) that this one lacks; returns how many.  Damaged or half-written
        files there are left behind."""
        seed = Path(seed)
        if not seed.is_dir() or seed.resolve() == self.root.resolve():
            return 0
        source, copied = ArtefactCache(seed), 0
        for path in sorted(seed.rglob("*")):
            name = str(path.relative_to(seed))
            if not path.is_file() or path.name.startswith(".") or name.endswith(".sha256"):
                continue
            blob = path.parent.name == "openvino"  # OpenVINO's compiled networks: no sidecar
            if (self.root / name).exists() if blob else self.valid(name):
                continue
            try:
                if blob:
                    (self.root / name).parent.mkdir(parents=True, exist_ok=True)
                    tmp = self.root / f"{name}.tmp-{os.getpid()}"
                    shutil.copyfile(path, tmp)
                    os.replace(tmp, self.root / name)
                elif source.valid(name):
                    self.put(name, lambda tmp, path=path: shutil.copyfile(path, tmp))
                else:
                    continue
            except PermissionError as exc:  # not readable by this user: built here instead
                log.warning("engine cache: cannot copy %s from %s (%s)", name, seed, exc)
                continue
            copied += 1
        return copied

    # ------------------------------------------------------------------ model cards

    @staticmethod
    def card_name(key: str) -> str:
        return f"{key}.card.json"

    def read_card(self, key: str, version: str | None = None) -> ModelCard | None:
        """The card of ``key`` if it and every file it names are intact and it is the
        card of that model (its own key, the files of that key and, when given, the
        ``version`` of the model file: entries copied from another model are never served
        under this one's name), else None."""
        name = self.card_name(key)
        if not self.valid(name):
            return None
        try:
            card = ModelCard.from_json(json.loads((self.root / name).read_text("utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("engine cache entry %s is unreadable (%s); rebuilding it", name, exc)
            return None
        needed = [card.onnx, (card.cam or {}).get("head"), (card.openset or {}).get("file"),
                  card.guard]
        if card.key != key or (version and card.version != version) or any(
                not Path(n).name.startswith(key) or Path(n).name != n for n in needed if n):
            log.warning("engine cache entry %s belongs to another model (%s, version %s); "
                        "rebuilding it", name, card.key, card.version)
            return None
        for file in needed:
            if file and not self.valid(file):
                log.warning("engine cache entry %s is damaged; rebuilding it", file)
                return None
        return card

    def write_card(self, card: ModelCard) -> Path:
        text = json.dumps(card.as_json(), indent=1, sort_keys=True)
        return self.put(self.card_name(card.key), lambda tmp: tmp.write_text(text, "utf-8"))
