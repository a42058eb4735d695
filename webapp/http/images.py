"""The images a request carries, and classifying them the way every entry point does
(``/predict``, the upload page's form, the admin's "try an image"): the upload fields,
``topk``, and the classification with its metrics and access-log note.  The work itself
is ``webapp.serving.prediction`` (no Flask there)."""

from __future__ import annotations

from collections.abc import Sequence

from flask import current_app, request

from webapp import current, imaging
from webapp.http import accesslog, metrics, timings
from webapp.http.errors import ApiError
from webapp.http.uploads import MAX_URLENCODED_BYTES, URLENCODED, raw_body
from webapp.i18n import current_language, translate
from webapp.messages import Message
from webapp.serving import prediction
from webapp.serving.prediction import Upload

__all__ = ["IMAGE_FIELDS", "MAX_TOPK", "Upload", "classify", "display_names", "parse_topk",
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
        raise ApiError(400, "too_many_images", Message(
            "%(count)s images sent; at most %(limit)s per request.", count=len(uploads),
            limit=limit))
    return uploads


def _no_image():
    """400 ``no_image``, saying how to send one (and what this request looked like)."""
    other = [] if request.mimetype == URLENCODED else sorted(request.files.keys())
    url = f"{request.host_url}predict"
    if other:
        message = Message(
            "No image received: the request has the file field(s) %(fields)s, but none "
            "named 'image'. Send it as a multipart form field named 'image', e.g. curl -F "
            "image=@cat.jpg %(url)s.", fields=", ".join(other), url=url)
    elif request.content_length and request.mimetype != "multipart/form-data":
        # e.g. curl --data-binary @cat.jpg, which says application/x-www-form-urlencoded
        message = Message(
            "No image received. Send it as a multipart form field named 'image', e.g. "
            "curl -F image=@cat.jpg %(url)s. A raw body works too when its Content-Type is "
            "an image type: curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg' "
            "%(url)s (this one came as %(type)s).", url=url,
            type=request.mimetype or Message("no Content-Type"))
    else:
        message = Message("No image received. Send it as a multipart form field named "
                          "'image', e.g. curl -F image=@cat.jpg %(url)s.", url=url)
    raise ApiError(400, "no_image", message)


def parse_topk(default: int = 3) -> int:
    raw = request.values.get("topk", request.values.get("k"))
    if raw is None or raw == "":
        return default
    try:
        k = int(raw)
    except ValueError:
        raise ApiError(400, "bad_topk", Message(
            "topk must be a whole number from 1 to %(limit)s.", limit=MAX_TOPK)) from None
    if not 1 <= k <= MAX_TOPK:
        raise ApiError(400, "bad_topk", Message(
            "topk must be from 1 to %(limit)s, not %(k)s.", limit=MAX_TOPK, k=k))
    return k


def display_names(labels) -> Sequence[str]:
    """What a model's classes are called in this request's language, by class index
    (``webapp.stores.label_names``)."""
    return current.label_names().names(labels, current_language())


def classify(uploads: list[Upload], k: int, classifier=None) -> tuple[dict, list]:
    """Decode every upload, classify them as one batch, and build the response body
    (``webapp.serving.prediction``; its ``timings_ms`` are the request's stages so far,
    ``webapp.http.timings``); also returns the decoded images.  Raises ``ImageError``
    naming the first bad file.  ``classifier``: another model than the served one (admin
    trials)."""
    timings.stopwatch().lap("parse")  # reading the uploads, since the last stage
    classifier = classifier or current.holder().get()
    try:
        result = prediction.classify(
            classifier, uploads, k, watch=timings.stopwatch(),
            max_pixels=current_app.config["MAX_IMAGE_PIXELS"],
            seconds=current_app.config["DECODE_TIMEOUT"],
            max_total_pixels=current_app.config["MAX_REQUEST_PIXELS"],
            names=display_names(classifier.labels), gap=current_app.config["DECODE_GAP"])
    except imaging.ImageError as exc:
        metrics.image_rejected(exc.code)
        raise
    metrics.observe_classification(result.decode_ms, result.timings)
    accesslog.note(model=classifier.model_id)
    # The built-in model's name is a catalog message ("... bundled fallback"): said in the
    # request's language; any other model's name stays as it was given.
    result.body["model"] = {**result.body["model"],
                            "name": translate(result.body["model"]["name"])}
    return result.body, result.images
