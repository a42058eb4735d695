"""The model files' command line (``python -m model_loader --help``: ``download``, ``info``,
``convert``) and their public face for scripts: ``load_imagenet_model``,
``load_checkpoint``, ``save_checkpoint``, ``LoadedModel``, ``ModelLoadError`` and the
names in ``__all__``.  The work is done in ``webapp.checkpoints`` (``load.py``: which
files are accepted and where the built-in model's weights come from), which the server
imports directly.  Knows nothing about Flask, and imports no torch until a model is loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from webapp import config
from webapp.checkpoints.architectures import ARCHITECTURES, build_model, signature, supported_archs
from webapp.checkpoints.files import (
    read_weights_file,
    sha256_file,
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
from webapp.checkpoints.load import load_checkpoint, load_imagenet_model
from webapp.checkpoints.loaded import CHECKPOINT_FORMAT, LoadedModel, ModelLoadError
from webapp.checkpoints.preprocess import (
    CROP_RATIO,
    IMAGENET_MEAN,
    IMAGENET_STD,
    preprocess_array,
)
from webapp.checkpoints.v1 import save_checkpoint

# What scripts and the tests use as ``model_loader.X`` (the server imports each name
# from where it lives in ``webapp.checkpoints``).
__all__ = [
    "ARCHITECTURES", "CHECKPOINT_FORMAT", "CROP_RATIO", "DOWNLOAD_TIMEOUT", "IMAGENET_MEAN",
    "IMAGENET_STD", "NO_WEIGHTS_MESSAGE", "LoadedModel", "ModelLoadError",
    "build_model", "cache_path", "download_resnet18", "imagenet_labels",
    "imagenet_weights_file", "load_bundled", "load_checkpoint", "load_imagenet_model",
    "main", "parse_classes_field", "parse_labels_file",
    "preprocess_array", "read_weights_file", "save_checkpoint", "sha256_file", "signature",
    "supported_archs", "torch_hub_dir",
]




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
