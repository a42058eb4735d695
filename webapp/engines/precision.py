"""The precision a model is served in, decided once per model and cached: its static int8
network (``QUANTIZE=static``, and a candidate of ``auto``) and ``QUANTIZE=auto``'s choice
by asking the engine.  No torch here: both work on the fp32 ONNX network a build left
in the engine cache (``webapp.engines.build``), in the builder child, the training job
runner, or a process that already has torch.

Static int8 is calibrated with ONNX Runtime's quantizer on the calibration photos,
preprocessed exactly as the server does (``webapp.engines.calibration``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np

from model_loader import ModelLoadError
from webapp.engines.artefacts import ArtefactCache, ModelCard
from webapp.engines.calibration import calibration_arrays, calibration_files, int8_name

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
FASTER = 0.9  # a candidate must take at most this share of fp32's time to be worth it


def guard_batch(card: ModelCard, cache: ArtefactCache) -> tuple[np.ndarray, str]:
    """The images int8 and bf16 must agree on with fp32, preprocessed as served: the
    model's own validation images when its checkpoint carries them (a fine-tuned model),
    else views of the calibration photos (real photos of many kinds: what an ImageNet
    model is judged on)."""
    if card.guard and cache.valid(card.guard):
        crops = np.load(cache.path(card.guard)).astype(np.float32) / 255.0
        mean = np.asarray(card.mean, np.float32)[:, None, None]
        std = np.asarray(card.std, np.float32)[:, None, None]
        return ((crops - mean) / std).astype(np.float32), "the model's own validation images"
    arrays = calibration_arrays(calibration_files(), card.input_size, card.mean, card.std,
                                limit=GUARD_VIEWS)
    return np.concatenate(arrays), "views of the calibration photos"


def _timed(engine, batch: np.ndarray) -> tuple[np.ndarray, float]:
    """The engine's logits for ``batch`` (in chunks of 8) and its median batch-1 time."""
    logits = np.concatenate([engine(batch[i:i + 8])[0] for i in range(0, len(batch), 8)])
    times = []
    for n in range(SPEED_PASSES):
        started = time.perf_counter()
        engine(batch[n % len(batch):n % len(batch) + 1])
        times.append((time.perf_counter() - started) * 1000)
    return logits, float(np.median(times))


