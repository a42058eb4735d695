"""The upload page.  With JavaScript, the page posts to ``/predict`` and draws the bars
itself; without it, the form posts here and the server renders the same result.

The page speaks to visitors: what the server owner needs to know (a fallback model, the
engine, quantization) is in the admin area, ``/readyz`` and the logs, never here."""

from __future__ import annotations

import base64
import io

from flask import Blueprint, render_template, request
from PIL import Image

from webapp import current, imaging
from webapp.checkpoints.loaded import ModelLoadError
from webapp.config import PROJECT_ROOT
from webapp.http import capacity
from webapp.http.errors import ApiError
from webapp.http.images import Upload, classify, uploads_from_request
from webapp.i18n import _, _l
from webapp.messages import Message

bp = Blueprint("ui", __name__)

TOP_K = 3
# The "Try an example" row: (file in static/examples/, what it shows).  Provenance and
# licences: static/examples/README.md.
EXAMPLES = (("cat", _l("A cat")), ("coffee", _l("A cup of coffee")),
            ("rocket", _l("A rocket launch")))
EXAMPLES_DIR = PROJECT_ROOT / "static" / "examples"


def _model_status():
    try:
        return current.holder().get().loaded, None
    except ModelLoadError:
        # The reason (a path, a setting) is for the owner: /readyz and the log have it.
        return None, _("The computer that answers is not ready. Please tell whoever runs it.")


def _thumbnail(img: Image.Image) -> str:
    """A small JPEG data URI of the upload for the result page; nothing touches disk."""
    img = img.copy()
    img.thumbnail((480, 480))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _uploads() -> list[Upload]:
    """The photo posted with the form, or the example picked (its button's value)."""
    example = request.form.get("example")
    if example and not request.files:
        if example not in dict(EXAMPLES):
            raise ApiError(400, "unknown_example", Message("There is no such example photo."))
        path = EXAMPLES_DIR / f"{example}.jpg"
        return [Upload(path.name, path.read_bytes())]
    return uploads_from_request()[:1]


def _render(status: int = 200, **result):
    model, error = _model_status()
    page = render_template("index.html", model=model, model_error=error, examples=EXAMPLES,
                           formats=imaging.FRIENDLY_FORMATS,
                           top_k=TOP_K, **result)
    return page, status


@bp.get("/")
def index():
    return _render()


@bp.post("/")
@capacity.upload_slot
def index_post():
    """The no-JavaScript path: same work as /predict, rendered as HTML."""
    try:
        result, images = classify(_uploads(), TOP_K)
    except (ApiError, imaging.ImageError) as exc:
        return _render(exc.status, alert=exc.message)
    return _render(result=result, preview=_thumbnail(images[0]))
