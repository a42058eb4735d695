"""Building what workers serve: a model file in, a model card and an ONNX network out.

This is the only place (with ``webapp.checkpoints``' readers and the torch engine) that needs
torch, and it runs in a **short-lived child process** (``python -m webapp.engines.build``,
started by ``webapp.engines.child``) or in the training job runner, never in a web worker:
importing torch costs a worker ~900 MB and seconds of start-up.  What it leaves behind is
cached on disk (``webapp.engines.artefacts``), so the next worker, and the next start,
only read files.

What a build does, for one model file:

1. load and validate it (``load_checkpoint``: ``weights_only``, exact fit, a probe);
2. find the last spatial feature map (the layer Grad-CAM looks at) and check that the
   head is *global average pooling + one linear layer* (ResNet, EfficientNet(-Lite),
   DenseNet, RegNet, SqueezeNet...): then Grad-CAM equals CAM computed from that feature
   map and the head's weights, so the heatmap needs no gradients at request time; the
   head's weight and bias are stored beside the network;
3. export fp32 ONNX with two outputs, ``logits`` and ``features``;
4. check that the exported network gives torch's top-1 on real photos;
5. write the model card (labels, preprocessing, where the files are).

Static int8 and ``QUANTIZE=auto``'s choice are further steps on the fp32 ONNX; they need
no torch and live in ``webapp.engines.precision`` (the child runs them after the build).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import resource
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from webapp.checkpoints.labels import imagenet_labels
from webapp.checkpoints.load import load_checkpoint, load_imagenet_model
from webapp.checkpoints.loaded import LoadedModel, ModelLoadError
from webapp.engines import openset, precision, torch_engine
from webapp.engines.artefacts import ArtefactCache, EngineCacheError, ModelCard, model_key
from webapp.engines.calibration import calibration_arrays, calibration_files
from webapp.engines.compilation import attach, open_card
from webapp.engines.features import NoFeatureMap, WithFeatures, find_target_layer
from webapp.engines.precision import BuildError
from webapp.engines.settings import EngineSettings
from webapp.messages import Message, to_json

log = logging.getLogger(__name__)

CHECK_PHOTOS = 4  # real photos the exported network must answer like torch
UNSUPPORTED_PREFIXES = ("vit_", "swin_", "maxvit_")


# --------------------------------------------------------------------------- heatmap layer


def linear_head(module: nn.Module, layer: nn.Module, example: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The weight and bias of a head that is global average pooling + one linear layer
    after ``layer``, checked numerically: ``logits == W @ mean(features) + b`` on a real
    input.  ``BuildError`` says why not otherwise (an MLP or a LayerNorm in the head, a
    flatten of the whole map...).  The candidate is the last ``nn.Linear`` to run, or,
    for heads without one (SqueezeNet), the identity when the map has a channel per
    class.  Returns (weight, bias, the map's grid size)."""
    order: list[nn.Linear] = []
    handles = [m.register_forward_hook(lambda mod, a, o: order.append(mod))
               for m in module.modules() if isinstance(m, nn.Linear)]
    wrapped = WithFeatures(module, layer)
    try:
        with torch.inference_mode():
            logits, features = wrapped(torch.from_numpy(example))
    finally:
        for handle in handles:
            handle.remove()
    pooled = features.double().mean(dim=(2, 3))
    classes, channels = logits.shape[1], features.shape[1]
    if order:
        weight = order[-1].weight.detach().double()
        bias = (order[-1].bias.detach().double() if order[-1].bias is not None
                else torch.zeros(weight.shape[0], dtype=torch.float64))
    elif channels == classes:
        weight = torch.eye(classes, dtype=torch.float64)
        bias = torch.zeros(classes, dtype=torch.float64)
    else:
        raise BuildError(Message("its head has no linear layer"))
    expected = pooled @ weight.T + bias if tuple(weight.shape) == (classes, channels) else None
    scale = float(logits.abs().max()) or 1.0
    if expected is None or float((expected - logits.double()).abs().max()) > 1e-3 * scale:
        raise BuildError(Message("its head is more than global average pooling and one "
                                 "linear layer (heatmaps are computed from that layer's "
                                 "weights)"))
    return weight.float().numpy(), bias.float().numpy(), list(features.shape[2:])


