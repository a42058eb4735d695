"""Running a built network: OpenVINO or ONNX Runtime on an ONNX file from the engine cache.
No torch here: this is what a web worker loads.

An engine is called with a normalised NCHW float32 batch and answers
``(logits, features)``: the feature map is the network's second output (the last spatial
features before global pooling, for heatmaps), or ``None`` for networks without one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from webapp import config

log = logging.getLogger(__name__)

RUNTIMES = ("openvino", "onnxruntime")

_waits = threading.local()


def waited_ms() -> float:
    """How long this thread's last engine call waited for another request's pass to end
    before its own began, in ms (``timings_ms``'s ``engine_wait``); read once (0 after,
    and for an engine that does not say)."""
    ms, _waits.ms = getattr(_waits, "ms", 0.0), 0.0
    return ms


def _waited_since(started: float) -> None:
    _waits.ms = (time.perf_counter() - started) * 1000


@dataclass
class Engine:
    """A compiled network and what it is (``info`` is shown in /readyz and the admin).
    Calling it is thread-safe: each engine serialises or spreads concurrent passes over
    its threads itself."""

    run: object  # callable: batch -> (logits, features | None)
    name: str
    precision: str
    info: dict = field(default_factory=dict)
    # For an engine whose own network has no feature map (torch static int8): a second
    # callable, batch -> (logits, features), run only for heatmaps.
    features_run: object = None
    # The linear head's weight (classes × channels) when heatmaps are possible.
    cam_weight: np.ndarray | None = None
    # When answers are "unknown" (``webapp.scores.OpenSet``), or None.
    openset: object = None
    # Set once every network of the engine is compiled and warm (OpenVINO's dual streams
    # compile the second in the background), or None when there is nothing to wait for.
    compiled: threading.Event | None = None

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


def cpu_signature() -> str:
    """What the engines' speed and precisions depend on here: the CPU model, its flags
    and the oneDNN instruction-set cap (``ONEDNN_MAX_CPU_ISA``) -- a decision made on one
    machine is not reused on another (a shared cache, a moved disk)."""
    model = flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return "|".join([model or platform.processor(), flags,
                     config.given("ONEDNN_MAX_CPU_ISA") or ""])


def cpu_has_bf16() -> bool:
    """The CPU computes bfloat16 natively (AVX512-BF16 or AMX), per OpenVINO."""
    return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _compile(path: Path, threads: int, streams: int, precision: str, blobs: str = ""):
    """Compile ``path`` for the CPU.  With ``blobs`` (OpenVINO's cache of compiled
    networks, shared by every worker, builder and replica on the engine cache), under a
    file lock: OpenVINO writes a blob in place and maps it when it reads one, so a
    process reading a blob another is still writing dies of SIGBUS (two workers compiling
    the same new model at a swap).  A blob OpenVINO cannot read (truncated by a crash) is
    replaced: the network is compiled into a private folder and its blob renamed over the
    damaged one.  A cache that cannot be written is not used (a read-only engine cache
    whose entries are all there still serves)."""
    settings = {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": streams,
        "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
        # f32: the same numbers on every CPU.  bf16 only when asked for (QUANTIZE=bf16).
        "INFERENCE_PRECISION_HINT": precision,
        # Several workers share the cores: let the OS place each worker's threads.
        "ENABLE_CPU_PINNING": False,
    }
    core = openvino_core()
    with contextlib.ExitStack() as held:
        if blobs:
            try:
                held.enter_context(_blob_lock(blobs))
            except OSError as exc:  # a read-only cache: its entries serve, uncached compiles
                log.info("OpenVINO's cache %s cannot be written (%s); compiling without it",
                         blobs, exc.strerror or exc)
                blobs = ""
        if not blobs:
            return core.compile_model(str(path), "CPU", settings)
        try:
            return core.compile_model(str(path), "CPU", {"CACHE_DIR": blobs, **settings})
        except Exception as exc:  # noqa: BLE001 - a damaged blob: compile it afresh
            log.warning("compiling %s from OpenVINO's cache failed (%s); compiling it "
                        "afresh and replacing its cached blob", path.name, exc)
        private = tempfile.mkdtemp(prefix=".compile-", dir=blobs)
        try:
            compiled = core.compile_model(str(path), "CPU", {"CACHE_DIR": private, **settings})
            for name in os.listdir(private):
                if name.endswith(".blob"):
                    os.replace(os.path.join(private, name), os.path.join(blobs, name))
            return compiled
        finally:
            shutil.rmtree(private, ignore_errors=True)


@contextlib.contextmanager
def _blob_lock(blobs: str):
    """An exclusive ``flock`` on OpenVINO's cache folder: one compilation at a time
    reads or writes it (across threads, workers, builders and replicas).  ``OSError``
    when the folder cannot be written."""
    os.makedirs(blobs, exist_ok=True)
    with open(os.path.join(blobs, ".lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# pybind11's NumPy bridge in OpenVINO's Python module initialises a C++ static the
# first time an inference result becomes a NumPy array, and releases the GIL inside
# that initialisation: two threads doing their first conversion at once deadlock (one
# holds the GIL and waits for the static's guard, the other holds the guard and waits
# for the GIL; docs/operating.md, "A known upstream problem").  So every infer request
# runs once, here, on the thread that created it, before any other thread can use it,
# and those first inferences of a process never run side by side.
_first_inferences = threading.Lock()


def _warm(infer: Callable, requests, batch: np.ndarray) -> None:
    with _first_inferences:
        for request in requests:
            infer(request, batch)


def _warm_batch(compiled, input_size: int) -> np.ndarray:
    """Zeros shaped as the network's input: one image, ``input_size`` where the network
    leaves a side open."""
    shape = compiled.input(0).get_partial_shape()
    default = [1, 3, input_size, input_size]
    dims = [dim.get_length() if dim.is_static else default[min(n, 3)]
            for n, dim in enumerate(shape)]
    return np.zeros(dims, dtype=np.float32)


def openvino_engine(path: Path, threads: int, precision: str = "f32",
                    dual: bool = False, blobs: str = "", input_size: int = 224) -> Engine:
    """OpenVINO on ``path``.  With ``dual`` (and more than one thread) the network is
    compiled twice: once as one stream on all ``threads`` (a request alone gets every
    core: the lowest latency) and once as one single-threaded stream per thread (requests
    in flight together each get a core: the most throughput).  Each request takes the
    first when nothing else is in flight, else a free stream of the second.

    ``blobs``: OpenVINO's own cache of compiled networks (a folder in the engine cache):
    the second compilation of the same network with the same settings -- the next worker,
    the next start, every worker at a swap after the builder compiled it -- reads it back
    (measured: 0.25 s -> 0.04 s for EfficientNet-Lite0 in bf16).

    Every infer request runs once on zeros (``_warm``) before the engine is returned or
    the second network's requests are offered to requests."""
    latency = _compile(path, threads, 1, precision, blobs)
    outputs = [o.get_any_name() for o in latency.outputs]
    has_features = "features" in outputs

    def infer(request, batch):
        request, outputs = request
        result = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        logits = result[outputs[0]].copy()
        features = result[outputs[1]].copy() if has_features else None
        return logits, features

    def requests_of(compiled, n):
        # The scores are the first output (whatever an uploaded model calls it).
        outputs = [compiled.outputs[0]] + (
            [compiled.output("features")] if has_features else [])
        return [(compiled.create_infer_request(), outputs) for _ in range(n)]

    warm = _warm_batch(latency, input_size)
    alone = requests_of(latency, 1)[0]
    _warm(infer, [alone], warm)
    streams = _Streams(alone, infer)
    name = "bf16" if precision == "bf16" else "fp32"
    if not dual or threads < 2:
        return Engine(streams.run, "openvino", name, info={"streams": "1"})

    def compile_second():
        """In the background: a swap serves as soon as the first network is ready."""
        try:
            together = requests_of(_compile(path, threads, threads, precision, blobs),
                                   threads)
            _warm(infer, together, warm)
            streams.add(together)
        except Exception:  # noqa: BLE001 - the first network goes on serving alone
            log.exception("compiling %s a second time (one stream per thread) failed", path)
        finally:
            compiled.set()

    # Not a daemon: a process that exits waits the second or so for it, instead of
    # tearing OpenVINO down under a compilation (which aborts the process).
    compiled = threading.Event()
    threading.Thread(target=compile_second, name="openvino-streams").start()
    return Engine(streams.run, "openvino", name, compiled=compiled,
                  info={"streams": f"1 x {threads} threads alone, {threads} x 1 together"})


