"""Structured access logs: one JSON object per request, one line each, on gunicorn's
access log (``gunicorn.conf.py`` sets ``logger_class`` to ``JsonAccessLogger``)::

    {"time": "2026-11-23T17:40:01.123Z", "remote": "127.0.0.1", "method": "POST",
     "path": "/predict", "status": 200, "duration_ms": 48.2, "bytes": 431,
     "request_bytes": 48213, "model": "builtin", "error": null, "pid": 4242,
     "request_id": "7f0c..."}

What is deliberately *not* logged: the query string (it may carry a secret), any header
(``Authorization``, ``Cookie``), file names and the uploaded bytes.  ``model`` is the model
id that answered and ``error`` the error code the client got; the app passes them to the
log through the WSGI environ (``note(model=..., error=...)``).  ``request_id`` is the
``X-Request-ID`` header a proxy set (nginx's ``$request_id``, see deploy/nginx.conf), when
it looks like one.

Imported by the gunicorn master (for the logger class): no Flask app, no torch here.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import traceback

from gunicorn import glogging

ENVIRON_PREFIX = "webapp."
MAX_PATH = 256
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def note(**fields) -> None:
    """Attach ``fields`` (``model=``, ``error=``) to this request's access log line."""
    from flask import has_request_context, request

    if has_request_context():
        for key, value in fields.items():
            request.environ[ENVIRON_PREFIX + key] = value


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def access_record(resp, environ: dict, request_time) -> dict:
    """The fields of one access log line (no query string, headers or bodies)."""
    status = resp.status
    if isinstance(status, str):
        status = status.split(None, 1)[0]
    request_id = environ.get("HTTP_X_REQUEST_ID", "")
    return {
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"),
        "remote": environ.get("REMOTE_ADDR"),
        "method": environ.get("REQUEST_METHOD"),
        "path": (environ.get("PATH_INFO") or "")[:MAX_PATH],
        "status": _int(status),
        "duration_ms": round(request_time.total_seconds() * 1000, 2),
        "bytes": getattr(resp, "sent", None),
        "request_bytes": _int(environ.get("CONTENT_LENGTH")),
        "model": environ.get(ENVIRON_PREFIX + "model"),
        "error": environ.get(ENVIRON_PREFIX + "error"),
        "pid": os.getpid(),
        "request_id": request_id if _REQUEST_ID.match(request_id) else None,
    }


class JsonAccessLogger(glogging.Logger):
    """gunicorn's logger with the access log as JSON lines (the error log is unchanged)."""

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        try:
            line = json.dumps(access_record(resp, environ, request_time),
                              ensure_ascii=False, separators=(", ", ": "))
            self.access_log.info(line)
        except Exception:
            self.error(traceback.format_exc())
