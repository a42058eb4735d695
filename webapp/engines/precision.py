"""The precision a model is served in, decided once per model and cached: its static int8
network (``QUANTIZE=static``, and a candidate of ``auto``) and ``QUANTIZE=auto``'s choice
by asking the engine (``decide``; kept in the engine cache under ``decision_name``, read
back with ``decision``).  No torch here: both work on the fp32 ONNX network a build left
in the engine cache (``webapp.engines.build``), in the builder child, the training job
runner, or a process that already has torch.

Static int8 is calibrated with ONNX Runtime's quantizer on the calibration photos,
preprocessed exactly as the server does (``webapp.engines.calibration``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np

from webapp import config
from webapp.checkpoints.loaded import ModelLoadError
from webapp.engines.artefacts import ArtefactCache, ModelCard
from webapp.engines.calibration import calibration_arrays, calibration_files, int8_name
from webapp.engines.compilation import open_card
from webapp.engines.runtime import cpu_signature
from webapp.engines.settings import EngineSettings
from webapp.scores import softmax

log = logging.getLogger(__name__)


class BuildError(ModelLoadError):
    """The model cannot be converted for serving; the message says why."""


def reason(exc: Exception, limit: int = 300) -> str:
    """Why a step failed, in one line: the first line of the error, else its type."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def quantize_onnx(fp32_path: Path, arrays: list[np.ndarray], path: Path) -> None:
    """Static int8 QDQ ONNX: per-channel symmetric int8 weights, uint8 activations,
    ranges from the calibration arrays (min/max)."""
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
            self._items = iter([{"input": a} for a in arrays])

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