# --------------------------------------------------------------------------- ONNX


def export_onnx(module: nn.Module, input_size: int, path: Path, layer=None) -> None:
    """fp32 ONNX with a dynamic batch dimension (torch's TorchScript-based exporter: it
    needs no extra package and handles every torchvision classifier); with ``layer``, a
    second output ``features``."""

    example = torch.zeros(1, 3, input_size, input_size)
    net = WithFeatures(module, layer) if layer is not None else module
    outputs = ["logits", "features"] if layer is not None else ["logits"]
    axes = {name: {0: "batch"} for name in ["input", *outputs]}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=outputs, dynamic_axes=axes)
    path.write_bytes(buf.getvalue())


def check_photos(input_size: int, mean, std) -> np.ndarray:
    """A small batch of real photos (the calibration set's first views), preprocessed."""
    files = calibration_files()[:CHECK_PHOTOS]
    return np.concatenate(calibration_arrays(files, input_size, mean, std, limit=10**6)[::6])


def check_agreement(module: nn.Module, onnx_path: Path, batch: np.ndarray, what: str) -> None:
    """The exported network gives torch's fp32 top-1 on every photo of ``batch``, or the
    model is refused (an export that silently changed the model must never serve)."""
    import onnxruntime as ort

    with torch.inference_mode():
        want = module(torch.from_numpy(batch)).argmax(1).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": batch})[0].argmax(1)
    if not np.array_equal(got, want):
        raise BuildError(Message("%(what)s: the converted network does not answer like the "
                                 "original (top-1 %(got)s vs %(want)s on real photos)",
                                 what=what, got=str(got.tolist()), want=str(want.tolist())))


def build_card(loaded: LoadedModel, key: str, cache: ArtefactCache, *,
               lock: bool = True) -> ModelCard:
    """Export ``loaded`` into the cache under ``key`` and write its card, under the
    card's lock (``lock=False``: the caller holds it -- the worker that started this
    child does, so that workers starting together build it once)."""
    started = time.perf_counter()
    with cache.lock(cache.card_name(key)) if lock else contextlib.nullcontext():
        card = cache.read_card(key, loaded.version)
        if card is not None:
            return card
        if loaded.module is None:  # an uploaded ONNX model: served as it is
            return _onnx_card(loaded, key, cache, started)
        module = loaded.module.eval()
        batch = check_photos(loaded.input_size, loaded.mean, loaded.std)
        layer_name, layer, cam_unavailable, head = None, None, None, None
        try:
            if loaded.arch.startswith(UNSUPPORTED_PREFIXES):
                raise BuildError(Message("%(arch)s is a transformer without a "
                                         "convolutional feature map", arch=loaded.arch))
            layer_name, layer = find_target_layer(module, loaded.input_size)
            head = linear_head(module, layer, batch[:1])
        except (BuildError, NoFeatureMap) as exc:
            cam_unavailable = exc.args[0]
            layer = None
            log.info("no heatmaps for %s: %s", loaded.name, exc)
        onnx_name = f"{key}.fp32.onnx"
        cache.put(onnx_name, lambda tmp: export_onnx(module, loaded.input_size, tmp, layer))
        check_agreement(module, cache.path(onnx_name), batch, loaded.name)
        cam = None
        if head is not None:
            head_name = f"{key}.head.npz"

            def write_head(tmp: Path) -> None:
                with open(tmp, "wb") as fh:
                    np.savez(fh, weight=head[0], bias=head[1])

            cache.put(head_name, write_head)
            cam = {"layer": layer_name, "grid": head[2], "head": head_name}
        guard = None
        if loaded.guard is not None:  # the model's own validation images (QUANTIZE=auto)
            guard = f"{key}.guard.npy"
            cache.put(guard, lambda tmp: np.save(open(tmp, "wb"), loaded.guard))
        card = _card(loaded, key, onnx_name, started, cam=cam, cam_unavailable=cam_unavailable,
                     guard=guard, openset=open_set(loaded, key, cache, head))
        cache.write_card(card)
        return card


