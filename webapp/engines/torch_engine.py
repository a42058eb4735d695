"""``ENGINE=torch``: the model served by torch inside the worker -- the one setting that
loads torch into a web worker (the design card's ``QUANTIZE=dynamic`` needs it).

``QUANTIZE=none`` is the fp32 module; ``dynamic`` torch's ``quantize_dynamic`` on the
``nn.Linear`` layers; ``static`` FX graph mode on the x86 backend, calibrated on the
calibration photos (the published ResNet18 uses torchvision's pre-quantized weights when
they are cached).  The model card (labels, preprocessing, heatmap head) is the same one
the other engines serve.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from webapp.checkpoints.imagenet import torch_hub_dir
from webapp.checkpoints.load import load_checkpoint, load_imagenet_model
from webapp.checkpoints.loaded import LoadedModel, ModelLoadError
from webapp.engines.artefacts import ArtefactCache, ModelCard
from webapp.engines.calibration import calibration_arrays, calibration_digest, calibration_files
from webapp.engines.features import WithFeatures
from webapp.engines.runtime import Engine

log = logging.getLogger(__name__)

TORCH_CALIBRATION_SAMPLES = 32  # torch's histogram observers are slow
PREQUANTIZED_RESNET18 = "resnet18_fbgemm_16fa66dd.pth"  # ResNet18_QuantizedWeights file
PUBLISHED_RESNET18_SHA256_PREFIX = "f37072fd"  # resnet18-f37072fd.pth

_threads_configured = False


def configure_threads(threads: int) -> int:
    """Set torch's intra-op threads once per process (inter-op work is not used when
    serving one forward pass at a time, so that pool stays at one thread)."""
    global _threads_configured
    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    if not _threads_configured:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already started; harmless
            pass
        _threads_configured = True
    return threads


def load_module(source) -> LoadedModel:
    """The fp32 model of ``source`` (a ``webapp.engines.ModelSource``), in this process."""
    if source.kind == "builtin":
        return load_imagenet_model(source.weights or None)
    return load_checkpoint(source.file, source_kind="registry",
                                        label=source.label or None, version=source.sha256,
                                        **source.given)


def serve(card: ModelCard, source, settings) -> tuple[ModelCard, Engine]:
    """The card and a torch engine for ``source`` (loaded here, in this process)."""
    started = time.perf_counter()
    configure_threads(settings.threads)
    return serve_module(card, load_module(source), settings, started)


def serve_module(card: ModelCard, loaded: LoadedModel, settings,
                 started: float | None = None) -> tuple[ModelCard, Engine]:
    started = time.perf_counter() if started is None else started
    module = loaded.module.eval()
    layer_name = (card.cam or {}).get("layer")
    mode = settings.quantize
    if mode == "none":
        served, precision = module, "fp32"
    elif mode == "dynamic":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao deprecation notices
            served = torch.ao.quantization.quantize_dynamic(module, {nn.Linear},
                                                            dtype=torch.qint8).eval()
        precision = "int8 Linear weights, fp32 convolutions"
    else:
        served, precision = _static(loaded, card, settings), "int8"
    # Heatmaps need the feature map: from the served network when it still has the layer
    # (fp32, dynamic), else from the fp32 module in a second pass (static: an FX graph
    # keeps the submodules' names but calls only their leaves, so hooks never fire).
    modules = dict(served.named_modules())
    if layer_name and mode != "static":
        network, features_run = WithFeatures(served, modules[layer_name]), None
    else:
        network = served
        features_run = _runner(WithFeatures(module, dict(module.named_modules())[layer_name])
                               ) if layer_name else None

    def forward(batch: np.ndarray):
        with torch.inference_mode():
            out = network(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        if isinstance(out, tuple):
            return out[0].float().numpy(), out[1].float().numpy()
        return out.float().numpy(), None

    def run(batch: np.ndarray):
        return _inference_thread(settings.threads).submit(forward, batch).result()

    engine = Engine(run, "torch", precision)
    engine.features_run = features_run
    engine.module = served  # tests look at what serves
    engine.info = {"engine": "torch", "quantization": mode, "precision": precision,
                   "torch_threads": torch.get_num_threads(),
                   "load_seconds": round(time.perf_counter() - started, 3)}
    return replace(card, quantization=mode, engine_name="torch", engine_info=engine.info), engine


def _runner(network: nn.Module):
    def forward(batch: np.ndarray):
        with torch.inference_mode():
            logits, features = network(torch.from_numpy(batch))
        return logits.float().numpy(), features.float().numpy()

    return lambda batch: _inference_thread().submit(forward, batch).result()


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _inference_thread(threads: int | None = None) -> ThreadPoolExecutor:
    """The one thread that runs every torch forward pass of this process.

    torch's OpenMP runtime (libgomp) keeps a team of worker threads *per calling
    thread*, and a team spins for a while after each parallel region before it sleeps.
    Called from gunicorn's request threads, every request thread grows its own team, and
    the idle teams spin on the cores the busy one needs: a ResNet18 pass took about twice
    as long in the server as outside it.  One inference thread means one team; its
    thread count is set in that thread (OpenMP keeps it per thread, too)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            count = threads or torch.get_num_threads()
            _executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="torch-inference",
                initializer=lambda: configure_threads(count))
        return _executor


# --------------------------------------------------------------------------- static int8


def _prepare_fx(module: nn.Module, input_size: int) -> nn.Module:
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
    return Path(torch_hub_dir()) / "checkpoints" / PREQUANTIZED_RESNET18


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
        loaded.version).startswith(PUBLISHED_RESNET18_SHA256_PREFIX)


def _observer_state(prepared: nn.Module) -> dict:
    return {k: v for k, v in prepared.state_dict().items() if "activation_post_process" in k}


def _static(loaded, card: ModelCard, settings) -> nn.Module:
    prequantized = prequantized_resnet18_path()
    if _is_published_resnet18(loaded) and prequantized.is_file():
        try:
            return load_prequantized_resnet18(prequantized)
        except Exception as exc:  # a damaged file: calibrate instead
            log.warning("ignoring %s (%s); calibrating instead", prequantized, exc)
    # FX graph mode, x86 backend.  The cache keeps the calibrated observers' statistics
    # (plain tensors, read back with weights_only=True); converting from them is cheap and
    # gives the same int8 model.
    module = loaded.module
    files = calibration_files(settings.calibration_dir or None)
    name = (f"{card.key}-{calibration_digest(files)[:16]}-torch{torch.__version__}"
            "-x86-observers.pt")
    cache: ArtefactCache = settings.cache

    def build(tmp: Path) -> None:
        prepared = _prepare_fx(module, loaded.input_size)
        arrays = calibration_arrays(files, loaded.input_size, loaded.mean, loaded.std,
                                    limit=TORCH_CALIBRATION_SAMPLES)
        with torch.no_grad():
            for array in arrays:
                prepared(torch.from_numpy(array))
        torch.save(_observer_state(prepared), tmp)

    def restore(path: Path) -> nn.Module:
        prepared = _prepare_fx(module, loaded.input_size)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if set(state) != set(_observer_state(prepared)):
            raise ModelLoadError("the observers do not match this model")
        prepared.load_state_dict(state, strict=False)
        return _convert_fx(prepared)

    path, _ = cache.get(name, build)
    try:
        return restore(path)
    except Exception as exc:
        log.warning("engine cache entry %s does not load (%s); rebuilding it", path, exc)
        cache.discard(name)
        path, _ = cache.get(name, build)
        return restore(path)
