"""Running a built network: OpenVINO or ONNX Runtime on an ONNX file from the engine cache.
No torch here: this is what a web worker loads.

An engine is called with a normalised NCHW float32 batch and answers
``(logits, features)``: the feature map is the network's second output (the last spatial
features before global pooling, for heatmaps), or ``None`` for networks without one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RUNTIMES = ("openvino", "onnxruntime")


@dataclass
class Engine:
    """A compiled network and what it is (``info`` is shown in /readyz and the admin)."""

    run: object  # callable: batch -> (logits, features | None)
    name: str
    precision: str
    info: dict = field(default_factory=dict)
    # For an engine whose own network has no feature map (torch static int8): a second
    # callable, batch -> (logits, features), run only for heatmaps.
    features_run: object = None
    # The linear head's weight (classes × channels) when heatmaps are possible.
    cam_weight: np.ndarray | None = None

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self.run(batch)


_core = None
_core_lock = threading.Lock()


def openvino_core():
    """One OpenVINO ``Core`` per process (it holds the plugins and their thread pools)."""
    global _core
    with _core_lock:
        if _core is None:
            import openvino as ov

            _core = ov.Core()
        return _core


def cpu_has_bf16() -> bool:
    """The CPU computes bfloat16 natively (AVX512-BF16 or AMX), per OpenVINO."""
    return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_engine(path: Path, threads: int, precision: str = "f32") -> Engine:
    compiled = openvino_core().compile_model(str(path), "CPU", {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        # f32: the same numbers on every CPU.  bf16 only when asked for (QUANTIZE=bf16).
        "INFERENCE_PRECISION_HINT": precision,
        # Several workers share the cores: let the OS place each worker's threads.
        "ENABLE_CPU_PINNING": False,
    })
    outputs = [o.get_any_name() for o in compiled.outputs]
    has_features = "features" in outputs
    request = compiled.create_infer_request()
    lock = threading.Lock()  # an infer request serves one call at a time

    def run(batch: np.ndarray):
        with lock:
            result = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
            logits = result[compiled.output("logits")].copy()
            features = result[compiled.output("features")].copy() if has_features else None
        return logits, features

    return Engine(run, "openvino", "bf16" if precision == "bf16" else "fp32")


def onnxruntime_engine(path: Path, threads: int) -> Engine:
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
    names = [o.name for o in session.get_outputs()]
    wanted = ["logits", "features"] if "features" in names else ["logits"]

    def run(batch: np.ndarray):
        result = session.run(wanted, {"input": np.ascontiguousarray(batch, dtype=np.float32)})
        return result[0], (result[1] if len(result) > 1 else None)

    return Engine(run, "onnxruntime", "fp32")


def open_engine(path: Path, runtime: str, threads: int, precision: str) -> Engine:
    """``precision``: ``fp32``, ``bf16`` (OpenVINO only; fp32 where the CPU has no native
    bfloat16) or ``int8`` (``path`` is then the QDQ network)."""
    if runtime == "onnxruntime":
        engine = onnxruntime_engine(path, threads)
    elif precision == "bf16" and cpu_has_bf16():
        engine = openvino_engine(path, threads, "bf16")
    else:
        engine = openvino_engine(path, threads)
        if precision == "bf16":
            engine.precision = "fp32 (this CPU has no native bf16)"
    if precision == "int8":
        engine.precision = "int8"
    return engine
