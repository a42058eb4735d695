"""How much upload work one worker takes on, and how long a client may take to send it.

* **Upload slots.**  Every image upload (``/predict``, ``/explain``, the no-JavaScript
  form, the admin's "try an image") holds one of ``MAX_CONCURRENT_UPLOADS`` slots of its
  worker process from before the app reads its body until its answer is built; that
  bounds the memory a worker can need at once (a body of up to ``MAX_UPLOAD_MB`` plus
  its decoded pixels per slot).  An upload that finds no free slot waits up to
  ``UPLOAD_QUEUE_SECONDS`` and then gets ``503 server_busy`` with ``Retry-After``;
  ``/healthz``, ``/readyz``, ``/metrics`` and the pages never wait for a slot.  Under
  gunicorn the worker has usually read the whole request before the app sees it
  (``webapp/http/worker.py``), so a slow client holds no slot.
* **Body timeout**, for the bodies the app reads from the client itself (chunked ones,
  checkpoints and dataset archives over ``MAX_UPLOAD_MB``): an image upload gets
  ``REQUEST_TIMEOUT`` seconds from the moment it has its slot, and no body may stall
  longer than that between two reads (checkpoint uploads and dataset archives may take
  longer in total: a 200 MB archive over a 2 MB/s link takes 100 s).  Too slow: ``408
  request_timeout``, and the thread is free again.  (A body the worker read whole
  before the app got it needs none: reading it cannot wait.)  This needs gunicorn (it
  reads from the client's socket, ``environ["gunicorn.socket"]``); the development server
  has no such limit.
"""

from __future__ import annotations

import socket
import threading

from flask import Flask, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from webapp.http import errors, metrics
from webapp.http.timings import RECEIVED
from webapp.messages import Message


def upload_slot(view):
    """Marks a view that takes an image upload: it runs holding one of its worker's
    upload slots (``@capacity.upload_slot`` under the route decorator)."""
    view.takes_upload_slot = True
    return view


def _takes_upload_slot() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return getattr(view, "takes_upload_slot", False)


class UploadSlots:
    """A per-process counting semaphore with a bounded wait."""

    def __init__(self, size: int, wait_seconds: float):
        self.size = size
        self.wait_seconds = wait_seconds
        self._semaphore = threading.BoundedSemaphore(size)

    def acquire(self) -> bool:
        return self._semaphore.acquire(timeout=self.wait_seconds)

    def release(self) -> None:
        self._semaphore.release()


class BodyTimeout(errors.ApiError):
    def __init__(self, seconds: float):
        super().__init__(408, "request_timeout", Message(
            "The upload arrived too slowly (the limit is %(seconds)s s); please try again.",
            seconds=f"{seconds:g}"))


class DeadlineInput:
    """``wsgi.input`` with time limits.  Each read may wait at most ``idle`` seconds for
    data (a socket timeout on the client's connection).  With ``deadline`` seconds, a
    timer also shuts the reading side of the connection when they are over: a client
    that drips one byte at a time never waits ``idle`` but cannot take longer than that
    either (the blocked read wakes up at once).  Either way: ``BodyTimeout``."""

    def __init__(self, stream, sock, idle: float, deadline: float | None = None,
                 length: int | None = None):
        self._stream, self._sock, self._idle = stream, sock, idle
        self._limit = deadline or idle
        self._left = length  # bytes still to come, when the client said how many
        self._expired = threading.Event()
        self._timer = None
        if deadline is not None:
            self._timer = threading.Timer(deadline, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        self._expired.set()
        try:
            self._sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _call(self, method, *args):
        if self._expired.is_set():
            raise self._timed_out()
        try:
            self._sock.settimeout(self._idle)
            data = method(*args)
        except TimeoutError:
            raise self._timed_out() from None
        except OSError:
            if self._expired.is_set():
                raise self._timed_out() from None
            raise
        if self._expired.is_set():
            raise self._timed_out()
        if self._left is not None:
            self._left -= len(data)
        if not data or (self._left is not None and self._left <= 0):
            self.cancel()  # the whole body is in: no reason to cut the connection
        return data

    def _timed_out(self) -> BodyTimeout:
        self.cancel()
        metrics.UPLOADS_REFUSED.labels("timeout").inc()
        return BodyTimeout(self._limit)

    def read(self, *args):
        return self._call(self._stream.read, *args)

    def readline(self, *args):
        return self._call(self._stream.readline, *args)

    def readlines(self, *args):
        return self._call(self._stream.readlines, *args)

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line


def init_app(app: Flask) -> None:
    app.extensions["upload_slots"] = UploadSlots(app.config["MAX_CONCURRENT_UPLOADS"],
                                                 app.config["UPLOAD_QUEUE_SECONDS"])
    app.before_request(_limit_request)
    app.teardown_request(_release)


def _has_body() -> bool:
    return bool(request.content_length) or "chunked" in request.headers.get(
        "Transfer-Encoding", "").lower()


def _limit_request():
    length, limit = request.content_length, request.route_limit
    if length is not None and limit is not None and length > limit:
        raise RequestEntityTooLarge()  # answered at once: no slot, no body read
    if _takes_upload_slot():
        slots: UploadSlots = current_app.extensions["upload_slots"]
        if not slots.acquire():
            metrics.UPLOADS_REFUSED.labels("busy").inc()
            response = current_app.make_response(errors._respond(
                503, "server_busy", Message("The server is busy with other images right "
                                            "now; please try again in a moment.")))
            response.headers["Retry-After"] = "1"
            return response
        g.upload_slot = slots
        metrics.UPLOADS_IN_PROGRESS.inc()
    environ = request.environ
    sock = environ.get("gunicorn.socket")
    all_in = (environ.get(RECEIVED) or (0, 0, False))[2]  # the worker holds all of it
    if sock is not None and _has_body() and not all_in:  # the clock starts with the slot
        seconds = current_app.config["REQUEST_TIMEOUT"]
        whole = None if request.spooled_route else seconds  # big files: idle limit only
        g.body_input = environ["wsgi.input"] = DeadlineInput(
            environ["wsgi.input"], sock, seconds, whole, request.content_length)
        g.body_socket = sock
    return None


def _release(exc=None) -> None:
    slots = g.pop("upload_slot", None)
    if slots is not None:
        slots.release()
        metrics.UPLOADS_IN_PROGRESS.dec()
    body = g.pop("body_input", None)
    if body is not None:
        body.cancel()
    sock = g.pop("body_socket", None)
    if sock is not None:
        try:
            sock.settimeout(None)  # gunicorn writes the answer as it always does
        except OSError:
            pass
