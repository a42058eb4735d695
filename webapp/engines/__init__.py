"""Inference engines: how a model file becomes something a worker can run.

Two halves, kept apart so that a web worker never loads torch:

* **building** (``build``, torch): load and validate the file, export ONNX with a second
  output for heatmaps, calibrate int8.  Runs in a short-lived child process
  (``child.run_builder``) or in the training job runner; leaves files in the engine cache
  (``artefacts``), keyed by the sha256 of the model file and what was said about it;
* **running** (``runtime``, no torch): OpenVINO or ONNX Runtime on those files.

``ENGINE=torch`` (and ``QUANTIZE=dynamic``, torch's own) is the one setting that loads
torch into a worker (``torch_engine``); it serves the same cards.

ENGINE × QUANTIZE:

=============  ============================  ===========================================
ENGINE         QUANTIZE=none / bf16          QUANTIZE=static (int8)
=============  ============================  ===========================================
openvino       the ONNX network, fp32; bf16  the QDQ int8 network, compiled by OpenVINO
               where the CPU computes it
onnxruntime    the ONNX network, fp32        the QDQ int8 network (ORT's quantizer)
torch          fp32 eager (``dynamic``: int8  FX graph mode, x86 backend, calibrated
               Linear layers)
=============  ============================  ===========================================
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from webapp import scores
from webapp.checkpoints.files import sha256_file
from webapp.checkpoints.imagenet import NO_WEIGHTS_MESSAGE, imagenet_weights_file
from webapp.checkpoints.loaded import ModelLoadError
from webapp.config import choices, combination_problem, setting
from webapp.engines import child, precision
from webapp.engines.artefacts import ArtefactCache, ModelCard, default_cache_dir, model_key
from webapp.engines.calibration import int8_name
from webapp.engines.precision import reason
from webapp.engines.runtime import Engine, cpu_signature, open_engine
from webapp.messages import Message, to_json

log = logging.getLogger(__name__)

ENGINES = choices("ENGINE")
QUANTIZE_MODES = choices("QUANTIZE")

__all__ = ["ENGINES", "QUANTIZE_MODES", "Engine", "EngineSettings", "ModelCard", "ModelSource",
           "check_combination", "ensure_card", "serve"]


def check_combination(engine: str, mode: str) -> None:
    """``ModelLoadError`` naming the settings that cannot go together."""
    if engine not in ENGINES:
        raise ModelLoadError(f"ENGINE={engine!r} is not supported; use one of "
                             f"{', '.join(ENGINES)}")
    if mode not in QUANTIZE_MODES:
        raise ModelLoadError(f"QUANTIZE={mode!r} is not supported; use one of "
                             f"{', '.join(QUANTIZE_MODES)}")
    problem = combination_problem(engine, mode)
    if problem:
        raise ModelLoadError(problem)


@dataclass(frozen=True)
class EngineSettings:
    """How this process serves models (``ENGINE``, ``QUANTIZE``, ``ENGINE_CACHE_DIR``,
    ``CALIBRATION_DIR``, ``TORCH_THREADS``).  ``engine="auto"``: OpenVINO or ONNX
    Runtime, whichever the trials measure faster here (``precision.decide``).  The
    server's come from its settings (``from_config``: the table's defaults); the field
    defaults here are for code that builds settings by hand (a command line, a test:
    OpenVINO in fp32, nothing measured)."""

    engine: str = "openvino"
    quantize: str = "none"
    cache_dir: str = ""
    calibration_dir: str = ""
    threads: int = 1
    dual: bool = False  # ENGINE_STREAMS=dual (OpenVINO)
    min_agreement: float = 0.98  # QUANTIZE=auto: INT8_MIN_AGREEMENT
    max_score_change: float = 0.03  # QUANTIZE=auto: PRECISION_MAX_SCORE_CHANGE
    handicap: str = ""  # AUTO_HANDICAP_MS: ms added to some candidates' timed passes

    @classmethod
    def from_config(cls, values: dict) -> EngineSettings:
        """From the app's config (``Config.from_env``); a setting it lacks takes the
        table's default (webapp/config.py), as the server would."""
        def get(name: str):
            return values[name] if values.get(name) is not None else setting(name, {})

        return cls(engine=get("ENGINE"), quantize=get("QUANTIZE"),
                   cache_dir=get("ENGINE_CACHE_DIR"), calibration_dir=get("CALIBRATION_DIR"),
                   threads=max(1, int(get("TORCH_THREADS") or 1)),
                   dual=get("ENGINE_STREAMS") == "dual",
                   min_agreement=float(get("INT8_MIN_AGREEMENT")),
                   max_score_change=float(get("PRECISION_MAX_SCORE_CHANGE")),
                   handicap=get("AUTO_HANDICAP_MS"))

    @property
    def builds_int8(self) -> bool:
        """Serving needs the ONNX int8 network (torch quantizes by itself)."""
        return self.quantize == "static" and self.engine != "torch"

    @property
    def decides(self) -> bool:
        """QUANTIZE=auto or ENGINE=auto (not torch, which serves what it is told): the
        engine and precision are decided per model by measuring (``precision.decide``)."""
        return (self.quantize == "auto" or self.engine == "auto") and self.engine != "torch"

    @property
    def cache(self) -> ArtefactCache:
        return ArtefactCache(self.cache_dir or default_cache_dir())


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