class _Streams:
    """Which compiled network a request runs on: ``alone`` (one stream on all threads)
    when nothing else is in flight, else a free request of the one-stream-per-thread
    network once ``add`` gave it (until then everyone queues for ``alone``)."""

    def __init__(self, alone, infer: Callable):
        self._alone, self._infer = alone, infer
        self._alone_lock = threading.Lock()  # an infer request serves one call at a time
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._together = threading.Event()  # set once the second network is compiled
        self._state = threading.Lock()
        self._in_flight = 0

    def add(self, requests) -> None:
        for request in requests:
            self._free.put(request)
        self._together.set()

    def run(self, batch: np.ndarray):
        started = time.perf_counter()
        if not self._together.is_set():
            with self._alone_lock:
                _waited_since(started)
                return self._infer(self._alone, batch)
        with self._state:
            others = self._in_flight
            self._in_flight += 1
        try:
            if others == 0 and self._alone_lock.acquire(blocking=False):
                try:
                    _waited_since(started)
                    return self._infer(self._alone, batch)
                finally:
                    self._alone_lock.release()
            request = self._free.get()
            _waited_since(started)
            try:
                return self._infer(request, batch)
            finally:
                self._free.put(request)
        finally:
            with self._state:
                self._in_flight -= 1


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
    # The scores are the first output, the input the first (whatever an upload calls them).
    wanted = [names[0]] + (["features"] if "features" in names[1:] else [])
    feed = session.get_inputs()[0].name
    lock = threading.Lock()  # one pass at a time: they share the session's thread pool

    def run(batch: np.ndarray):
        started = time.perf_counter()
        with lock:
            _waited_since(started)
            result = session.run(wanted, {feed: np.ascontiguousarray(batch, dtype=np.float32)})
        return result[0], (result[1] if len(result) > 1 else None)

    return Engine(run, "onnxruntime", "fp32")


def open_engine(path: Path, runtime: str, threads: int, precision: str,
                dual: bool = False, blobs: str = "", input_size: int = 224) -> Engine:
    """``precision``: ``fp32``, ``bf16`` (OpenVINO only; fp32 where the CPU has no native
    bfloat16) or ``int8`` (``path`` is then the QDQ network).  ``dual``, ``blobs``,
    ``input_size``: see ``openvino_engine``."""
    if runtime == "onnxruntime":
        engine = onnxruntime_engine(path, threads)
    elif precision == "bf16" and cpu_has_bf16():
        engine = openvino_engine(path, threads, "bf16", dual, blobs, input_size)
    else:
        engine = openvino_engine(path, threads, "f32", dual, blobs, input_size)
        if precision == "bf16":
            engine.precision = "fp32 (this CPU has no native bf16)"
    if precision == "int8":
        engine.precision = "int8"
    return engine
