"""The gunicorn worker (``gunicorn.conf.py``: ``worker_class``): gunicorn's threaded
worker, except that a thread is only given a request once it has *arrived*.

gunicorn's ``gthread`` worker hands a connection to a thread as soon as its first bytes
arrive, and the thread then reads the request head with no time limit: five clients
sending one header line every 2 s stalled ``/healthz`` for a minute on the documented
``docker run -p 5000:5000`` (gunicorn exposed directly, no nginx in front).  Here the
worker's own event loop (the selector gunicorn already runs to accept connections and
watch kept-alive ones) reads every request without blocking, the way nginx buffers one
for its upstream:

* the **head** until its blank line, and then
* a **body** with a ``Content-Length`` the app may accept, up to ``MAX_UPLOAD_MB`` (an
  image upload, JSON; an URL-encoded form up to its 64 KB), while the worker holds less
  than ``HTTP_THREADS × MAX_UPLOAD_MB`` of such bodies; a client that says ``Expect:
  100-continue`` is told to go on first.

A request gets ``REQUEST_TIMEOUT`` seconds from its first byte, and one second more for
every ``MIN_RATE`` bytes received (Apache's ``mod_reqtimeout`` rule: an upload over a
slow link keeps its time, a client dripping bytes does not; a 16 MB dataset archive at
250 KB/s is fine).  Past that: ``408 request_timeout`` (JSON, one access log line) and
the connection is closed.  Until then it costs a selector entry and the bytes received,
never a thread, so slow clients hold neither the threads nor the upload slots
(``webapp/http/capacity.py``: taken once the app reads the body, which is then all there).
Handed over unread, as gunicorn would: a chunked body, a bigger one (checkpoints and
dataset archives stream to their store under the app's own stall limit), a body while
the buffer budget is spent, and HTTP/2 connections.  With the server's own certificate
(classroom mode) the TLS handshake runs in the event loop too, within the same deadline,
and the request is then read the same way.  Measured (bench/abuse.py,
docs/security.md): with 50 clients sending a header line every 2 s, every /predict
timed out on ``gthread``; here each answered within a few tenths of a second.

Imported by the gunicorn master (for the worker class): no torch, no app.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import re
import selectors
import socket
import ssl
import threading
import time
from functools import partial

from gunicorn import http
from gunicorn.http.unreader import SocketUnreader
from gunicorn.http2 import negotiation
from gunicorn.sock import ssl_context
from gunicorn.workers.gthread import ThreadWorker

from webapp.config import Config
from webapp.http.uploads import MAX_URLENCODED_BYTES, URLENCODED

RECV_BYTES = 256 * 1024
MIN_RATE = 16 * 1024  # bytes per second that earn a slow client more time
LINGER_SECONDS = 2.0
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# ``environ`` key, for a request this worker read before a thread got it: (its first byte
# seen, handed over; ``time.perf_counter()`` seconds) and whether its body is all in
# memory (``timings_ms``'s ``receive``; a body all in needs no read timeout).
RECEIVED = "webapp.received"


class Arrival:
    """A request on its way in: the bytes so far and when it must be complete."""

    __slots__ = ("data", "started", "first_byte", "timeout", "head_end", "body_length",
                 "scanned")

    def __init__(self, data: bytes, timeout: float):
        self.data = bytearray(data)
        self.started = time.monotonic()
        self.first_byte = time.perf_counter()
        self.timeout = timeout
        self.head_end: int | None = None  # offset of the body, once the head is in
        self.body_length = 0  # bytes of body to wait for
        self.scanned = 0  # how far the head end has been searched for

    @property
    def deadline(self) -> float:
        return self.started + self.timeout + len(self.data) / MIN_RATE


class BufferingWorker(ThreadWorker):
    """``gthread`` with requests read in the event loop before a thread gets them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        settings = Config.from_env()
        self.request_timeout = settings["REQUEST_TIMEOUT"]
        self.body_limit = settings["MAX_CONTENT_LENGTH"]
        self.buffer_budget = max(1, self.cfg.threads) * self.body_limit
        self.buffered = 0  # bytes held by arriving requests, all of them
        self.arriving: dict = {}  # connection -> Arrival
        self.lingering: dict = {}  # connection -> when to close it after its 408
        self.tls_context = None  # with a certfile: made by the first connection
        self.received = threading.local()  # the handling thread's request: RECEIVED
        cfg = self.cfg
        self.max_head = (cfg.limit_request_line + 2
                         + cfg.limit_request_fields * (cfg.limit_request_field_size + 2) + 2)

    # ----------------------------------------------------------------- handing over

    def enqueue_req(self, conn):
        """Every way to a thread goes through here (a new connection, a kept-alive one
        that became readable, bytes a client sent ahead): wait for the whole request
        first, unless it was this worker that found it complete."""
        if getattr(conn, "arrived", False) \
                or negotiation.prior_knowledge_allowed(self.cfg, conn.client):
            conn.arrived = False
            return super().enqueue_req(conn)
        if self.cfg.is_ssl and not isinstance(conn.sock, ssl.SSLSocket):
            return self._start_tls(conn)
        ahead = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        arrival = self.arriving[conn] = Arrival(ahead, self.request_timeout)
        self.buffered += len(ahead)
        conn.sock.setblocking(False)
        if not self._progress(conn, arrival):
            self.poller.register(conn.sock, selectors.EVENT_READ,
                                 partial(self._on_readable, conn))
        return None

    def _hand_over(self, conn, arrival: Arrival, registered: bool = True,
                   whole: bool = False) -> None:
        conn.received = (arrival.first_byte, time.perf_counter(), whole)
        self._forget(conn, arrival, registered)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader = ReadAhead(conn.sock, arrival.data)
        conn.data_ready = conn.arrived = True
        super().enqueue_req(conn)

    def handle_request(self, req, conn):
        """In the thread: when this request arrived, for the app (``RECEIVED``)."""
        self.received.times, conn.received = getattr(conn, "received", None), None
        return super().handle_request(req, conn)

    def load_wsgi(self):
        super().load_wsgi()
        self.wsgi = _WithArrival(self.wsgi, self.received)

    def finish_request(self, conn, fs):
        """Bytes of a next request that arrived with this one (pipelining) go where
        gunicorn looks for them before it waits on the socket again."""
        unreader = getattr(conn.parser, "unreader", None)
        if isinstance(unreader, ReadAhead):
            unreader.settle()
        return super().finish_request(conn, fs)

    def _forget(self, conn, arrival: Arrival, registered: bool = True) -> None:
        self.arriving.pop(conn, None)
        self.buffered -= len(arrival.data)
        if registered:
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    # ----------------------------------------------------------------- reading

    def _on_readable(self, conn, sock) -> None:
        arrival = self.arriving.get(conn)
        if arrival is None:
            return
        try:
            data = sock.recv(RECV_BYTES)
            while isinstance(sock, ssl.SSLSocket) and sock.pending():
                data += sock.recv(RECV_BYTES)  # decrypted already: no readable event
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._close(conn, arrival)
            return
        arrival.data += data
        self.buffered += len(data)
        self._progress(conn, arrival, registered=True)

    def _progress(self, conn, arrival: Arrival, registered: bool = False) -> bool:
        """Hand the request over if it is complete (or not ours to wait for); True
        when it was handed over."""
        data = arrival.data
        if arrival.head_end is None:
            blank = len(data) - len(data.lstrip(b"\r\n"))  # allowed before a request
            found = _HEAD_END.search(data, max(blank, arrival.scanned - 3))
            if found is None:
                arrival.scanned = len(data)
                if len(data) > self.max_head:  # gunicorn answers 431 / 400
                    self._hand_over(conn, arrival, registered)
                    return True
                return False
            head = bytes(data[:found.end()])
            length, expects_continue = self._body_to_buffer(head)
            if length is None:
                self._hand_over(conn, arrival, registered)
                return True
            if expects_continue:  # answered here; the thread must not answer again
                head = _without_expect(head)
                self.buffered -= found.end() - len(head)
                data[:found.end()] = head
                self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
            arrival.head_end, arrival.body_length = len(head), length
        whole = len(data) - arrival.head_end >= arrival.body_length
        if whole or self.buffered > self.buffer_budget:
            self._hand_over(conn, arrival, registered, whole)
            return True
        return False

    def _body_to_buffer(self, head: bytes) -> tuple[int | None, bool]:
        """(bytes of body to wait for, or None to hand the request over as it is;
        whether the client waits for ``100 Continue``)."""
        length, limit, expects_continue = 0, self.body_limit, False
        for line in head.split(b"\n")[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return None, False  # gunicorn answers 400
            elif name == b"transfer-encoding":
                return None, False  # chunked: the app counts it against its limits
            elif name == b"expect" and value == b"100-continue":
                expects_continue = True
            elif name == b"content-type" and value.startswith(URLENCODED.encode()):
                limit = min(limit, MAX_URLENCODED_BYTES)
        if not 0 <= length <= limit:
            return None, False  # the app refuses it (413) or streams it to its store
        return length, expects_continue and length > 0

    # ----------------------------------------------------------------- TLS

    def _start_tls(self, conn) -> None:
        """A new connection to a server with its own certificate (gunicorn's
        ``certfile``, classroom mode): the handshake runs here too, without blocking and
        within the request's deadline, and then the request is read as over plain HTTP.
        (gunicorn's ``gthread`` shakes hands in a thread, on a blocking socket: eight
        clients that sent part of a handshake stalled a worker of 4 threads.)"""
        arrival = self.arriving[conn] = Arrival(b"", self.request_timeout)
        if self.tls_context is None:  # once per worker, not per connection
            self.tls_context = ssl_context(self.cfg)
        try:
            conn.sock = self.tls_context.wrap_socket(
                conn.sock, server_side=True, do_handshake_on_connect=False,
                suppress_ragged_eofs=self.cfg.suppress_ragged_eofs)
        except OSError:
            self._close(conn, arrival, registered=False)
            return None
        conn.sock.setblocking(False)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_handshake, conn))
        self._on_handshake(conn, conn.sock)
        return None

    def _on_handshake(self, conn, sock) -> None:
        arrival = self.arriving.get(conn)
        if arrival is None:
            return
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self.poller.modify(sock, selectors.EVENT_READ, partial(self._on_handshake, conn))
            return
        except ssl.SSLWantWriteError:
            self.poller.modify(sock, selectors.EVENT_WRITE, partial(self._on_handshake, conn))
            return
        except OSError:  # not TLS, or a client that refused the certificate
            self._close(conn, arrival)
            return
        self.poller.modify(sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        if sock.pending():  # request bytes decrypted along with the handshake
            self._on_readable(conn, sock)

    # ----------------------------------------------------------------- timing out

    def murder_pending(self):
        """Once a second (gunicorn's loop, also while a stopping worker finishes its
        requests): requests past their deadline get 408."""
        super().murder_pending()
        now = time.monotonic()
        for conn, until in list(self.lingering.items()):
            if now >= until:
                self._end_linger(conn)
        for conn, arrival in list(self.arriving.items()):
            if now >= arrival.deadline:
                self._time_out(conn, arrival)

    def _time_out(self, conn, arrival: Arrival) -> None:
        message = (f"The request arrived too slowly (it may take {self.request_timeout:g} s, "
                   f"and a second more for every {MIN_RATE // 1024} KB sent); please try "
                   "again.")
        body = json.dumps({"error": {"code": "request_timeout", "message": message}})
        answer = (f"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}").encode()
        sent = self._send(conn, answer)
        self._log_timeout(conn, arrival, sent)
        self._linger(conn, arrival)

    def _log_timeout(self, conn, arrival: Arrival, sent: int) -> None:
        """One access log line, like any answered request (webapp/http/accesslog.py)."""
        line = bytes(arrival.data[:1024]).lstrip(b"\r\n").split(b"\r\n", 1)[0]
        method, _, rest = line.decode("latin-1").partition(" ")
        environ = {"REQUEST_METHOD": method or None, "PATH_INFO": rest.split(" ")[0]
                   .split("?")[0] or None, "REMOTE_ADDR": _address(conn.client),
                   "webapp.error": "request_timeout"}
        answer = _Answer("408", sent)
        elapsed = _dt.timedelta(seconds=time.monotonic() - arrival.started)
        try:
            self.log.access(answer, None, environ, elapsed)
        except Exception:  # noqa: BLE001 - a log line never takes the worker down
            pass
        try:
            from webapp.http import metrics  # after the fork: the worker's own metric files

            metrics.UPLOADS_REFUSED.labels("timeout").inc()
        except Exception:  # noqa: BLE001
            pass

    # ----------------------------------------------------------------- sockets

    def _send(self, conn, data: bytes) -> int:
        """Best effort, never blocking: a client that does not read is not waited for."""
        try:
            return conn.sock.send(data)
        except OSError:
            return 0

    def _close(self, conn, arrival: Arrival, registered: bool = True) -> None:
        self._forget(conn, arrival, registered)
        self.nr_conns -= 1
        conn.close()

    def _linger(self, conn, arrival: Arrival) -> None:
        """Close after an answer the client may still be sending into: stop writing,
        read and drop what comes for up to ``LINGER_SECONDS`` (closing a socket with
        unread data resets the connection, and the client could lose the answer)."""
        self._forget(conn, arrival)
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.nr_conns -= 1
            conn.close()
            return
        self.lingering[conn] = time.monotonic() + LINGER_SECONDS
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._drain, conn))

    def _drain(self, conn, sock) -> None:
        try:
            if sock.recv(RECV_BYTES):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._end_linger(conn)

    def _end_linger(self, conn) -> None:
        self.lingering.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self.nr_conns -= 1
        conn.close()