def build_int8(card: ModelCard, cache: ArtefactCache,
               calibration_dir: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """The static int8 network of ``card`` (built once, cached): (path, reused)."""
    if card.kind == "onnx":
        raise BuildError("QUANTIZE=static is not made for uploaded ONNX models (their "
                         "graphs are not ours to calibrate): they are served in fp32")
    name, files = int8_name(card.key, calibration_dir), calibration_files(calibration_dir)

    def build(tmp: Path) -> None:
        arrays = calibration_arrays(files, card.input_size, card.mean, card.std)
        started = time.perf_counter()
        quantize_onnx(cache.path(card.onnx), arrays, tmp)
        log.info("calibrated %s on %d views in %.1f s", card.name, len(arrays),
                 time.perf_counter() - started)

    return cache.get(name, build)


def int8_or_reason(card: ModelCard, cache: ArtefactCache,
                   calibration_dir: str | os.PathLike | None = None) -> dict:
    """Build the int8 network, or record why it cannot be built (``<entry>.error`` in the
    cache, so no worker tries again with the same calibration set): the model is then
    served in fp32, and /readyz says why."""
    name = int8_name(card.key, calibration_dir)
    try:
        build_int8(card, cache, calibration_dir)
        return {"file": name}
    except Exception as exc:  # noqa: BLE001 - any failure: fp32 serves, and says why
        why = reason(exc)
        cache.put(f"{name}.error", lambda tmp: tmp.write_text(why + "\n", "utf-8"))
        return {"error": why}


# --------------------------------------------------------------------------- QUANTIZE=auto

GUARD_VIEWS = 96  # calibration photo views for a model without guard images of its own
CLEAR_MARGIN = 0.1  # fp32's top-1 probability above its second: a clear-cut answer
MIN_CLEAR = 10  # fewer clear-cut guard images than this: every guard image counts
SPEED_PASSES = 12  # batch-1 passes per candidate when timing (median)
FASTER = 0.9  # a reduced precision must take at most this share of fp32's time
RUNTIMES = ("openvino", "onnxruntime")  # what ENGINE=auto chooses between


# Where the guard images come from (``guard_batch``), as the decision names them.
GUARD_SOURCES = {"validation": "the model's own validation images",
                 "calibration": "views of the calibration photos"}


def guard_batch(card: ModelCard, cache: ArtefactCache) -> tuple[np.ndarray, str]:
    """The images int8 and bf16 must agree on with fp32, preprocessed as served, and
    where they come from (a key of ``GUARD_SOURCES``): the model's own validation images
    when its checkpoint carries them (a fine-tuned model), else views of the calibration
    photos (real photos of many kinds: what an ImageNet model is judged on)."""
    if card.guard and cache.valid(card.guard):
        crops = np.load(cache.path(card.guard)).astype(np.float32) / 255.0
        mean = np.asarray(card.mean, np.float32)[:, None, None]
        std = np.asarray(card.std, np.float32)[:, None, None]
        return ((crops - mean) / std).astype(np.float32), "validation"
    arrays = calibration_arrays(calibration_files(), card.input_size, card.mean, card.std,
                                limit=GUARD_VIEWS)
    return np.concatenate(arrays), "calibration"


def engines_tried(settings) -> tuple[tuple[str, ...], str | None]:
    """The engines ``ENGINE`` lets the trials compare, and why one is left out.  Under
    ``ONEDNN_MAX_CPU_ISA`` (OpenVINO's instruction-set cap, e.g. AVX2 to stand for a
    common PC) ONNX Runtime is not tried: it picks its kernels from the CPU's own flags
    and would be measured with the instructions the cap takes away."""
    if settings.engine != "auto":
        return (settings.engine,), None
    if config.given("ONEDNN_MAX_CPU_ISA"):
        return ("openvino",), ("onnxruntime not tried: ONEDNN_MAX_CPU_ISA caps OpenVINO, and "
                               "ONNX Runtime ignores it")
    return RUNTIMES, None


def candidates(card: ModelCard, settings) -> list[tuple[str, str]]:
    """The (engine, precision) pairs the trials time: each engine ``ENGINE`` allows with
    each precision ``QUANTIZE`` allows (``auto``: fp32, bf16 on OpenVINO, int8 but not for
    an uploaded ONNX model), fp32 first."""
    runtimes, _ = engines_tried(settings)
    wanted = {"auto": ("fp32", "bf16", "int8"), "none": ("fp32",), "bf16": ("bf16",),
              "static": ("int8",)}.get(settings.quantize, ("fp32",))
    pairs = [(engine, precision) for precision in wanted for engine in runtimes
             if not (precision == "bf16" and engine != "openvino")
             and not (precision == "int8" and card.kind == "onnx")]
    return pairs or [(engine, "fp32") for engine in runtimes]


def parse_handicap(text: str) -> dict[tuple[str, str], float]:
    """``AUTO_HANDICAP_MS``: ``engine:precision=ms`` pairs, comma-separated
    (``openvino:int8=5,onnxruntime:fp32=2``) -> {(engine, precision): ms}."""
    handicap = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, ms = item.partition("=")
        engine, _, precision = name.strip().partition(":")
        try:
            handicap[(engine.strip(), precision.strip())] = float(ms)
        except ValueError:
            raise ValueError(f"AUTO_HANDICAP_MS: {item!r} is not engine:precision=ms") \
                from None
    return handicap


def _logits(engine, batch: np.ndarray) -> np.ndarray:
    """The engine's logits for ``batch``, in chunks of 8."""
    return np.concatenate([engine(batch[i:i + 8])[0] for i in range(0, len(batch), 8)])


def _time_round_robin(runs: dict, batch: np.ndarray, handicap: dict) -> dict:
    """Median batch-1 ms of each engine in ``runs``, timed in turns (one pass of each,
    then the next round): a busy moment of the machine slows every candidate alike.  A
    candidate's handicap (ms) is slept inside its timed pass."""
    times: dict = {name: [] for name in runs}
    for n in range(SPEED_PASSES):
        one = batch[n % len(batch):n % len(batch) + 1]
        for name, engine in runs.items():
            started = time.perf_counter()
            engine(one)
            if handicap.get(name):
                time.sleep(handicap[name] / 1000)
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: float(np.median(values)) for name, values in times.items()}


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