# --------------------------------------------------------------------------- building


_build_lock = threading.Lock()  # one build at a time per process (each is a torch child)


def decision_name(key: str, settings: EngineSettings) -> str:
    """The cache entry of QUANTIZE=auto's decision for the model of ``key``: it depends on
    the engines and precisions allowed, the engine threads, this CPU (and its oneDNN
    cap), the calibration set, the thresholds and any handicap."""
    basis = json.dumps([settings.engine, settings.quantize, settings.threads,
                        settings.min_agreement, settings.max_score_change, cpu_signature(),
                        int8_name(key, settings.calibration_dir or None)]
                       + ([settings.handicap] if settings.handicap else []))
    return f"{key}-{hashlib.sha256(basis.encode()).hexdigest()[:12]}.auto.json"


def decision(key: str, settings: EngineSettings) -> dict | None:
    """QUANTIZE=auto's decision for the model of ``key`` on this machine, if made."""
    cache, name = settings.cache, decision_name(key, settings)
    if not cache.valid(name):
        return None
    try:
        return json.loads(cache.path(name).read_text("utf-8"))
    except (OSError, ValueError):
        return None


def ensure_card(source: ModelSource, settings: EngineSettings, *,
                int8: bool = False, decide: bool = False) -> ModelCard:
    """The model card of ``source`` from the cache, built by a child process when missing
    or damaged (under the cache entry's lock: workers starting together build it once).
    ``int8``: the int8 network too, or the reason it cannot be built (``int8_state``);
    that is never the card's failure."""
    cache = settings.cache
    key = source.key

    def done(card) -> bool:
        return card is not None and (not int8 or int8_state(card, settings)[0] != "missing") \
            and (not decide or decision(card.key, settings) is not None)

    version = source.sha256[:12]
    card = cache.read_card(key, version)
    if not done(card):
        with _build_lock, cache.lock(cache.card_name(key)):
            card = cache.read_card(key, version)
            if not done(card):
                card = _run_build(source, settings, cache, key, int8, decide)
    return _named(card, source)


def int8_state(card: ModelCard, settings: EngineSettings) -> tuple[str, str]:
    """(``ready`` | ``failed`` | ``missing``, the entry's name or why it failed)."""
    cache = settings.cache
    name = int8_name(card.key, settings.calibration_dir or None)
    if cache.valid(name):
        return "ready", name
    if cache.valid(f"{name}.error"):
        return "failed", cache.path(f"{name}.error").read_text("utf-8").strip()
    return "missing", name


def _named(card: ModelCard, source: ModelSource) -> ModelCard:
    """The card as this source shows it: the same weights may be stored under another
    name, and a stored upload no longer lives where it was converted."""
    card = replace(card, name=source.name) if source.name else card
    return replace(card, source=source.file) if source.kind == "checkpoint" else card


def _run_build(source, settings, cache, key, int8, decide=False) -> ModelCard:
    if "torch" in sys.modules and not source.untrusted:
        return _build_here(source, settings, cache, key, int8, decide)
    started = time.perf_counter()
    common = ["--key", key, "--cache", str(cache.root)]
    if int8:
        common.append("--int8")
        if settings.calibration_dir:
            common += ["--calibration-dir", settings.calibration_dir]
    if decide:
        common += ["--decide", json.dumps(dataclasses.asdict(settings))]
        if settings.calibration_dir and "--calibration-dir" not in common:
            common += ["--calibration-dir", settings.calibration_dir]
    timeout = child.BUILD_TIMEOUT
    what = None
    given = None  # on the child's stdin
    if source.kind == "builtin":
        args = ["builtin", *common]
        if source.weights:
            args += ["--weights", source.weights]
    else:
        # What was said about the file goes on the child's stdin: a labels file may be
        # larger than one command-line argument may be (128 KB on Linux).
        args = ["checkpoint", source.file, "--given", "-", "--sha256", source.sha256, *common]
        given = json.dumps(source.given)
        if source.label:
            args += ["--label", json.dumps(to_json(source.label), ensure_ascii=False)]
            what = source.label
        if source.untrusted:
            memory_mb, timeout = child.upload_limits(os.path.getsize(source.file))
            args += ["--memory-mb", str(memory_mb)]
    answer = child.run_builder(args, timeout=timeout, what=what, stdin=given)
    card = ModelCard.from_json(answer["card"])
    log.info("built %s for serving in %.1f s (a child process; cached as %s)", card.name,
             time.perf_counter() - started, key)
    return card


