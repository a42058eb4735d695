"""HTTP API: ``POST /predict``, ``POST /explain``, ``GET /healthz``, ``GET /readyz``."""

from __future__ import annotations

import base64
import io
import re
import time
from pathlib import Path
from urllib.parse import quote

from flask import Blueprint, current_app, jsonify, request

from model_loader import ModelLoadError
from webapp import accesslog, metrics
from webapp.errors import ApiError
from webapp.serving import explain as explaining
from webapp.serving import imaging, prediction
from webapp.serving.holder import ModelHolder
from webapp.serving.prediction import Upload
from webapp.uploads import MAX_URLENCODED_BYTES, URLENCODED, raw_body

bp = Blueprint("api", __name__)

MAX_TOPK = 20
IMAGE_FIELDS = ("image", "file")


def holder() -> ModelHolder:
    return current_app.extensions["model_holder"]


def uploads_from_request() -> list[Upload]:
    """The images in this request: multipart fields ``image`` (or ``file``), several
    allowed, or a raw ``image/*`` body."""
    if request.mimetype == URLENCODED and (request.content_length or 0) > MAX_URLENCODED_BYTES:
        # curl --data-binary @cat.jpg says x-www-form-urlencoded: a photo, not a form. Say
        # how to send it rather than refuse it as a form too large to parse (not parsed).
        _no_image()
    uploads = [
        Upload(f.filename or f"image-{n + 1}", f.read())
        for field in IMAGE_FIELDS
        for n, f in enumerate(request.files.getlist(field))
    ]
    if not uploads and request.mimetype.startswith("image/"):
        uploads = [Upload("body", raw_body())]
    if not uploads:
        _no_image()
    limit = current_app.config["MAX_IMAGES_PER_REQUEST"]
    if len(uploads) > limit:
        raise ApiError(
            400, "too_many_images", f"{len(uploads)} images sent; at most {limit} per request."
        )
    return uploads


def _no_image():
    """400 ``no_image``, saying how to send one (and what this request looked like)."""
    other = [] if request.mimetype == URLENCODED else sorted(request.files.keys())
    hint = f" (found file field(s): {', '.join(other)})" if other else ""
    if not other and request.content_length and request.mimetype != "multipart/form-data":
        # e.g. curl --data-binary @cat.jpg, which says application/x-www-form-urlencoded
        hint = (f". A raw body works too when its Content-Type is an image type: "
                f"curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg' "
                f"{request.host_url}predict (this one came as "
                f"{request.mimetype or 'no Content-Type'})")
    raise ApiError(
        400,
        "no_image",
        "No image received. Send it as a multipart form field named 'image', e.g. "
        f"curl -F image=@cat.jpg {request.host_url}predict{hint}.",
    )


def parse_topk(default: int = 3) -> int:
    raw = request.values.get("topk", request.values.get("k"))
    if raw is None or raw == "":
        return default
    try:
        k = int(raw)
    except ValueError:
        raise ApiError(
            400, "bad_topk", f"topk must be a whole number from 1 to {MAX_TOPK}."
        ) from None
    if not 1 <= k <= MAX_TOPK:
        raise ApiError(400, "bad_topk", f"topk must be from 1 to {MAX_TOPK}, not {k}.")
    return k


def classify(
    uploads: list[Upload], k: int, started: float | None = None, classifier=None
) -> tuple[dict, list]:
    """Decode every upload, classify them as one batch, and build the response body
    (``webapp.serving.prediction``); also returns the decoded images.  Raises
    ``ImageError`` naming the first bad file.  ``classifier``: another model than the
    served one (admin trials)."""
    classifier = classifier or holder().get()
    try:
        result = prediction.classify(classifier, uploads, k, started=started,
                                     max_pixels=current_app.config["MAX_IMAGE_PIXELS"],
                                     seconds=current_app.config["DECODE_TIMEOUT"])
    except imaging.ImageError as exc:
        metrics.image_rejected(exc.code)
        raise
    metrics.observe_classification(result.decode_ms, result.timings)
    accesslog.note(model=classifier.model_id)
    return result.body, result.images


def _round(timings: dict) -> dict:
    return {key: round(value, 2) for key, value in timings.items()}


@bp.post("/predict")
def predict():
    started = time.perf_counter()
    uploads = uploads_from_request()  # first: a photo sent as a form is not parsed as one
    body, _ = classify(uploads, parse_topk(), started)
    return jsonify(body)


@bp.post("/explain")
def explain():
    """The preprocessing steps and a heatmap for one image (webapp/serving/explain.py):
    JSON with base64 PNGs, or the heatmap over the crop as a PNG for ``Accept: image/png``."""
    started = time.perf_counter()
    uploads = uploads_from_request()
    k = parse_topk()
    if len(uploads) > 1:
        raise ApiError(400, "too_many_images", "Send one image to /explain at a time.")
    classifier = holder().get()
    index = _class_index(classifier.num_classes)
    t0 = time.perf_counter()
    try:
        img = imaging.load(
            uploads[0].data,
            max_pixels=current_app.config["MAX_IMAGE_PIXELS"],
            min_side=classifier.resize_size,
            seconds=current_app.config["DECODE_TIMEOUT"],
        )
    except imaging.ImageError as exc:
        metrics.image_rejected(exc.code)
        raise
    decode_ms = (time.perf_counter() - t0) * 1000
    accesslog.note(model=classifier.model_id)
    try:
        result = explaining.explain(classifier, img, index=index, k=k)
    except explaining.ExplainUnsupported as exc:
        raise ApiError(501, "explain_unsupported", f"Cannot explain this model: {exc}.") from None
    if request.accept_mimetypes.best_match(["application/json", "image/png"]) == "image/png":
        response = current_app.response_class(_png(result.overlay), mimetype="image/png")
        response.headers["X-Explained-Label"] = quote(result.target.label)  # URL-encoded
        response.headers["X-Explained-Index"] = str(result.target.index)
        return response
    size = classifier.loaded.input_size
    body = dict(
        model=classifier.info,
        predictions=[p.as_dict() for p in result.predictions],
        explained=result.target.as_dict(),
        explanation=result.sentences,
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
                "title": step.title,
                "caption": step.caption,
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
        raise ApiError(
            400,
            "bad_class_index",
            f"class_index must be a whole number from 0 to {num_classes - 1}, not {raw!r}.",
        )
    return index


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=3)
    return buf.getvalue()


def _b64png(img) -> str:
    return base64.b64encode(_png(img)).decode("ascii")


@bp.get("/healthz")
def healthz():
    """Alive: the process answers.  Says nothing about the model (see /readyz)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Ready: the model is loaded and answering.  503 with the reason otherwise.  Anyone
    may ask, so no server path is in the answer: a file's name says enough."""
    try:
        classifier = holder().get()
    except ModelLoadError as exc:
        return jsonify(status="error", error=_without_paths(str(exc))), 503
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
        notice=holder().notice or loaded.notice,
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
    registry = holder().registry
    if registry is None:
        return None
    active = registry.state().active
    return {"active": active, "serving": classifier.model_id,
            "in_sync": active == classifier.model_id}
