"""HTTP API: ``POST /predict``, ``POST /explain``, ``GET /healthz``, ``GET /readyz``."""

from __future__ import annotations

import base64
import io
import re
import time
from pathlib import Path
from urllib.parse import quote

from flask import Blueprint, current_app, jsonify, request

from webapp import current, imaging
from webapp.checkpoints.loaded import ModelLoadError
from webapp.http import accesslog, capacity, marks, metrics, timings
from webapp.http.errors import ApiError
from webapp.http.images import classify, display_names, parse_topk, uploads_from_request
from webapp.i18n import translate
from webapp.messages import Message, reason
from webapp.serving import explain as explaining

bp = Blueprint("api", __name__)

def _round(timings: dict) -> dict:
    return {key: round(value, 2) for key, value in timings.items()}


@bp.post("/predict")
@marks.mark(marks.JSON, marks.NO_STORE)
@capacity.upload_slot
def predict():
    watch = timings.stopwatch()
    watch.lap("queue")  # for a thread and an upload slot
    uploads = uploads_from_request()  # first: a photo sent as a form is not parsed as one
    body, images = classify(uploads, parse_topk())
    response = timings.json_answer(body, watch)
    # A 12 MP photo's pixels take ms to give back to the system: after the answer is sent.
    response.call_on_close(images.clear)
    return response


@bp.post("/explain")
@marks.mark(marks.JSON, marks.NO_STORE)
@capacity.upload_slot
def explain():
    """The preprocessing steps and a heatmap for one image (webapp/serving/explain.py):
    JSON with base64 PNGs, or the heatmap over the crop as a PNG for ``Accept: image/png``."""
    started = time.perf_counter()
    uploads = uploads_from_request()
    k = parse_topk()
    if len(uploads) > 1:
        raise ApiError(400, "too_many_images", Message("Send one image to /explain at a time."))
    classifier = current.holder().get()
    index = _class_index(classifier.num_classes)
    t0 = time.perf_counter()
    try:
        img = imaging.load(
            uploads[0].data,
            max_pixels=current_app.config["MAX_IMAGE_PIXELS"],
            min_side=classifier.resize_size,
            seconds=current_app.config["DECODE_TIMEOUT"],
            gap=current_app.config["DECODE_GAP"],
        )
    except imaging.ImageError as exc:
        metrics.image_rejected(exc.code)
        raise
    decode_ms = (time.perf_counter() - t0) * 1000
    accesslog.note(model=classifier.model_id)
    try:
        result = explaining.explain(classifier, img, index=index, k=k)
    except explaining.ExplainUnsupported as exc:
        raise ApiError(501, "explain_unsupported", Message(
            "Cannot explain this model: %(reason)s.", reason=exc.args[0])) from None
    if request.accept_mimetypes.best_match(["application/json", "image/png"]) == "image/png":
        response = current_app.response_class(_png(result.overlay), mimetype="image/png")
        response.headers["X-Explained-Label"] = quote(result.target.label)  # URL-encoded
        response.headers["X-Explained-Index"] = str(result.target.index)
        return response
    size = classifier.loaded.input_size
    names = display_names(classifier.labels)
    body = dict(
        model=classifier.info,
        predictions=[p.as_dict(names) for p in result.predictions],
        explained=result.target.as_dict(names),
        explanation=result.sentences(names[result.target.index],
                                     translate(explaining.EXPLANATION_TEMPLATE)),
        heatmap={
            "layer": result.layer,
            "grid": list(result.grid),
            "width": size,
            "height": size,
            "overlay_png": _b64png(result.overlay),
            "heatmap_png": _b64png(result.heatmap_image),
        },
        steps=[
            {
                "name": step.name,
                "title": translate(step.title),
                "caption": translate(step.caption),
                "width": step.image.width,
                "height": step.image.height,
                "png": _b64png(step.image),
            }
            for step in result.steps
        ],
    )
    total = (time.perf_counter() - started) * 1000  # PNG encoding included
    body["timings_ms"] = _round({"decode": decode_ms, **result.timings_ms, "total": total})
    return jsonify(body)


def _class_index(num_classes: int) -> int | None:
    raw = request.values.get("class_index")
    if raw is None or raw == "":
        return None
    try:
        index = int(raw)
    except ValueError:
        index = -1
    if not 0 <= index < num_classes:
        raise ApiError(400, "bad_class_index", Message(
            "class_index must be a whole number from 0 to %(last)s, not %(given)s.",
            last=num_classes - 1, given=repr(raw)[:40]))
    return index


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=3)
    return buf.getvalue()


def _b64png(img) -> str:
    return base64.b64encode(_png(img)).decode("ascii")


@bp.get("/healthz")
@marks.mark(marks.JSON)
def healthz():
    """Alive: the process answers.  Says nothing about the model (see /readyz)."""
    return jsonify(status="ok")


@bp.get("/readyz")
@marks.mark(marks.JSON, marks.NO_STORE)
def readyz():
    """Ready: the model is loaded and answering.  503 with the reason otherwise.  Anyone
    may ask, so no server path is in the answer: a file's name says enough."""
    try:
        classifier = current.holder().get()
    except Exception as exc:  # noqa: BLE001 - not ready, whatever the reason: 503, never 500
        why = reason(exc) if isinstance(exc, ModelLoadError) else Message(
            "The model could not be loaded: %(reason)s",
            reason=str(exc).strip() or type(exc).__name__)
        return jsonify(status="error", error=_without_paths(translate(why))), 503
    loaded = classifier.loaded
    return jsonify(_without_paths(dict(
        status="ready",
        model={
            **classifier.info,
            "source": loaded.source_kind,
            "file": Path(loaded.source).name if loaded.source else None,
            "classes": loaded.num_classes,
            "input_size": loaded.input_size,
            "verified": loaded.verified,
        },
        engine=loaded.engine_info,
        notice=translate(current.holder().notice or loaded.notice or "") or None,
        registry=_registry_status(classifier),
        torch_threads=current_app.config["TORCH_THREADS"],
    )))


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])~?/(?:[^\s/:;,'\"()`]+/)+([^\s/:;,'\"()`]+)")


def _without_paths(value):
    """Every absolute path in ``value`` (strings, lists, dicts) cut to its last part."""
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(r"\1", value)
    if isinstance(value, dict):
        return {key: _without_paths(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_paths(item) for item in value]
    return value


def _registry_status(classifier) -> dict | None:
    """Which model the store says is active, and whether this process serves it."""
    registry = current.holder().registry
    if registry is None:
        return None
    state = registry.state()
    return {"active": state.active, "serving": classifier.model_id,
            "in_sync": state.active == classifier.model_id and state.problem is None}
