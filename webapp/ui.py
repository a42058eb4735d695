"""The upload page.  With JavaScript, the page posts to ``/predict`` and draws the bars
itself; without it, the form posts here and the server renders the same result."""

from __future__ import annotations

import base64
import io
import time

from flask import Blueprint, render_template
from PIL import Image

from model_loader import ModelLoadError
from webapp import api
from webapp.serving import imaging

bp = Blueprint("ui", __name__)

TOP_K = 3


def _model_status():
    try:
        return api.holder().get().loaded, None
    except ModelLoadError as exc:
        return None, str(exc)


def _thumbnail(img: Image.Image) -> str:
    """A small JPEG data URI of the upload for the result page; nothing touches disk."""
    img = img.copy()
    img.thumbnail((480, 480))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@bp.get("/")
def index():
    model, error = _model_status()
    return render_template("index.html", model=model, model_error=error)


@bp.post("/")
def index_post():
    """The no-JavaScript path: same work as /predict, rendered as HTML."""
    started = time.perf_counter()
    model, error = _model_status()
    result = alert = preview = None
    status = 200
    try:
        uploads = api.uploads_from_request()[:1]
        result, images = api.classify(uploads, TOP_K, started)
        preview = _thumbnail(images[0])
    except (api.ApiError, imaging.ImageError) as exc:
        alert, status = exc.message, exc.status
    return (
        render_template(
            "index.html",
            model=model,
            model_error=error,
            result=result,
            alert=alert,
            preview=preview,
        ),
        status,
    )