def decide(card: ModelCard, cache: ArtefactCache, settings) -> dict:
    """``QUANTIZE=auto`` / ``ENGINE=auto``, decided by measuring on this machine, not by
    the CPU's flags: every candidate (``candidates``: engine x precision) is built,
    compiled and run on the guard images, then timed in turns; the fastest that answers
    like fp32 is chosen.  A reduced precision (int8, bf16) must also take at most
    ``FASTER`` of the fastest fp32's time, else the fastest fp32 is chosen (exact answers
    are worth a near-tie).

    Answering like fp32 (``QUANTIZE=auto`` only; a precision that was asked for is served
    as asked) is two checks: the same top-1 on at least ``settings.min_agreement`` of the
    guard images whose fp32 answer is clear-cut (its top-1 probability ``CLEAR_MARGIN``
    above the second), and no probability of any guard image moved by more than
    ``settings.max_score_change`` (int8 that keeps the top-1 but shifts the scores is
    refused: with the defaults, what is served answers within 0.01 of fp32).  What was
    tried and why is kept (``decision_name``), for /readyz, the admin page and the log; a
    candidate that could not be built or run is reported as failed, with its reason.
    ``settings.handicap``: ms slept in the timed passes of some candidates
    (``AUTO_HANDICAP_MS``)."""
    started = time.perf_counter()
    # Timed on one stream (a request alone); no second network compiling in the
    # background of a process that is about to exit.
    settings = dataclasses.replace(settings, dual=False)
    batch, source = guard_batch(card, cache)
    guard_from = GUARD_SOURCES[source]
    pairs = candidates(card, settings)
    tried, runs, logits = [], {}, {}
    for engine, precision in pairs:
        entry = {"engine": engine, "precision": precision}
        try:
            run = _open(card, cache, settings, engine, precision)
            logits[(engine, precision)] = _logits(run, batch)
            run(batch[:1])  # and one alone, as timed and served
            if not np.isfinite(logits[(engine, precision)]).all():
                raise BuildError("it gives NaN or infinite scores")
            runs[(engine, precision)] = run
            entry["works"] = True
        except Exception as exc:  # noqa: BLE001 - a candidate that fails is reported as failed
            entry.update(works=False, reason=reason(exc, 200))
        tried.append(entry)
    reference = next((logits[p] for p in pairs if p[1] == "fp32" and p in logits), None)
    if reference is None:  # fp32 is not a candidate (QUANTIZE=static): the guard's answers
        reference = _logits(_open(card, cache, settings, pairs[0][0], "fp32"), batch)
    speed = _time_round_robin(runs, batch, parse_handicap(getattr(settings, "handicap", "")))
    probabilities = softmax(reference)
    top1 = reference.argmax(1)
    # Near-ties (two cat breeds at 0.40 and 0.35) swap under any numeric change -- even
    # re-saving a JPEG; agreement is counted on the clear-cut answers.
    ordered = np.sort(probabilities, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] > CLEAR_MARGIN
    if clear.sum() < MIN_CLEAR:
        clear = np.ones(len(batch), dtype=bool)
    counted = (f"{int(clear.sum())} clear-cut answers of {len(batch)} {guard_from}"
               if not clear.all() else f"{len(batch)} {guard_from}")
    for entry in tried:
        name = (entry["engine"], entry["precision"])
        if name in runs:
            same = logits[name].argmax(1) == top1
            change = np.abs(softmax(logits[name]) - probabilities).max(axis=1)
            entry.update(ms=round(speed[name], 2),
                         agreement=round(float(same[clear].mean()), 4),
                         agreement_all=round(float(same.mean()), 4),
                         score_change=round(float(change.mean()), 4),
                         max_score_change=round(float(change.max()), 4))
    chosen = _choose(tried, settings, counted, len(batch), guard_from)
    runtimes, left_out = engines_tried(settings)
    decision = {"chosen": chosen["precision"], "engine": chosen["engine"],
                "why": _why(chosen, tried, counted, left_out), "guard": counted,
                "guard_views": len(batch), "guard_source": source,
                "guard_clear": None if clear.all() else int(clear.sum()),
                "min_agreement": settings.min_agreement,
                "max_score_change": settings.max_score_change,
                "tried": tried, "engines": list(runtimes),
                "threads": settings.threads, "cpu": cpu_name(),
                "seconds": round(time.perf_counter() - started, 1)}
    if left_out:
        decision["left_out"] = left_out
    text = json.dumps(decision, indent=1)
    cache.put(decision_name(card.key, settings), lambda tmp: tmp.write_text(text, "utf-8"))
    return decision


