"""Every failure becomes a clear answer: JSON ``{"error": {"code", "message"}}`` for API
clients (``{"error": "message"}`` on the Open Inference Protocol's routes, as its specification
says), a friendly page for people.  Nothing a client sends should produce a 500."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from webapp.checkpoints.loaded import ModelLoadError
from webapp.http import accesslog, marks, metrics
from webapp.i18n import _l, translate
from webapp.imaging import ImageError
from webapp.messages import Message, reason

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def error_json(status: int, code: str, message: str, **extra):
    """The JSON error; ``message`` in the request's language (``code`` stays English), and
    so are the messages of ``extra`` (e.g. one per bad field: ``fields``)."""
    accesslog.note(error=code)
    if open_inference():  # the protocol's own error shape: the message alone
        return jsonify(error=translate(message)), status
    extra = {key: ({k: translate(v) if isinstance(v, Message) else v for k, v in value.items()}
                   if isinstance(value, dict) else value) for key, value in extra.items()}
    body = {"error": {"code": code, "message": translate(message), **extra}}
    return jsonify(body), status


def open_inference() -> bool:
    """A request of the Open Inference Protocol (its views are marked ``OPEN_INFERENCE``)."""
    return marks.OPEN_INFERENCE in marks.of_request()


def wants_json() -> bool:
    """Views marked ``JSON`` always answer JSON; others when the client prefers it."""
    if marks.JSON in marks.of_request():
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


# HTTP errors Werkzeug raises before a view runs, in plain words.
_HTTP_MESSAGES = {
    400: ("bad_request", _l("The request could not be understood.")),
    404: ("not_found", _l("There is nothing at this address.")),
    405: ("method_not_allowed", _l("This address does not accept that method.")),
    413: ("too_large", _l("The upload is too large.")),
}


def _respond(status: int, code: str, message: str, **extra):
    accesslog.note(error=code)
    if wants_json():
        return error_json(status, code, message, **extra)
    return render_template("error.html", status=status, message=translate(message)), status


def too_large(message: str, *, image: bool = True):
    """413: the form's own limits when it was the form (``form_too_large``), else
    ``message`` (``too_large``; counted as a refused image when ``image``)."""
    form = request.form_limit_message()
    if form:
        return _respond(413, "form_too_large", form)
    if image:
        metrics.image_rejected("too_large")
    return _respond(413, "too_large", message)


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return _respond(exc.status, exc.code, exc.message, **exc.extra)

    @app.errorhandler(ImageError)
    def _image_error(exc: ImageError):
        return _respond(exc.status, exc.code, exc.message)

    @app.errorhandler(ModelLoadError)
    def _model_error(exc: ModelLoadError):
        return _respond(503, "model_unavailable", Message(
            "The model is not available: %(reason)s", reason=reason(exc)))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        code, message = _HTTP_MESSAGES.get(status, ("http_error", exc.description or ""))
        if status == 413:
            return too_large(Message("The upload is larger than the %(mb)s MB limit.",
                                     mb=f"{app.config['MAX_UPLOAD_MB']:g}"))
        response = _respond(status, code, message)
        if status == 405 and exc.valid_methods:  # keep the Allow header
            resp = app.make_response(response)
            resp.headers["Allow"] = ", ".join(exc.valid_methods)
            return resp
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _respond(500, "internal_error", _l("Something went wrong on the server."))