def decide(card: ModelCard, cache: ArtefactCache, settings) -> dict:
    """QUANTIZE=auto, decided by asking the engine, not the CPU flags: each candidate
    precision (int8, then bf16 on OpenVINO) is built, compiled and run on the guard
    images; the first that works, answers like fp32 and takes at most ``FASTER`` of
    fp32's time is chosen, else fp32.  Answering like fp32 is two checks: the same top-1
    on at least ``settings.min_agreement`` of the guard images whose fp32 answer is
    clear-cut (its top-1 probability ``CLEAR_MARGIN`` above the second), and the
    probabilities moved by at most ``settings.max_score_change`` on average over the
    guard images (each image counting its largest change of any class's probability:
    int8 that keeps the top-1 but shifts the scores is refused, while one near-tie that
    moves under any numeric change does not refuse a good precision).  What was tried and
    why is kept (``decision_name``), for /readyz and the admin page; a candidate that
    could not be built or run is reported as failed, with its reason."""
    from webapp import engines
    from webapp.serving.classifier import softmax

    # Timed on one stream (a request alone); no second network compiling in the
    # background of a process that is about to exit.
    settings = dataclasses.replace(settings, dual=False)
    batch, guard_from = guard_batch(card, cache)
    _, fp32 = engines.open_card(card, settings, "fp32")
    reference, fp32_ms = _timed(fp32, batch)
    top1 = reference.argmax(1)
    probabilities = softmax(reference)
    # Near-ties (two cat breeds at 0.40 and 0.35) swap under any numeric change -- even
    # re-saving a JPEG; agreement is counted on the clear-cut answers.
    ordered = np.sort(probabilities, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] > CLEAR_MARGIN
    if clear.sum() < MIN_CLEAR:
        clear = np.ones(len(batch), dtype=bool)
    counted = (f"{int(clear.sum())} clear-cut answers of {len(batch)} {guard_from}"
               if not clear.all() else f"{len(batch)} {guard_from}")
    tried = [{"precision": "fp32", "works": True, "ms": round(fp32_ms, 2), "agreement": 1.0,
              "score_change": 0.0, "max_score_change": 0.0}]
    candidates = ["int8", "bf16"] if settings.engine == "openvino" else ["int8"]
    if card.kind == "onnx":
        candidates = [c for c in candidates if c != "int8"]
    chosen, why = "fp32", None
    bound = settings.max_score_change
    for precision in candidates:
        entry = _trial(card, cache, settings, precision, batch, top1, clear, probabilities)
        tried.append(entry)
        if not entry["works"]:
            continue
        if entry["agreement"] < settings.min_agreement:
            entry["rejected"] = (f"agrees with fp32 on {entry['agreement']:.1%} of {counted}, "
                                 f"under {settings.min_agreement:.0%}")
        elif entry["score_change"] > bound:
            entry["rejected"] = (f"moves the probabilities by {entry['score_change']:.3f} "
                                 f"on average over {len(batch)} {guard_from} (at most "
                                 f"{entry['max_score_change']:.3f}), over {bound:g}")
        elif entry["ms"] > FASTER * fp32_ms:
            entry["rejected"] = "not faster than fp32 here"
        else:
            chosen = precision
            why = (f"{precision}: {fp32_ms / entry['ms']:.1f}x fp32's speed, the same top-1 "
                   f"as fp32 on {entry['agreement']:.1%} of {counted}, probabilities "
                   f"{entry['score_change']:.3f} from fp32's on average")
            break
    if why is None:
        why = "fp32: " + "; ".join(
            f"{t['precision']} {t['rejected']}" if t.get("works") else
            f"{t['precision']} failed ({t['reason']})" for t in tried[1:]) if tried[1:] \
            else "fp32: no other precision to try with this engine"
    decision = {"chosen": chosen, "why": why, "guard": counted,
                "min_agreement": settings.min_agreement, "max_score_change": bound,
                "tried": tried}
    text = json.dumps(decision, indent=1)
    cache.put(engines.decision_name(card.key, settings), lambda tmp: tmp.write_text(text, "utf-8"))
    return decision


def _trial(card: ModelCard, cache: ArtefactCache, settings, precision: str,
           batch: np.ndarray, top1: np.ndarray, clear: np.ndarray,
           probabilities: np.ndarray) -> dict:
    """One candidate precision built, compiled and run on the guard images: its time,
    its agreement with fp32's top-1 (on the clear-cut answers, and on all) and how far
    it moved the probabilities (each image's largest change: their mean and their
    maximum), or why it does not work here."""
    from webapp import engines
    from webapp.serving.classifier import softmax

    entry = {"precision": precision}
    try:
        if precision == "int8":
            state = int8_or_reason(card, cache, settings.calibration_dir or None)
            if "error" in state:
                raise BuildError(state["error"])
        _, engine = engines.open_card(card, settings, precision)
        if engine.precision != precision:  # bf16 where the CPU has none: fp32 again
            raise BuildError(f"the engine runs it as {engine.precision}")
        logits, ms = _timed(engine, batch)
        if not np.isfinite(logits).all():
            raise BuildError("it gives NaN or infinite scores")
        same = logits.argmax(1) == top1
        change = np.abs(softmax(logits) - probabilities).max(axis=1)
        entry.update(works=True, ms=round(ms, 2),
                     agreement=round(float(same[clear].mean()), 4),
                     agreement_all=round(float(same.mean()), 4),
                     score_change=round(float(change.mean()), 4),
                     max_score_change=round(float(change.max()), 4))
    except Exception as exc:  # noqa: BLE001 - a candidate that fails is reported as failed
        entry.update(works=False, reason=reason(exc, 200))
    return entry
