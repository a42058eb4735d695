"""This project's checkpoint format v1: one ``torch.save`` dict with the weights, the
class names, the architecture and the preprocessing, plus optional extras the server
uses (``V1_EXTRAS``).  Written by fine-tuning and ``python -m model_loader convert``,
read strictly."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from webapp.checkpoints.architectures import supported_archs
from webapp.checkpoints.labels import class_names
from webapp.checkpoints.layouts import is_state_dict, strip_prefixes
from webapp.checkpoints.loaded import CHECKPOINT_FORMAT, Contents, ModelLoadError
from webapp.checkpoints.preprocess import IMAGENET_MEAN, IMAGENET_STD
from webapp.messages import Message

if TYPE_CHECKING:  # torch is imported where it is used: web workers never load it
    from torch import nn


# Optional entries of a v1 checkpoint that the server uses beyond the weights:
# ``guard``: a few of the model's own validation images, uint8 (N, 3, S, S) crops at its
# input size, on which QUANTIZE=auto checks that int8 answers like fp32;
# ``openset``: when the model says "I'm not sure what this is" (webapp/scores.py):
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
        raise ModelLoadError(Message(
            "%(what)s: 'guard' must be up to %(limit)s uint8 images of shape (3, %(size)s, "
            "%(size)s); it is not", what=what, limit=MAX_GUARD_IMAGES, size=input_size))
    return value.numpy().copy()


def openset_entry(value, what: str) -> dict:
    """A v1 checkpoint's ``openset`` entry with its bank as a float32 NumPy array, or
    ``ModelLoadError`` saying what is wrong with it."""
    import math

    import torch

    def bad(reason: Message) -> ModelLoadError:
        return ModelLoadError(Message("%(what)s: %(reason)s", what=what, reason=reason))

    if not isinstance(value, dict) or value.get("method") != "knn":
        raise bad(Message("'openset' must be a dict with \"method\": \"knn\""))
    bank = value.get("bank")
    if not isinstance(bank, torch.Tensor) or not bank.is_floating_point() or bank.dim() != 2 \
            or not 1 <= bank.shape[0] <= MAX_OPENSET_BANK or bank.shape[1] < 1:
        raise bad(Message("'openset' must hold a 'bank' of 1 to %(limit)s float feature rows",
                          limit=MAX_OPENSET_BANK))
    k, threshold = value.get("k"), value.get("threshold")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= bank.shape[0]:
        raise bad(Message("'openset' needs 'k', a whole number from 1 to the bank's size"))
    if not isinstance(threshold, int | float) or not math.isfinite(threshold) \
            or not 0 <= threshold <= 2:
        raise bad(Message("'openset' needs 'threshold', a distance from 0 to 2"))
    entry = {key: item for key, item in value.items()
             if key != "bank" and isinstance(item, str | int | float | bool)}
    entry["bank"] = bank.float().numpy().copy()
    return entry


def is_v1(obj: object) -> bool:
    """A dict that names a format is read as this project's, strictly (an unknown format
    is an error, not a guess)."""
    return isinstance(obj, dict) and "format" in obj


def read_v1(obj: dict, what: str) -> Contents:
    """A checkpoint in this project's format v1 (``save_checkpoint``), checked strictly."""
    if obj.get("format") != CHECKPOINT_FORMAT:
        raise ModelLoadError(Message(
            "%(what)s: unknown checkpoint format %(format)s (this server reads %(known)s)",
            what=what, format=repr(obj.get("format")), known=repr(CHECKPOINT_FORMAT)))
    arch = obj.get("arch")
    if not isinstance(arch, str) or arch not in supported_archs():
        raise ModelLoadError(Message("%(what)s: unsupported or missing 'arch' %(arch)s",
                                     what=what, arch=repr(arch)))
    classes = obj.get("classes")
    if not isinstance(classes, list):
        raise ModelLoadError(Message("%(what)s: 'classes' must be a list of at least two "
                                     "names", what=what))
    state_dict = obj.get("state_dict")
    if not is_state_dict(state_dict):
        raise ModelLoadError(Message("%(what)s: 'state_dict' is missing or not a dict of "
                                     "tensors", what=what))
    state_dict, prefix = strip_prefixes(state_dict)
    return Contents(
        state_dict, class_names(classes, Message("the checkpoint's 'classes'"), what), arch,
        obj.get("input_size"), obj.get("mean"), obj.get("std"),
        obj["metrics"] if isinstance(obj.get("metrics"), dict) else {},
        obj["created"] if isinstance(obj.get("created"), str) else None,
        {"format": CHECKPOINT_FORMAT, "classes_from": Message("the checkpoint"),
         "prefix": prefix},
        {key: obj[key] for key in V1_EXTRAS if obj.get(key) is not None})


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