def open_set(loaded: LoadedModel, key: str, cache: ArtefactCache,
             head) -> dict | None:
    """The model's "I'm not sure" criterion for its card (``webapp.scores``):
    a trained model's ``knn`` entry, its bank copied into the cache as ``<key>.openset.npy``;
    for an ImageNet model, the ``max_logit`` criterion measured now.  Both need the feature
    output (a pooling + linear head: ``head``); None otherwise, and the model never answers
    "unknown"."""
    if head is None:
        return None
    entry = loaded.openset
    if entry is not None:
        bank = np.asarray(entry["bank"], dtype=np.float16)
        if bank.shape[1] != head[0].shape[1]:
            log.warning("%s: its open-set bank has %d features, its network %d: not used",
                        loaded.name, bank.shape[1], head[0].shape[1])
            return None
        name = f"{key}.openset.npy"
        cache.put(name, lambda tmp: np.save(open(tmp, "wb"), bank))
        return {**{k: v for k, v in entry.items() if k != "bank"}, "file": name,
                "bank_size": int(len(bank))}
    if list(loaded.labels) == imagenet_labels():
        return openset.imagenet_criterion(loaded.module, head[:2], loaded.input_size,
                                          loaded.mean, loaded.std)
    return None


def _card(loaded, key: str, onnx_name: str, started: float, **extra) -> ModelCard:
    return ModelCard(
        key=key, name=loaded.name, arch=loaded.arch, labels=list(loaded.labels),
        version=loaded.version, source=loaded.source, source_kind=loaded.source_kind,
        input_size=loaded.input_size, mean=tuple(loaded.mean), std=tuple(loaded.std),
        verified=loaded.verified, notice=loaded.notice, metrics=_jsonable(loaded.metrics),
        created=loaded.created, onnx=onnx_name, kind=loaded.kind, outputs=loaded.outputs,
        found=_jsonable(loaded.details), summary=loaded.summary(),
        build_seconds=round(time.perf_counter() - started, 3), **extra)


def _onnx_card(loaded, key: str, cache: ArtefactCache, started: float) -> ModelCard:
    """An uploaded ONNX classifier (checked by ``webapp.checkpoints.onnx_model``): the file
    goes into the cache as it is; the engines read its first input and output, take the
    log of probabilities and feed a fixed-batch model one image at a time."""
    onnx_name = f"{key}.fp32.onnx"
    if loaded.onnx_bytes is not None:  # its data file read in, its input adapted
        cache.put(onnx_name, lambda tmp: tmp.write_bytes(loaded.onnx_bytes))
    else:
        cache.put(onnx_name, lambda tmp: shutil.copyfile(loaded.onnx_path, tmp))
    card = _card(loaded, key, onnx_name, started, batch=loaded.details.get("batch", "any"),
                 cam_unavailable=Message(
                     "heatmaps are not available for uploaded ONNX models (the heatmap needs "
                     "the network's layers, which an ONNX file does not expose here); "
                     "predictions work as usual"))
    cache.write_card(card)
    return card