class ReadAhead(SocketUnreader):
    """The parser's source once a request has arrived: the bytes read ahead, then the
    socket.  (gunicorn's ``unread`` would hold them in a buffer that every read copies
    whole: reading a 19 MB body that way took seconds.)"""

    def __init__(self, sock, data: bytearray):
        super().__init__(sock)
        self.ahead, self.at = data, 0

    def chunk(self, size_hint=None):
        if self.at < len(self.ahead):
            size = max(self.mxchunk, min(size_hint or 0, self.max_body_chunk))
            piece = bytes(memoryview(self.ahead)[self.at:self.at + size])
            self.at += len(piece)
            if self.at >= len(self.ahead):  # all handed on: let the buffer go now
                self.ahead, self.at = bytearray(), 0
            return piece
        return super().chunk(size_hint)

    def take_buffered(self):
        self.settle()
        return super().take_buffered()

    def settle(self) -> None:
        """Whatever is left ahead into the buffer gunicorn checks between requests
        (after what the buffer holds already: that came first)."""
        if self.at < len(self.ahead):
            self.buf.seek(0, io.SEEK_END)
            self.buf.write(memoryview(self.ahead)[self.at:])
        self.ahead, self.at = bytearray(), 0


class _WithArrival:
    """The app, given ``environ[RECEIVED]`` for a request this worker read itself (the
    app's other attributes pass through: the server's hooks use them)."""

    def __init__(self, app, received: threading.local):
        self.app, self.received = app, received

    def __call__(self, environ, start_response):
        times = getattr(self.received, "times", None)
        if times is not None:
            environ[RECEIVED] = times
        return self.app(environ, start_response)

    def __getattr__(self, name):
        return getattr(self.app, name)


class _Answer:
    """What the access logger reads from a response: its status and bytes sent."""

    def __init__(self, status: str, sent: int):
        self.status, self.sent = status, sent


def _address(client) -> str | None:
    return client[0] if isinstance(client, tuple) and client else None


def _without_expect(head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    kept = [line for line in lines
            if line.partition(b":")[0].strip().lower() != b"expect"]
    return b"\r\n".join(kept)
