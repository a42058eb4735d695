"""The nouns every step of loading shares: the error a person reads
(``ModelLoadError``), what a file holds before anything is built (``Contents``) and the
validated model (``LoadedModel``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from webapp.checkpoints.preprocess import CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD
from webapp.messages import Message, MessageList

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

    def summary(self) -> Message:
        """One sentence on what was found where (``summary``)."""
        return summary(self.metadata())


def summary(facts: dict) -> Message:
    """One sentence on what was found where in a model file, e.g. "resnet34 (detected
    from the weights), 5 classes from the labels file, weights under 'model_state_dict'",
    from a model's stored facts (``LoadedModel.metadata``, the registry's entry): a
    ``MessageList``, so the admin page says it in the reader's language."""
    d = facts.get("found") or {}
    kind = facts.get("kind", "pytorch")
    count = facts.get("num_classes") or len(facts.get("classes") or ())
    if kind == "onnx":
        parts = [Message("an ONNX model")]
    elif d.get("arch_from") == "detected":
        parts = [Message("%(arch)s (detected from the weights)", arch=facts.get("arch"))]
    elif d.get("arch_from") == "the file":
        parts = [Message("%(arch)s (named in the file)", arch=facts.get("arch"))]
    else:
        parts = [str(facts.get("arch", ""))]
    parts.append(Message("%(count)s classes from %(source)s", count=count,
                         source=_phrase(d["classes_from"])) if d.get("classes_from") else
                 Message("%(count)s classes", count=count))
    if d.get("container"):
        parts.append(Message("weights under %(key)s", key=repr(d["container"])))
    if d.get("ema"):
        parts.append(Message("the EMA weights under %(key)s (send ema=no for the trained "
                             "weights)", key=repr(d["ema"])))
    if d.get("layout"):
        parts.append(Message("%(layout)s key names mapped to torchvision's",
                             layout=d["layout"]))
    if d.get("prefix"):
        parts.append(Message("key prefix %(prefix)s removed", prefix=repr(d["prefix"])))
    if d.get("dequantized"):
        parts.append(Message("the int8 weights of %(layers)s dequantized to fp32 (dynamic "
                             "quantization)", layers=d["dequantized"]))
    if d.get("head"):
        parts.append(Message("head %(head)s built from its keys (ReLU where no weights say "
                             "which activation: send activation=gelu if it was GELU)",
                             head=d["head"]) if d.get("head_activation") else
                     Message("head %(head)s built from its keys", head=d["head"]))
    if kind == "safetensors":
        parts.append("safetensors")
    if facts.get("outputs") == "probabilities":
        parts.append(Message("it outputs probabilities"))
    if d.get("input"):
        parts.append(Message("it takes %(input)s", input=_phrase(d["input"])))
    if d.get("external_data"):
        parts.append(Message("weights read from %(files)s", files=d["external_data"]))
    return MessageList(parts, Message(", "))  # between the parts of a sentence


# Where class names were found, as stored (English text): said again in the reader's
# language when the catalog has the phrase.
_QUOTED_PHRASES = (Message("the file's %(key)s", key=""), Message("the model's %(key)s", key=""),
                   Message("the labels file (read as %(encoding)s)", encoding=""))


def _phrase(value) -> str:
    """A phrase stored as English text (a ``found`` value) -> a ``Message`` that shows
    it in the reader's language (the text as it is when the catalog lacks it)."""
    if isinstance(value, Message) or not isinstance(value, str):
        return value
    for pattern in _QUOTED_PHRASES:
        before, _, after = pattern.msgid.partition("%(")
        name, _, after = after.partition(")s")
        if value.startswith(before) and value.endswith(after) and len(value) > len(before):
            return Message(pattern.msgid, **{name: value[len(before):len(value) - len(after)
                                                         or None]})
    return Message(value)