def _build_here(source, settings, cache, key, int8, decide=False) -> ModelCard:
    """In a process that has torch already (the training runner, ``ENGINE=torch``), a
    trusted model is built right here instead of in a child."""
    from webapp.engines import build, torch_engine  # torch: only a process with torch builds here

    card = cache.read_card(key, source.sha256[:12])
    if card is None:
        card = build.build_card(torch_engine.load_module(source), key, cache, lock=False)
    if int8:
        precision.int8_or_reason(card, cache, settings.calibration_dir or None)
    if decide and decision(card.key, settings) is None:
        precision.decide(card, cache, settings)
    return card


# --------------------------------------------------------------------------- serving


def serve(source: ModelSource, settings: EngineSettings, *, background: bool = False,
          ) -> tuple[ModelCard, Engine]:
    """The card and the engine that serve ``source`` in this process.

    A precision the engine cannot give steps down *inside* the engine: int8 that cannot
    be built (no calibration photos, a quantizer error) and bf16 that does not compile
    are served in fp32 by the same engine, and ``engine_info["fallback"]`` says why.

    ``background`` (a server's worker): a model whose engine and precision are not
    decided on this machine yet is served in fp32 at once while a child process
    measures them (``trials``); otherwise they are measured first."""
    check_combination(settings.engine, settings.quantize)
    if settings.engine == "torch":
        from webapp.engines import torch_engine  # torch: only ENGINE=torch loads it

        card = ensure_card(source, settings)
        if card.kind == "onnx":  # nothing for torch to run: ONNX Runtime runs it
            card, engine = open_card(card, settings, "fp32")
            engine.info["fallback"] = ("ENGINE=torch cannot run an ONNX model: ONNX Runtime "
                                       "runs it")
            return card, engine
        card, engine = torch_engine.serve(card, source, settings)
        attach(engine, card, settings.cache)
        return card, engine
    if settings.decides:
        return _serve_decided(source, settings, background)
    return _serve_fixed(source, settings)


def _serve_fixed(source: ModelSource, settings: EngineSettings) -> tuple[ModelCard, Engine]:
    """One engine, one precision, as the settings say."""
    card = ensure_card(source, settings, int8=settings.builds_int8)
    fallback = None
    if settings.builds_int8:
        state, detail = int8_state(card, settings)
        try:
            if state != "ready":
                raise ModelLoadError(detail)
            return open_card(card, settings, "int8")
        except Exception as exc:  # noqa: BLE001 - any failure: serve fp32 and say why
            fallback = f"QUANTIZE=static failed: {reason(exc)}"
            log.warning("%s for %s; serving fp32", fallback, card.name)
    precision = "bf16" if settings.quantize == "bf16" else "fp32"
    try:
        card, engine = open_card(card, settings, precision)
    except Exception as exc:  # noqa: BLE001
        if precision == "fp32":
            raise
        fallback = f"QUANTIZE={settings.quantize} failed: {reason(exc)}"
        log.warning("%s for %s; serving fp32", fallback, card.name)
        card, engine = open_card(card, settings, "fp32")
    if fallback:
        engine.info["fallback"] = fallback
    return card, engine


def _serve_decided(source: ModelSource, settings: EngineSettings, background: bool
                   ) -> tuple[ModelCard, Engine]:
    """QUANTIZE=auto / ENGINE=auto: the engine and precision measured for this model on
    this machine (once, cached); fp32 if the chosen one does not open here after all.
    Not measured yet and ``background``: fp32 now (``_provisional``), the trials in a
    child process."""
    card = ensure_card(source, settings, int8=settings.builds_int8, decide=not background)
    made = decision(card.key, settings)
    if made is None:
        return _provisional(source, card, settings)
    engine_name = made.get("engine") or (
        "openvino" if settings.engine == "auto" else settings.engine)
    chosen = replace(settings, engine=engine_name)
    try:
        card, engine = open_card(card, chosen, made["chosen"])
    except Exception as exc:  # noqa: BLE001
        log.warning("QUANTIZE=auto chose %s %s for %s but it does not open (%s); serving "
                    "fp32", engine_name, made["chosen"], card.name, reason(exc))
        card, engine = open_card(card, chosen, "fp32")
        engine.info["fallback"] = f"{made['chosen']} did not open: {reason(exc)}"
    engine.info["auto"] = made
    return _as_asked(card, engine, settings)


