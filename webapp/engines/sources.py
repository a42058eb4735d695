"""Where a model comes from, before anything is loaded: the built-in ImageNet model's
weights file (``builtin_source``) or a stored or uploaded checkpoint
(``checkpoint_source``), as a ``ModelSource``; its ``key`` names its entries in the
engine cache (``artefacts.model_key``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from webapp.checkpoints.files import sha256_file
from webapp.checkpoints.imagenet import NO_WEIGHTS_MESSAGE, imagenet_weights_file
from webapp.checkpoints.loaded import ModelLoadError
from webapp.engines import child
from webapp.engines.artefacts import model_key
from webapp.messages import Message


@dataclass(frozen=True)
class ModelSource:
    """A model file and what is known about it, before anything is loaded.

    ``kind``: ``builtin`` (the ImageNet model: ``file`` is the weights file the sources
    order picked, ``weights`` the MODEL_WEIGHTS setting) or ``checkpoint`` (a stored or
    uploaded file; ``given``: what the uploader said, passed to
    ``load_checkpoint``)."""

    kind: str
    file: str
    sha256: str
    given: dict = field(default_factory=dict)
    weights: str = ""
    label: str = ""
    name: str | None = None
    untrusted: bool = False  # an upload: opened under memory and time caps
    cache_key: str | None = None  # the key its card was made under (a stored model)

    @property
    def key(self) -> str:
        if self.cache_key:
            return self.cache_key
        given = dict(self.given)
        if self.kind == "builtin":
            given["builtin"] = self.weights or "sources"
        return model_key(self.sha256, given)


def builtin_source(config: dict) -> ModelSource:
    """The built-in model's weights file, in the order ``webapp.checkpoints.load`` documents,
    without loading it (a download, when allowed and needed, runs in a child first)."""
    weights = config.get("MODEL_WEIGHTS") or ""
    path, kind = imagenet_weights_file(weights or None)
    if kind == "bundled" and config.get("ALLOW_DOWNLOAD"):
        child.run_download()
        path, kind = imagenet_weights_file(None)
    if path is None:
        raise ModelLoadError(NO_WEIGHTS_MESSAGE)
    if not Path(path).is_file():
        raise ModelLoadError(Message("%(what)s: no such file", what=str(path)))
    return ModelSource("builtin", str(path), sha256_file(path), weights=weights)


def checkpoint_source(path, sha256: str | None = None, *, given: dict | None = None,
                      label: str = "", name: str | None = None, untrusted: bool = False,
                      key: str | None = None) -> ModelSource:
    return ModelSource("checkpoint", str(path), sha256 or sha256_file(path),
                       given=dict(given or {}), label=label, name=name, untrusted=untrusted,
                       cache_key=key)
