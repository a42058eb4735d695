"""Request bodies.  Uploaded images stay in memory (Werkzeug would spool files over
500 KB to a temporary file, and photos must never be written to disk; MAX_CONTENT_LENGTH
bounds them).  A few routes take big files — checkpoints, dataset archives — with a
size limit of their own; their file parts go to a temporary file in the store they are
meant for (same file system: storing is a rename) and are removed after the request,
whatever happened.

What a body may cost before any of it is used (the budget of each entry point):

* **Forms.**  Werkzeug parses an URL-encoded body whole, with no limit but the body's
  (19 MB of ``a=&a=&...`` cost +930 MB and 9 s); here such a body may be at most
  ``MAX_URLENCODED_BYTES`` (64 KB: the largest form of this app is a few hundred bytes,
  and 64 KB of empty fields parse in 50 ms).  A multipart form keeps Flask's limits:
  ``MAX_FORM_PARTS`` (1000) parts, ``MAX_FORM_MEMORY_SIZE`` (500 KB) per text field.
  413 ``form_too_large``, with its own message.
* **JSON** (settings, names, training options) is at most ``MAX_JSON_BYTES`` and nested
  at most ``MAX_JSON_DEPTH`` deep (Python's parser recurses once per level: 413/400).
* **Chunked bodies** count against the same limits as any other: Werkzeug stops
  reading a raw body at the limit and returns what it has, so ``raw_body`` checks
  whether more was coming (413, not a cut image decoded as a damaged one).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, Request, current_app, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from webapp.messages import Message

MAX_URLENCODED_BYTES = 64 * 1024
MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 20
URLENCODED = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class SpooledRoute:
    """A POST (only a multipart one with ``multipart_only``) may be as large as the
    ``limit_setting`` config value in MB; its files go to ``temp_path()``."""

    limit_setting: str
    temp_path: Callable[[], Path]
    multipart_only: bool = False


def spooled(limit_setting: str, temp_path: Callable[[], Path], *,
            multipart_only: bool = False):
    """Marks a view that takes a big file (a checkpoint, a dataset archive) under the
    route decorator: its body may be ``limit_setting`` MB, and its file parts are
    streamed to ``temp_path()`` (in the store they are for) instead of memory."""
    route = SpooledRoute(limit_setting, temp_path, multipart_only)

    def mark(view):
        view.spooled_route = route
        return view

    return mark


def _spooled(app: Flask, endpoint: str | None, method: str,
             mimetype: str) -> SpooledRoute | None:
    """The big-file route a request for ``endpoint`` is, if any (its view says so)."""
    if method != "POST" or endpoint is None:
        return None
    route = getattr(app.view_functions.get(endpoint), "spooled_route", None)
    if route is None or (route.multipart_only and mimetype != "multipart/form-data"):
        return None
    return route


def body_limit(app: Flask, method: str, path: str, mimetype: str) -> tuple[int, bool]:
    """(the most bytes a request's body may have, whether the app streams it to a store)
    for a request not yet handed to the app: what the gunicorn worker reads ahead by
    (``webapp/http/worker.py``), the same limits ``UploadRequest`` applies."""
    try:
        endpoint, _ = app.url_map.bind("localhost").match(path, method=method)
    except HTTPException:  # 404, 405, a redirect: the app answers without the body
        endpoint = None
    route = _spooled(app, endpoint, method, mimetype)
    if route is not None:
        return int(app.config[route.limit_setting] * 1024 * 1024), True
    limit = int(app.config["MAX_CONTENT_LENGTH"])
    return (min(limit, MAX_URLENCODED_BYTES) if mimetype == URLENCODED else limit), False


class UploadRequest(Request):
    @property
    def spooled_route(self) -> SpooledRoute | None:
        """The big-file route this request is for, if any (its view says so)."""
        return _spooled(current_app, self.endpoint, self.method, self.mimetype)

    @property
    def route_limit(self) -> int | None:
        """The most bytes a body for this route may have (a big-file route's own limit,
        else ``MAX_UPLOAD_MB``), before the 64 KB of an URL-encoded form."""
        route = self.spooled_route
        if route is not None:
            return int(current_app.config[route.limit_setting] * 1024 * 1024)
        return super().max_content_length

    @property
    def max_content_length(self):
        limit = self.route_limit
        if self.spooled_route is None and self.mimetype == URLENCODED:
            return min(limit or MAX_URLENCODED_BYTES, MAX_URLENCODED_BYTES)
        return limit

    @max_content_length.setter
    def max_content_length(self, value):
        self._max_content_length = value

    def form_limit_message(self) -> str | None:
        """Why this request got a 413 when it was its form, not its size (Werkzeug
        raises the same error for both)."""
        if self.mimetype == URLENCODED:
            return Message("The form is larger than the %(kb)s KB a form may be; send files "
                           "as multipart/form-data.", kb=MAX_URLENCODED_BYTES // 1024)
        limit = self.max_content_length
        if self.mimetype == "multipart/form-data" and self.content_length is not None \
                and (limit is None or self.content_length <= limit):
            return Message("The form has more than %(parts)s parts, or a text field larger "
                           "than %(kb)s KB.", parts=self.max_form_parts,
                           kb=f"{(self.max_form_memory_size or 0) // 1000:g}")
        return None

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        route = self.spooled_route
        if route is None:
            return io.BytesIO()
        path = route.temp_path()
        stream = open(path, "xb+")  # noqa: SIM115 - closed in teardown
        g.setdefault("spooled_files", []).append((path, stream))
        return stream


def raw_body() -> bytes:
    """The request body, whole: a chunked body longer than the limit is a 413 (Werkzeug
    reads up to the limit and stops, which would hand on a cut file)."""
    data = request.get_data(cache=False)
    limit = request.max_content_length
    if limit is not None and len(data) >= limit and request.content_length is None \
            and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return data


def json_object(hint: str, *, required: bool = True) -> dict:
    """The request's JSON object, or an ``ApiError`` whose message ends with ``hint``
    (what to send: a ``Message``).  Empty and not ``required``: ``{}``."""
    from webapp.http.errors import ApiError  # not at import: gunicorn's master imports webapp

    length = request.content_length
    data = b""
    if length is None or length <= MAX_JSON_BYTES:
        data = request.stream.read(MAX_JSON_BYTES + 1)
    if (length or 0) > MAX_JSON_BYTES or len(data) > MAX_JSON_BYTES:
        raise ApiError(413, "too_large", Message(
            "The JSON body is larger than %(kb)s KB. %(hint)s", kb=MAX_JSON_BYTES // 1024,
            hint=hint))
    if not data and not required:
        return {}
    try:
        value = json.loads(data) if request.is_json else None
        too_deep = json_depth(value) > MAX_JSON_DEPTH
    except RecursionError:
        too_deep = True
    except ValueError:  # not JSON, not UTF-8
        value, too_deep = None, False
    if too_deep:
        raise ApiError(400, "bad_json", Message(
            "The JSON is nested more than %(levels)s levels deep. %(hint)s",
            levels=MAX_JSON_DEPTH, hint=hint))
    if not isinstance(value, dict):
        raise ApiError(400, "bad_json", Message(
            "Send a JSON object (Content-Type: application/json). %(hint)s", hint=hint))
    return value


def json_depth(value) -> int:
    """How deep lists and objects nest in a parsed JSON value (without recursion)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            todo.extend((child, level + 1) for child in
                        (item.values() if isinstance(item, dict) else item))
    return deepest


def init_app(app: Flask) -> None:
    app.request_class = UploadRequest
    app.teardown_request(_remove_spooled_files)


def _remove_spooled_files(exc=None) -> None:
    """No upload is left behind in a store's temp folder (a stored one was moved away
    already; a store that went read-only keeps it until its next sweep)."""
    for path, stream in g.pop("spooled_files", []):
        with contextlib.suppress(OSError):
            stream.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
