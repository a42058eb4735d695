"""The nouns every step of loading shares: the error a person reads
(``ModelLoadError``), what a file holds before anything is built (``Contents``) and the
validated model (``LoadedModel``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from webapp.checkpoints.preprocess import CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:  # torch is imported where it is used: web workers never load it
    from torch import nn

# The format this project writes (``webapp.checkpoints.v1``); named here because the
# readers of other layouts mention it in their errors.
CHECKPOINT_FORMAT = "webapp-checkpoint/1"


class ModelLoadError(RuntimeError):
    """A weights or checkpoint file cannot be served; the message says why."""


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
    extras: dict = field(default_factory=dict)  # optional v1 entries (``v1.V1_EXTRAS``)


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
    onnx_path: Path | None = None  # kind "onnx": the model file uploaded
    onnx_bytes: bytes | None = None  # the network served when it is not that file as it is
    outputs: str = "logits"  # or "probabilities" (an ONNX model that ends in a softmax)
    details: dict = field(default_factory=dict)  # where arch, classes... were found
    guard: np.ndarray | None = None  # the model's own validation images (``v1.V1_EXTRAS``)
    openset: dict | None = None  # its "I'm not sure" criterion (``v1.openset_entry``)

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
        if d.get("ema"):
            parts.append(f"the EMA weights under {d['ema']!r} (send ema=no for the "
                         "trained weights)")
        if d.get("layout"):
            parts.append(f"{d['layout']} key names mapped to torchvision's")
        if d.get("prefix"):
            parts.append(f"key prefix {d['prefix']!r} removed")
        if d.get("dequantized"):
            parts.append(f"the int8 weights of {d['dequantized']} dequantized to fp32 "
                         "(dynamic quantization)")
        if d.get("head"):
            parts.append(f"head {d['head']} built from its keys" + (
                " (ReLU where no weights say which activation: send activation=gelu if it "
                "was GELU)" if d.get("head_activation") else ""))
        if self.kind == "safetensors":
            parts.append("safetensors")
        if self.outputs == "probabilities":
            parts.append("it outputs probabilities")
        if d.get("input"):
            parts.append(f"it takes {d['input']}")
        if d.get("external_data"):
            parts.append(f"weights read from {d['external_data']}")
        return ", ".join(parts)
