"""Inference engines behind ``model_loader.quantize``: how a loaded fp32 model is turned
into the callable that serves predictions.  Knows nothing about Flask.

ENGINE × QUANTIZE:

=============  ==========================  =========================================
ENGINE         QUANTIZE=none               QUANTIZE=static (int8)
=============  ==========================  =========================================
torch          fp32 eager                  FX graph mode, x86 backend, calibrated; the
                                           published ResNet18 uses torchvision's
                                           pre-quantized weights when they are cached
onnxruntime    ONNX fp32                   ONNX QDQ int8, calibrated (ORT quantizer)
openvino       ONNX fp32 read by OpenVINO  the same QDQ int8 ONNX, compiled by OpenVINO
=============  ==========================  =========================================

``QUANTIZE=dynamic`` (int8 weights for ``nn.Linear`` only) exists for the torch engine;
``QUANTIZE=bf16`` for OpenVINO: the fp32 ONNX model computed in bfloat16 where the CPU
does that natively (AVX512-BF16, AMX), in fp32 elsewhere.

Calibration (static int8) runs the fp32 model on a representative set: the photos in
``calibration/`` that ship with the project (public-domain/CC images, see its README) or
the images in ``CALIBRATION_DIR``, each seen as several deterministic views (crops,
flips, scales), preprocessed with the model's own size, mean and std.

Converted artefacts (ONNX files, quantized state_dicts) are cached in a directory keyed
by the sha256 of the weights, the model's preprocessing, the calibration set and the
library versions.  Every entry has a ``.sha256`` sidecar: an entry whose bytes do not
match is rebuilt, never trusted.  Builders hold a file lock, so several workers starting
together build an entry once.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import io
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

ENGINES = ("torch", "openvino", "onnxruntime")
QUANTIZE_MODES = ("none", "bf16", "dynamic", "static")
CACHE_FORMAT = "2"  # bump when the artefacts' recipe changes: old entries are not reused
CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_CALIBRATION_SAMPLES = 96
TORCH_CALIBRATION_SAMPLES = 32  # torch's histogram observers are slow
PREQUANTIZED_RESNET18 = "resnet18_fbgemm_16fa66dd.pth"  # ResNet18_QuantizedWeights file
PUBLISHED_RESNET18_SHA256_PREFIX = "f37072fd"  # resnet18-f37072fd.pth


class EngineError(RuntimeError):
    """An engine cannot be built for this model; the message says why."""


def check_combination(engine: str, mode: str) -> None:
    if engine not in ENGINES:
        raise EngineError(f"ENGINE={engine!r} is not supported; use one of {', '.join(ENGINES)}")
    if mode not in QUANTIZE_MODES:
        raise EngineError(
            f"QUANTIZE={mode!r} is not supported; use one of {', '.join(QUANTIZE_MODES)}"
        )
    if mode == "dynamic" and engine != "torch":
        raise EngineError(
            f"QUANTIZE=dynamic is torch's dynamic quantization and needs ENGINE=torch "
            f"(ENGINE={engine} runs QUANTIZE=none or static)"
        )
    if mode == "bf16" and engine != "openvino":
        raise EngineError(
            f"QUANTIZE=bf16 needs ENGINE=openvino (ENGINE={engine} runs QUANTIZE=none, "
            "static" + (" or dynamic)" if engine == "torch" else ")")
        )


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "offline-classifier" / "engines"


@dataclass
class Built:
    """What ``build`` returns: the serving callable and a description of it."""

    engine: Callable[[torch.Tensor], torch.Tensor]
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- hashing


def weights_sha256(module: nn.Module) -> str:
    """sha256 of the weights themselves (names, dtypes, shapes, bytes), so the same
    weights give the same key wherever they were loaded from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.view(torch.int16)
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _versions(engine: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"fmt{CACHE_FORMAT}", f"torch{torch.__version__}"]
    if engine in ("onnxruntime", "openvino"):  # the exporter and the quantizer
        for package in ("onnx", "onnxruntime"):
            try:  # without importing them: a worker that serves OpenVINO never loads ORT
                parts.append(f"{package}{version(package)}")
            except PackageNotFoundError:
                parts.append(f"{package}-missing")
    return "-".join(parts)