def weights_key(loaded: LoadedModel) -> str:
    """A cache key from the weights themselves (names, dtypes, shapes, bytes) and the
    preprocessing, for a model that exists only in memory (tests, benchmarks)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(loaded.module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.view(torch.int16)
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    return model_key(digest.hexdigest(), {"labels": list(loaded.labels),
                                          "input_size": loaded.input_size,
                                          "mean": list(loaded.mean), "std": list(loaded.std)})


def serve_loaded(loaded: LoadedModel, settings) -> tuple[ModelCard, object]:
    """A model that exists only in memory (benchmarks, tests) served the way a worker
    serves a file: its card built into ``settings``' cache, then the configured engine
    and precision.  Returns ``(card, engine)``."""
    card = build_card(loaded, weights_key(loaded), settings.cache)
    if settings.engine == "torch":
        card, engine = torch_engine.serve_module(card, loaded, settings)
        attach(engine, card, settings.cache)
        return card, engine
    if settings.builds_int8:
        precision.int8_or_reason(card, settings.cache, settings.calibration_dir or None)
        return open_card(card, settings, "int8")
    return open_card(card, settings, "bf16" if settings.quantize == "bf16" else "fp32")


def _jsonable(value):
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return {}


# --------------------------------------------------------------------------- the child


def _address_space() -> int:
    """This process's address space now, in bytes."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * resource.getpagesize()


def _cap_memory(megabytes: int) -> None:
    """Let this process grow by at most ``megabytes`` of address space from now on (torch
    is imported already: its libraries alone map a few GB that are never touched).  The
    soft limit only: once the file is read and validated, ``_allow_conversion`` raises it
    for the conversion (the code that runs then is ours, not the file's)."""
    limit = _address_space() + megabytes * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))


# What converting a validated model may take beyond its weights (the ONNX export, ONNX
# Runtime's check, static int8 calibration, OpenVINO compiling each precision trial):
# bench/builder_memory.py measured the builder's growth of address space with QUANTIZE=auto
# at 1.7 GB (ResNet18) to 3.2 GB (ConvNeXt-Tiny), EfficientNet-B0 2.0 GB (docs/speed.md),
# where the cap used to be 1.5 GB + 6x the file (1.6 GB for EfficientNet-B0: ONNX
# Runtime's bad_alloc).  6 GB + 8x the weights: ConvNeXt-Tiny gets 6.9 GB, over 2x.
CONVERSION_MB = 6144


