"""The images a request carries, and classifying them the way every entry point does
(``/predict``, the upload page's form, the admin's "try an image"): the upload fields,
``topk``, and the classification with its metrics and access-log note.  The work itself
is ``webapp.serving.prediction`` (no Flask there)."""

from __future__ import annotations

from flask import current_app, request

from webapp import current
from webapp.http import accesslog, metrics, timings
from webapp.http.errors import ApiError
from webapp.http.uploads import MAX_URLENCODED_BYTES, URLENCODED, raw_body
from webapp.serving import imaging, prediction
from webapp.serving.prediction import Upload

__all__ = ["IMAGE_FIELDS", "MAX_TOPK", "Upload", "classify", "parse_topk",
           "uploads_from_request"]

MAX_TOPK = 20
IMAGE_FIELDS = ("image", "file")


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


def classify(uploads: list[Upload], k: int, classifier=None) -> tuple[dict, list]:
    """Decode every upload, classify them as one batch, and build the response body
    (``webapp.serving.prediction``; its ``timings_ms`` are the request's stages so far,
    ``webapp.http.timings``); also returns the decoded images.  Raises ``ImageError``
    naming the first bad file.  ``classifier``: another model than the served one (admin
    trials)."""
    timings.stopwatch().lap("parse")  # reading the uploads, since the last stage
    classifier = classifier or current.holder().get()
    try:
        result = prediction.classify(classifier, uploads, k, watch=timings.stopwatch(),
                                     max_pixels=current_app.config["MAX_IMAGE_PIXELS"],
                                     seconds=current_app.config["DECODE_TIMEOUT"])
    except imaging.ImageError as exc:
        metrics.image_rejected(exc.code)
        raise
    metrics.observe_classification(result.decode_ms, result.timings)
    accesslog.note(model=classifier.model_id)
    return result.body, result.images