# --------------------------------------------------------------------------- the cache


class ArtefactCache:
    """Files in one directory, each written atomically with a sha256 sidecar."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _valid(self, path: Path) -> bool:
        sidecar = path.with_name(path.name + ".sha256")
        try:
            return path.is_file() and sidecar.read_text().strip() == _sha256_file(path)
        except OSError:
            return False

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{name}.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def discard(self, name: str) -> None:
        for path in (self.root / name, self.root / f"{name}.sha256"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def get(self, name: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """(path of the entry, True if it was reused); ``build(tmp_path)`` writes it."""
        path = self.root / name
        if self._valid(path):
            return path, True
        with self._lock(name):
            if self._valid(path):  # another worker built it while we waited
                return path, True
            if path.exists():
                log.warning("engine cache entry %s is damaged; rebuilding it", path)
            tmp = self.root / f".{name}.tmp-{os.getpid()}-{threading.get_ident()}"
            try:
                build(tmp)
                digest = _sha256_file(tmp)
                sidecar_tmp = tmp.with_name(tmp.name + ".sha256")
                sidecar_tmp.write_text(digest + "\n")
                os.replace(tmp, path)
                os.replace(sidecar_tmp, path.with_name(path.name + ".sha256"))
            finally:
                for leftover in (tmp, tmp.with_name(tmp.name + ".sha256")):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
        return path, False


# --------------------------------------------------------------------------- calibration


def calibration_files(directory: str | os.PathLike | None = None) -> list[Path]:
    root = Path(directory) if directory else CALIBRATION_DIR
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EngineError(f"no calibration images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return files


def calibration_digest(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"|" + _sha256_file(path).encode())
    return digest.hexdigest()


def _views(img, input_size: int) -> list:
    """Deterministic views of one photo, as a server would see it: whole, mirrored,
    zoomed into the centre and into each corner."""
    from PIL import ImageOps

    width, height = img.size
    views = [img, ImageOps.mirror(img)]
    for frac in (0.7, 0.5):
        w, h = int(width * frac), int(height * frac)
        if min(w, h) < input_size // 2:
            continue
        boxes = [((width - w) // 2, (height - h) // 2)]
        if frac == 0.7:
            boxes += [(0, 0), (width - w, height - h)]
        views += [img.crop((x, y, x + w, y + h)) for x, y in boxes]
    return views


def calibration_tensors(
    files: list[Path], input_size: int, mean, std, limit: int = MAX_CALIBRATION_SAMPLES,
) -> list[torch.Tensor]:
    """Preprocessed (1, 3, S, S) tensors of the calibration set, the server's transform."""
    from PIL import Image

    from model_loader import CROP_RATIO, preprocess_array

    resize = round(input_size / CROP_RATIO)
    tensors = []
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except Exception as exc:
            log.warning("calibration image %s skipped: %s", path, exc)
            continue
        for view in _views(img, input_size):
            tensors.append(torch.from_numpy(
                preprocess_array(view, resize, input_size, mean, std)).unsqueeze(0))
    if not tensors:
        raise EngineError("none of the calibration images could be read")
    step = max(1, len(tensors) // limit)
    return tensors[::step][:limit]


# --------------------------------------------------------------------------- torch


def _torch_static_fx(module: nn.Module, input_size: int) -> nn.Module:
    """An FX-prepared copy of ``module`` (observers in place, not calibrated yet)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = "x86"
    example = (torch.zeros(1, 3, input_size, input_size),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_fx(copy.deepcopy(module).eval(), get_default_qconfig_mapping("x86"),
                          example)


def _convert_fx(prepared: nn.Module) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared).eval()


def prequantized_resnet18_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / PREQUANTIZED_RESNET18


def load_prequantized_resnet18(path: str | os.PathLike) -> nn.Module:
    """torchvision's ``ResNet18_QuantizedWeights.IMAGENET1K_FBGEMM_V1`` from a file.

    torchvision's own loader unpickles with ``weights_only=False``; this builds the same
    quantized architecture and reads the file with ``weights_only=True``."""
    from torchvision.models import quantization as tvq

    torch.backends.quantized.engine = "fbgemm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tvq.resnet18(weights=None, quantize=True)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict)
    return model.eval()


def _is_published_resnet18(loaded) -> bool:
    return loaded.arch == "resnet18" and loaded.num_classes == 1000 and str(
        loaded.version
    ).startswith(PUBLISHED_RESNET18_SHA256_PREFIX)


def _build_torch(loaded, mode: str, cache: ArtefactCache, key: str, calib) -> Built:
    module = loaded.module
    if mode == "none":
        return Built(module, {"precision": "fp32"})
    if mode == "dynamic":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao deprecation notices
            dynamic = torch.ao.quantization.quantize_dynamic(
                module, {nn.Linear}, dtype=torch.qint8
            )
        return Built(dynamic.eval(), {"precision": "int8 Linear weights, fp32 convolutions"})

    prequantized = prequantized_resnet18_path()
    if _is_published_resnet18(loaded) and prequantized.is_file():
        try:
            model = load_prequantized_resnet18(prequantized)
            return Built(model, {"precision": "int8",
                                 "calibration": f"torchvision pre-quantized ({prequantized})"})
        except Exception as exc:  # a damaged file: calibrate instead
            log.warning("ignoring %s (%s); calibrating instead", prequantized, exc)

    # FX graph mode, x86 backend.  The cache keeps the calibrated observers' statistics
    # (plain tensors, read back with weights_only=True); converting from them is cheap and
    # gives the same int8 model.
    files, digest = calib
    name = f"{key}-{digest[:16]}-torch{torch.__version__}-x86-observers.pt"

    def build(tmp: Path) -> None:
        prepared = _torch_static_fx(module, loaded.input_size)
        tensors = calibration_tensors(files, loaded.input_size, loaded.mean, loaded.std,
                                      limit=TORCH_CALIBRATION_SAMPLES)
        with torch.no_grad():
            for tensor in tensors:
                prepared(tensor)
        torch.save(_observer_state(prepared), tmp)

    def restore(path: Path) -> nn.Module:
        prepared = _torch_static_fx(module, loaded.input_size)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if set(state) != set(_observer_state(prepared)):
            raise EngineError("the observers do not match this model")
        prepared.load_state_dict(state, strict=False)
        return _convert_fx(prepared)

    path, reused = cache.get(name, build)
    try:
        quantized = restore(path)
    except Exception as exc:
        log.warning("engine cache entry %s does not load (%s); rebuilding it", path, exc)
        cache.discard(name)
        path, reused = cache.get(name, build)
        quantized = restore(path)
    return Built(quantized, {"precision": "int8", "artefact": str(path), "reused": reused})


def _observer_state(prepared: nn.Module) -> dict:
    return {k: v for k, v in prepared.state_dict().items() if "activation_post_process" in k}


# --------------------------------------------------------------------------- ONNX


def export_onnx(module: nn.Module, input_size: int, path: Path) -> None:
    """fp32 ONNX with a dynamic batch dimension (torch's TorchScript-based exporter: it
    needs no extra package and handles every torchvision classifier)."""
    example = torch.zeros(1, 3, input_size, input_size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), buf, dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    path.write_bytes(buf.getvalue())


def quantize_onnx(fp32_path: Path, tensors: list[torch.Tensor], path: Path) -> None:
    """Static int8 QDQ ONNX: per-channel symmetric int8 weights, uint8 activations,
    ranges from the calibration tensors (min/max)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._items = iter([{"input": t.numpy()} for t in tensors])

        def get_next(self):
            return next(self._items, None)

    work = path.with_name(path.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    try:
        pre = work / "pre.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                extra_options={"CalibTensorRangeSymmetric": False},
            )
    finally:
        for leftover in sorted(work.rglob("*"), reverse=True):
            leftover.unlink() if leftover.is_file() else leftover.rmdir()
        work.rmdir()


def _onnx_file(loaded, mode: str, cache: ArtefactCache, key: str, calib) -> tuple[Path, bool]:
    versions = hashlib.sha256(_versions("onnxruntime").encode()).hexdigest()[:8]
    fp32_name = f"{key}-{versions}-fp32.onnx"

    def build_fp32(tmp: Path) -> None:
        export_onnx(loaded.module, loaded.input_size, tmp)

    fp32, reused = cache.get(fp32_name, build_fp32)
    if mode in ("none", "bf16"):
        return fp32, reused
    files, digest = calib
    int8_name = f"{key}-{digest[:16]}-{versions}-int8.onnx"

    def build_int8(tmp: Path) -> None:
        tensors = calibration_tensors(files, loaded.input_size, loaded.mean, loaded.std)
        started = time.perf_counter()
        quantize_onnx(fp32, tensors, tmp)
        log.info("calibrated %s on %d views in %.1f s", loaded.name, len(tensors),
                 time.perf_counter() - started)

    return cache.get(int8_name, build_int8)


def _ort_engine(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Do not spin waiting for work between requests: the CPUs are shared with the
    # decoding threads and the other workers.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().contiguous().numpy()
        return torch.from_numpy(session.run(None, {"input": array})[0])

    return run


def cpu_has_bf16() -> bool:
    """The CPU computes bfloat16 natively (AVX512-BF16 or AMX), per OpenVINO."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _ov_engine(path: Path, threads: int, precision: str = "f32"):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        # f32: the same numbers on every CPU.  bf16 only when asked for (QUANTIZE=bf16).
        "INFERENCE_PRECISION_HINT": precision,
        # Several workers share the cores: let the OS place each worker's threads.
        "ENABLE_CPU_PINNING": False,
    })
    request = compiled.create_infer_request()
    lock = threading.Lock()  # an infer request serves one call at a time

    def run(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().contiguous().numpy()
        with lock:
            result = request.infer({0: array})
            return torch.from_numpy(result[0].copy())

    return run


def _build_onnx_engine(loaded, mode, engine, cache, key, calib, threads) -> Built:
    path, reused = _onnx_file(loaded, mode, cache, key, calib)
    precision = "int8" if mode == "static" else "fp32"
    if engine == "onnxruntime":
        make = _ort_engine
    elif mode == "bf16" and cpu_has_bf16():
        precision = "bf16"

        def make(path, threads):
            return _ov_engine(path, threads, "bf16")
    else:
        make = _ov_engine
        if mode == "bf16":
            precision = "fp32 (this CPU has no native bf16)"
    try:
        run = make(path, threads)
    except Exception as exc:  # a file that passed its checksum but does not load
        log.warning("engine cache entry %s does not load (%s); rebuilding it", path, exc)
        cache.discard(path.name)
        path, reused = _onnx_file(loaded, mode, cache, key, calib)
        run = make(path, threads)
    return Built(run, {"precision": precision, "artefact": str(path), "reused": reused})


# --------------------------------------------------------------------------- entry point


def build(loaded, mode: str, engine: str, *, cache_dir: str | os.PathLike | None = None,
          threads: int | None = None,
          calibration_dir: str | os.PathLike | None = None) -> Built:
    """The serving callable for ``loaded`` (a ``model_loader.LoadedModel``)."""
    check_combination(engine, mode)
    threads = max(1, int(threads or torch.get_num_threads()))
    cache = ArtefactCache(cache_dir or default_cache_dir())
    started = time.perf_counter()
    key = ""
    if engine != "torch" or mode == "static":  # only converted models are cached
        key = hashlib.sha256(
            (weights_sha256(loaded.module) + json.dumps(
                [loaded.input_size, list(loaded.mean), list(loaded.std)])).encode()
        ).hexdigest()[:24]
    calib: tuple[list[Path], str] = ([], "")
    if mode == "static":
        files = calibration_files(calibration_dir)
        calib = (files, calibration_digest(files))
    if engine == "torch":
        built = _build_torch(loaded, mode, cache, key, calib)
    else:
        built = _build_onnx_engine(loaded, mode, engine, cache, key, calib, threads)
    built.info = {"engine": engine, "quantization": mode, **built.info,
                  "build_seconds": round(time.perf_counter() - started, 3)}
    if mode == "static" and calib[0]:
        built.info.setdefault(
            "calibration", f"{len(calib[0])} images in {calibration_dir or CALIBRATION_DIR}")
    return built