def _allow_conversion(loaded: LoadedModel | None, started_at: int) -> None:
    """Raise the soft memory cap, once a file is read and validated (or was converted
    before: ``loaded`` None), to what converting a model of its size needs
    (``CONVERSION_MB``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return
    weights = 0
    if loaded is None:
        pass
    elif loaded.module is not None:
        weights = sum(t.numel() * t.element_size() for t in loaded.module.state_dict().values())
    elif loaded.onnx_bytes is not None:
        weights = len(loaded.onnx_bytes)
    limit = started_at + (CONVERSION_MB + 8 * weights // 2**20) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (max(soft, limit), hard))


def memory_used(started_at: int) -> dict:
    """The most address space and memory (RSS) this process has used, in MB, and its
    address space's growth since ``started_at`` (what the cap limits)."""
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmPeak", "VmHWM"):
                fields[key] = int(value.split()[0]) // 1024
    return {"peak_address_space_mb": fields.get("VmPeak"), "peak_rss_mb": fields.get("VmHWM"),
            "growth_mb": fields.get("VmPeak", 0) - started_at // 2**20}


def check_expansion(path: str, memory_mb: int, what: str) -> None:
    """A zip file (torch's format) whose records would expand beyond this child's memory
    cap is refused from its central directory, before anything is decompressed."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load says what is wrong with it
    if expanded > memory_mb * 2**20 // 2:
        size = os.path.getsize(path) / 2**20
        raise BuildError(Message(
            "%(what)s: its contents would expand to %(expanded)s MB in memory from %(size)s "
            "MB on disk (over this server's limit for a file this size); it was refused "
            "before anything was unpacked", what=what, expanded=f"{expanded / 2**20:,.0f}",
            size=f"{size:,.1f}"))


def _load(args) -> LoadedModel:
    if args.command == "builtin":
        return load_imagenet_model(args.weights or None,
                                                allow_download=args.allow_download)
    given = json.loads((sys.stdin.read() if args.given == "-" else args.given) or "{}")
    label = _label(args.label)
    if args.memory_mb:
        check_expansion(args.file, args.memory_mb, label or args.file)
    return load_checkpoint(
        args.file, source_kind="registry", label=label or None,
        version=args.sha256 or None, **given)


def _label(text: str):
    """``--label``: what names the file in messages, as ``to_json`` wrote it (a message
    the web worker shows in its reader's language), or plain text."""
    try:
        return Message.from_json(json.loads(text)) if text.startswith(("{", '"')) else text
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> int:
    """The child process: build one model's card (and int8 network) and print the card as
    JSON; on failure print ``{"error": message}`` and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m webapp.engines.build")
    sub = parser.add_subparsers(dest="command", required=True)
    builtin = sub.add_parser("builtin", help="the built-in ImageNet model")
    builtin.add_argument("--weights", default="")
    builtin.add_argument("--allow-download", action="store_true")
    checkpoint = sub.add_parser("checkpoint", help="an uploaded or stored checkpoint")
    checkpoint.add_argument("file")
    checkpoint.add_argument("--given", default="{}", help="JSON: what the uploader said "
                            "(- : read it from stdin)")
    checkpoint.add_argument("--label", default="",
                            help="what names the file in messages (text, or a message as "
                            "JSON)")
    checkpoint.add_argument("--sha256", default="")
    checkpoint.add_argument("--memory-mb", type=int, default=0)
    for command in (builtin, checkpoint):
        command.add_argument("--key", required=True)
        command.add_argument("--cache", required=True)
        command.add_argument("--int8", action="store_true")
        command.add_argument("--calibration-dir", default="")
        command.add_argument("--decide", default="", metavar="SETTINGS_JSON",
                             help="QUANTIZE=auto: decide the precision for these engine "
                             "settings (webapp.engines.EngineSettings as JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    started_at = _address_space()
    if getattr(args, "memory_mb", 0):
        _cap_memory(args.memory_mb)
    cache = ArtefactCache(args.cache)
    try:
        card = cache.read_card(args.key, (getattr(args, "sha256", "") or "")[:12] or None)
        if card is None:
            loaded = _load(args)
            _allow_conversion(loaded, started_at)
            card = build_card(loaded, args.key, cache, lock=False)
        else:  # converted before: the precision steps only
            _allow_conversion(None, started_at)
        result = {"card": card.as_json()}
        if args.int8:
            result["int8"] = precision.int8_or_reason(card, cache,
                                                      args.calibration_dir or None)
        if args.decide:
            settings = EngineSettings(**json.loads(args.decide))
            result["decision"] = precision.decide(card, cache, settings)
        result["memory"] = memory_used(started_at)
    except EngineCacheError as exc:
        print(json.dumps({"error": "cache", "errno": exc.errno, "reason": exc.why}))
        return 2
    except OSError as exc:  # writing the cache: full, read-only, no permission
        if exc.errno not in EngineCacheError.WRITE_ERRORS:
            raise
        print(json.dumps({"error": "cache", "errno": exc.errno, "reason": exc.strerror}))
        return 2
    except ModelLoadError as exc:
        if "allocate" in str(exc) and getattr(args, "memory_mb", 0):
            print(json.dumps({"error": "memory", "limit_mb": args.memory_mb}))
        else:
            print(json.dumps({"error": to_json(exc.args[0])}))
        return 2
    except MemoryError:
        print(json.dumps({"error": "memory", "limit_mb": getattr(args, "memory_mb", 0)}))
        return 2
    except RuntimeError as exc:  # torch's allocator under the memory cap
        if "alloc" not in str(exc).lower():
            raise
        print(json.dumps({"error": "memory", "limit_mb": getattr(args, "memory_mb", 0)}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