def _open(card: ModelCard, cache: ArtefactCache, settings, engine: str, precision: str):
    """One candidate compiled (its int8 network built first when needed); ``BuildError``
    when it cannot run as that precision here."""
    if precision == "int8":
        state = int8_or_reason(card, cache, settings.calibration_dir or None)
        if "error" in state:
            raise BuildError(state["error"])
    _, served = open_card(card, dataclasses.replace(settings, engine=engine), precision)
    if served.precision != precision:  # bf16 where the CPU has none: fp32 again
        raise BuildError(f"the engine runs it as {served.precision}")
    return served


def _choose(tried: list[dict], settings, counted: str, n: int, guard_from: str) -> dict:
    """The candidate served, and on every other working one why it was not: ``verdict``
    (``disagrees``, ``moves_scores``, ``not_faster``, ``slower``: what the admin page
    words in the reader's language) and ``rejected`` (the same in an English sentence,
    with its figures, for the log and /readyz)."""
    working = [t for t in tried if t.get("works")]
    guarded = settings.quantize == "auto"
    bound = settings.max_score_change
    for entry in working:
        if not guarded or entry["precision"] == "fp32":
            continue
        if entry["agreement"] < settings.min_agreement:
            entry["verdict"] = "disagrees"
            entry["rejected"] = (f"agrees with fp32 on {entry['agreement']:.1%} of {counted}, "
                                 f"under {settings.min_agreement:.0%}")
        elif entry["max_score_change"] > bound:
            entry["verdict"] = "moves_scores"
            entry["rejected"] = (f"moves a probability by up to "
                                 f"{entry['max_score_change']:.3f} over {n} {guard_from} "
                                 f"({entry['score_change']:.3f} on average), over {bound:g}")
    eligible = [t for t in working if "rejected" not in t]
    if not eligible:  # nothing runs: fp32 on the first engine, whose failure says why
        return next((t for t in tried if t["precision"] == "fp32"), tried[0])
    exact = [t for t in eligible if t["precision"] == "fp32"]
    reduced = [t for t in eligible if t["precision"] != "fp32"]
    best_exact = min(exact, key=lambda t: t["ms"]) if exact else None
    best_reduced = min(reduced, key=lambda t: t["ms"]) if reduced else None
    if best_exact and best_reduced and guarded \
            and best_reduced["ms"] > FASTER * best_exact["ms"]:
        for entry in reduced:
            entry["verdict"] = "not_faster"
            entry["rejected"] = (f"not faster than fp32 here ({entry['ms']:.2f} ms against "
                                 f"{best_exact['engine']} fp32's {best_exact['ms']:.2f})")
        chosen = best_exact
    else:
        chosen = best_reduced or best_exact
    for entry in eligible:
        if entry is not chosen and "rejected" not in entry:
            entry["verdict"] = "slower"
            entry["rejected"] = (f"slower: {entry['ms']:.2f} ms a pass against "
                                 f"{chosen['ms']:.2f}")
    return chosen


def _why(chosen: dict, tried: list[dict], counted: str, left_out: str | None) -> str:
    """One sentence on the choice, then why each other candidate was not taken."""
    name = f"{chosen['engine']} {chosen['precision']}"
    if not chosen.get("works"):
        return f"{name}: nothing else could run here ({chosen.get('reason')})"
    exact = [t for t in tried if t.get("works") and t["precision"] == "fp32"]
    fastest_exact = min((t["ms"] for t in exact), default=None)
    text = f"{name}: {chosen['ms']:.2f} ms a pass"
    if chosen["precision"] != "fp32" and fastest_exact:
        text += (f", {fastest_exact / chosen['ms']:.1f}x fp32's speed, the same top-1 as fp32 "
                 f"on {chosen['agreement']:.1%} of {counted}, probabilities "
                 f"at most {chosen['max_score_change']:.3f} from fp32's")
    others = [f"{t['engine']} {t['precision']} {t['rejected']}" if t.get("works") else
              f"{t['engine']} {t['precision']} failed ({t['reason']})"
              for t in tried if t is not chosen]
    return "; ".join([text, *others, *([left_out] if left_out else [])])


def cpu_name() -> str:
    """The CPU's model name (what a decision was measured on)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"