def _provisional(source: ModelSource, card: ModelCard, settings: EngineSettings
                 ) -> tuple[ModelCard, Engine]:
    """While the trials run: the engine asked for (OpenVINO for ``auto``) in the precision
    asked for (fp32 for ``auto``); ``engine.info["auto"]`` says so, and says ``failed``
    and why if the trials fail."""
    from webapp.engines import trials  # trials imports this package: a loop at import

    fixed = replace(settings, engine="openvino" if settings.engine == "auto"
                    else settings.engine,
                    quantize="none" if settings.quantize == "auto" else settings.quantize)
    card, engine = _serve_fixed(source, fixed)
    serving = f"{engine.info['engine']} {engine.precision}"
    engine.info["auto"] = {"state": "measuring", "serving": serving,
                           "why": f"measuring the engines and precisions on this machine; "
                                  f"serving {serving} until then"}
    trials.start(card, settings, engine.info["auto"])
    return _as_asked(card, engine, settings)


def _as_asked(card: ModelCard, engine: Engine, settings: EngineSettings
              ) -> tuple[ModelCard, Engine]:
    """The card and engine info say the settings (QUANTIZE=auto), beside what runs."""
    engine.info["quantization"] = settings.quantize
    return replace(card, quantization=settings.quantize, engine_info=engine.info), engine


def open_card(card: ModelCard, settings: EngineSettings, precision: str
              ) -> tuple[ModelCard, Engine]:
    """Compile ``card``'s network (``precision``: fp32, bf16 or int8) on the configured
    runtime: the card as served (engine info filled in) and the engine."""
    cache = settings.cache
    started = time.perf_counter()
    if precision == "int8":
        name = int8_name(card.key, settings.calibration_dir or None)
    else:
        name = card.onnx
    runtime = "onnxruntime" if settings.engine == "torch" else settings.engine
    # One compilation at a time: OpenVINO writes its compiled network into the cache's
    # openvino/ folder without a lock, and a worker that read the file while another was
    # writing it failed to open the network (workers starting together); runtime._compile
    # holds a lock on that folder for every compilation (the background one too).
    engine = open_engine(cache.path(name), runtime, settings.threads, precision, settings.dual,
                         blobs=str(cache.path("openvino")), input_size=card.input_size)
    if card.kind == "onnx":
        _adapt_upload(engine, card)
    engine.info = {"engine": settings.engine, "quantization": settings.quantize,
                   "precision": engine.precision, "artefact": name, **engine.info,
                   "compile_seconds": round(time.perf_counter() - started, 3)}
    if precision == "int8":
        engine.info["calibration"] = f"photos in {settings.calibration_dir or 'calibration/'}"
    attach(engine, card, cache)
    card = replace(card, quantization=settings.quantize, engine_name=settings.engine,
                   engine_info=engine.info)
    return card, engine


def _adapt_upload(engine: Engine, card: ModelCard) -> None:
    """An uploaded ONNX model as the server expects a network: one image at a time when
    its batch is fixed, and logits from a softmax output (their log: the server's softmax
    then gives the model's own scores)."""
    run = engine.run
    if card.batch == 1:
        def one_by_one(batch):
            rows = [run(batch[i:i + 1])[0] for i in range(len(batch))]
            return np.concatenate(rows), None

        engine.run = one_by_one
    if card.outputs == "probabilities":
        scores = engine.run

        def logits(batch):
            return np.log(np.maximum(scores(batch)[0].astype(np.float32), 1e-30)), None

        engine.run = logits


def attach(engine: Engine, card: ModelCard, cache: ArtefactCache) -> None:
    """What the engine's feature output is used for beside the answer, read from the
    cache: the head weight heatmaps need, and the "I'm not sure" criterion."""
    engine.cam_weight = cam_weight(card, cache)
    engine.openset = scores.load(card, cache)


def cam_weight(card: ModelCard, cache: ArtefactCache):
    """The head weight heatmaps are computed with (``None`` without one)."""
    if not card.cam:
        return None
    import numpy as np

    with np.load(cache.path(card.cam["head"])) as head:
        return head["weight"]
