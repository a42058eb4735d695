"""The gunicorn worker (``gunicorn.conf.py``: ``worker_class``): gunicorn's threaded
worker, except that a thread is only given a request once it has *arrived*, and no client
can hold more than its share of what the worker has.

gunicorn's ``gthread`` worker hands a connection to a thread as soon as its first bytes
arrive, and the thread then reads the request head with no time limit: five clients
sending one header line every 2 s stalled ``/healthz`` for a minute on the documented
``docker run -p 5000:5000`` (gunicorn exposed directly, no nginx in front).  Here the
worker's own event loop (the selector gunicorn already runs to accept connections and
watch kept-alive ones) reads every request without blocking, the way nginx buffers one
for its upstream:

* the **head** until its blank line: at most ``MAX_HEAD_BYTES`` (nginx's 4 × 8 KB; more:
  ``431``), within ``HEADER_TIMEOUT`` of the connection (or of its first byte on a
  kept-alive one) whatever a client trickles meanwhile; and then
* a **body** the app may accept -- with a ``Content-Length`` or chunked -- up to its
  route's limit (``webapp.http.uploads.body_limit``: ``MAX_UPLOAD_MB``, 64 KB for a form),
  while the worker holds less than ``HTTP_THREADS × MAX_UPLOAD_MB`` of such bodies; a
  client that says ``Expect: 100-continue`` is told to go on first.

A body gets ``REQUEST_TIMEOUT`` seconds from the request's first byte, and one second more
for every ``MIN_RATE`` bytes of it received (Apache's ``mod_reqtimeout`` rule: an upload
over a slow link keeps its time, a client dripping bytes does not; a 16 MB dataset
archive at 250 KB/s is fine).  Past either deadline: ``408 request_timeout`` (JSON, one
access log line) and the connection is closed; a connection that sent nothing at all is
just closed.  Until then a request costs a selector entry and the bytes received, never
a thread, so slow clients hold neither the threads nor the upload slots
(``webapp/http/capacity.py``: taken once the app reads the body, which is then all there).
Each client address may hold ``MAX_CONNECTIONS_PER_CLIENT`` connections in a worker, so
one client cannot fill the worker's ``worker_connections``.  At its share, a new
connection first takes the place of the address's oldest idle kept-alive one (closed, as
nginx reuses them; a client that keeps its answered responses open is not refused);
only when all of them are busy is it answered ``503`` and closed.  A connection closing
after its answer (``_linger``) does not count.

Handed over unread, as gunicorn would: a body a route streams to its store (checkpoints,
dataset archives, under the app's own stall limit), one over its route's limit (the app
answers 413 without reading it), a body while the buffer budget is spent, and HTTP/2
connections.  With the server's own certificate (classroom mode) the TLS handshake runs
in the event loop too, within the head's deadline, and the request is then read the same
way.  A body the app did not read is not drained by a thread: the connection is closed,
and what the client still sends is read and dropped in this loop for ``LINGER_SECONDS``
(gunicorn's own close would drain it in this loop, blocking).  Measured (bench/abuse.py,
docs/security.md): with 50 clients sending a header line every 2 s, every /predict timed
out on ``gthread``; here each answered within a few tenths of a second.

Imported by the gunicorn master (for the worker class): no torch, no app.
"""

from __future__ import annotations

import collections
import datetime as _dt
import errno
import io
import json
import re
import selectors
import socket
import ssl
import threading
import time
from functools import partial
from urllib.parse import unquote, urlsplit

from gunicorn import http
from gunicorn.http.unreader import SocketUnreader
from gunicorn.http2 import negotiation
from gunicorn.sock import ssl_context
from gunicorn.workers.gthread import TConn, ThreadWorker

from webapp.config import Config
from webapp.http.timings import RECEIVED
from webapp.http.uploads import MAX_URLENCODED_BYTES, URLENCODED, body_limit
from webapp.messages import Message

RECV_BYTES = 256 * 1024
MIN_RATE = 16 * 1024  # bytes per second of body that earn a slow client more time
LINGER_SECONDS = 2.0
MAX_HEAD_BYTES = 32 * 1024  # request line and headers (nginx: 4 buffers of 8 KB)
DRAIN_SECONDS = 0.1  # a thread drains what the app left of a body for at most this long
_HEAD_END = re.compile(rb"\r?\n\r?\n")


class Arrival:
    """A request on its way in: the bytes so far and when it must be complete."""

    __slots__ = ("data", "started", "first_byte", "timeout", "head_timeout", "head_end",
                 "body_length", "chunks", "limit", "scanned", "received")

    def __init__(self, data: bytes, timeout: float, head_timeout: float):
        self.data = bytearray(data)
        self.started = time.monotonic()
        self.first_byte = time.perf_counter()
        self.timeout = timeout
        self.head_timeout = head_timeout
        self.head_end: int | None = None  # offset of the body, once the head is in
        self.body_length = 0  # bytes of body to wait for (a Content-Length body)
        self.chunks: ChunkedBody | None = None  # or where a chunked body ends
        self.limit = 0  # the most a chunked body may have before the app refuses it
        self.scanned = 0  # how far the head end has been searched for
        self.received = bool(data)  # any byte at all (an idle connection is just closed)

    @property
    def deadline(self) -> float:
        if self.head_end is None:  # the head's bytes earn no time
            return self.started + self.head_timeout
        body = len(self.data) - self.head_end
        return self.started + self.timeout + body / MIN_RATE

    @property
    def complete(self) -> bool:
        if self.chunks is not None:
            return self.chunks.done
        return len(self.data) - self.head_end >= self.body_length


class ChunkedBody:
    """Where a chunked body ends, found as its bytes arrive (the framing only: gunicorn's
    parser decodes it once a thread has the request).  ``bad``: not valid chunked framing
    (handed over: gunicorn answers 400); ``size``: the body's bytes so far."""

    def __init__(self, start: int):
        self.at = start  # the next byte to look at
        self.state = "size"
        self.left = 0  # bytes of the current chunk still to come
        self.size = 0
        self.done = self.bad = False

    def feed(self, data: bytearray) -> None:
        while not (self.done or self.bad):
            if self.state == "data":
                step = min(self.left, len(data) - self.at)
                self.at += step
                self.left -= step
                self.size += step
                if self.left:
                    return
                self.state = "end"
            elif self.state == "end":  # the CRLF after a chunk's data
                if len(data) - self.at < 2:
                    return
                if data[self.at:self.at + 2] != b"\r\n":
                    self.bad = True
                    return
                self.at += 2
                self.state = "size"
            else:  # a size line, or a trailer line after the last chunk
                end = data.find(b"\n", self.at)
                if end < 0:
                    self.bad = len(data) - self.at > 1024
                    return
                line = bytes(data[self.at:end]).rstrip(b"\r")
                self.at = end + 1
                if self.state == "trailer":
                    self.done = not line
                    continue
                digits = line.split(b";", 1)[0].strip()
                if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
                    self.bad = True
                    return
                self.left = int(digits, 16)
                self.state = "data" if self.left else "trailer"


class Counted(TConn):
    """gthread's connection, counted against its client address while it is open."""

    address = None  # the client address it counts against (None: not counted)
    release = None  # set by the worker: called once, when the connection stops counting

    def stop_counting(self) -> None:
        release, self.release = self.release, None
        if release is not None:
            release()

    def close(self, graceful=False):
        self.stop_counting()
        super().close(graceful)


class BufferingWorker(ThreadWorker):
    """``gthread`` with requests read in the event loop before a thread gets them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        settings = Config.from_env()
        self.request_timeout = settings["REQUEST_TIMEOUT"]
        self.head_timeout = min(settings["HEADER_TIMEOUT"], self.request_timeout)
        self.body_limit = settings["MAX_CONTENT_LENGTH"]
        self.buffer_budget = max(1, self.cfg.threads) * self.body_limit
        self.buffered = 0  # bytes held by arriving requests, all of them
        self.arriving: dict = {}  # connection -> Arrival
        self.lingering: dict = {}  # connection -> when to close it after its answer
        self.tls_context = None  # with a certfile: made by the first connection
        self.per_client_cap = 0 if settings["TRUSTED_PROXIES"] \
            else settings["MAX_CONNECTIONS_PER_CLIENT"]
        self.per_client: collections.Counter = collections.Counter()
        self.warned: dict = {}  # client address -> when its refusals were last logged
        self.received = threading.local()  # the handling thread's request: RECEIVED

    # ----------------------------------------------------------------- connections

    def accept(self, listener):
        """gthread's accept, with each client address held to its share of connections."""
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        sock.setblocking(True)
        conn = Counted(self.cfg, sock, client, listener.getsockname())
        address = _address(client)
        if self.per_client_cap and address is not None:
            if self.per_client[address] >= self.per_client_cap \
                    and not self._close_idle(address):
                self._refuse_connection(conn, address)
                return
            self.per_client[address] += 1
            conn.address = address
            conn.release = partial(self._released, address)
        self.enqueue_req(conn)

    def _close_idle(self, address) -> bool:
        """Close the oldest kept-alive connection of ``address`` that waits for no
        request (True), to make room for its new one."""
        for conn in self.keepalived_conns:  # oldest first
            if conn.address == address:
                self.keepalived_conns.remove(conn)
                self._drop(conn)
                return True
        return False

    def on_client_socket_readable(self, conn, client):
        """gunicorn's, but not for a connection ``_close_idle`` closed while the event
        loop held an event of it."""
        if client.fileno() == -1:
            return
        super().on_client_socket_readable(conn, client)

    def _released(self, address) -> None:
        self.per_client[address] -= 1
        if self.per_client[address] <= 0:
            del self.per_client[address]

    def _refuse_connection(self, conn, address) -> None:
        now = time.monotonic()
        if now - self.warned.get(address, -60.0) >= 60:
            self.warned[address] = now
            self.log.warning("refusing connections from %s: it holds %d in this worker "
                             "(MAX_CONNECTIONS_PER_CLIENT)", address, self.per_client_cap)
        conn.sock.setblocking(False)
        try:  # what it sent already, so that closing does not reset the connection
            sent = conn.sock.recv(RECV_BYTES)
        except OSError:
            sent = b""
        if not self.cfg.is_ssl:  # a TLS client could not read a plain answer: just closed
            self._send(conn, self._answer(503, "too_many_connections", Message(
                "This address has %(count)s connections open to the server already; "
                "please close some, or try again in a moment.", count=self.per_client_cap),
                sent))
        self.nr_conns -= 1  # closed at once: a flood of them costs this loop nothing more
        conn.close()

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
        arrival = self.arriving[conn] = Arrival(ahead, self.request_timeout,
                                                self.head_timeout)
        self.buffered += len(ahead)
        conn.sock.setblocking(False)
        if not self._progress(conn, arrival):
            self.poller.register(conn.sock, selectors.EVENT_READ,
                                 partial(self._on_readable, conn))
        return None

    def _hand_over(self, conn, arrival: Arrival, registered: bool = True) -> None:
        whole = arrival.head_end is not None and arrival.complete
        conn.received = (arrival.first_byte, time.perf_counter(), whole)
        self._forget(conn, arrival, registered)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader = ReadAhead(conn.sock, arrival.data, whole=whole)
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
        gunicorn looks for them before it waits on the socket again.  A connection the
        thread gave up on is closed here without blocking this loop (``_linger``)."""
        unreader = getattr(conn.parser, "unreader", None)
        if isinstance(unreader, ReadAhead):
            unreader.settle()
        try:
            closing = not fs.cancelled() and fs.result() is False
        except Exception:  # noqa: BLE001 - gunicorn's own handling below
            closing = False
        if closing:
            self._linger(conn)
            return None
        return super().finish_request(conn, fs)

    def _keepalive_after(self, conn, keepalive):
        """A body read ahead is in memory: what the app left of it is dropped at once.  A
        body handed over unread that the app did not read (a 413, a 401) is not drained
        by this thread: the connection closes instead, unless the rest came already."""
        unreader = getattr(conn.parser, "unreader", None)
        if not keepalive or (isinstance(unreader, ReadAhead) and unreader.whole):
            return super()._keepalive_after(conn, keepalive)
        return bool(conn.parser.finish_body(deadline=time.monotonic() + DRAIN_SECONDS,
                                            max_bytes=RECV_BYTES))

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
        arrival.received = True
        self.buffered += len(data)
        self._progress(conn, arrival, registered=True)

    def _progress(self, conn, arrival: Arrival, registered: bool = False) -> bool:
        """Hand the request over if it is complete (or not ours to wait for); True
        when it was handed over (or answered here)."""
        data = arrival.data
        if arrival.head_end is None:
            blank = len(data) - len(data.lstrip(b"\r\n"))  # allowed before a request
            found = _HEAD_END.search(data, max(blank, arrival.scanned - 3))
            if found is None or found.end() - blank > MAX_HEAD_BYTES:
                arrival.scanned = len(data)
                if len(data) - blank > MAX_HEAD_BYTES:
                    self._refuse(conn, arrival, 431, "request_header_too_large", Message(
                        "The request's line and headers are larger than the %(kb)s KB "
                        "this server accepts.", kb=MAX_HEAD_BYTES // 1024))
                    return True
                return False
            head = bytes(data[blank:found.end()])
            read, limit, expects_continue = self._body_to_buffer(head)
            if read is None:
                self._hand_over(conn, arrival, registered)
                return True
            if expects_continue:  # answered here; the thread must not answer again
                head = _without_expect(head)
                self.buffered -= found.end() - blank - len(head)
                data[blank:found.end()] = head
                self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
            arrival.head_end = blank + len(head)
            if read == "chunked":
                arrival.chunks, arrival.limit = ChunkedBody(arrival.head_end), limit
            else:
                arrival.body_length = read
        if arrival.chunks is not None:
            arrival.chunks.feed(data)
            if arrival.chunks.bad or arrival.chunks.size > arrival.limit:
                self._hand_over(conn, arrival, registered)  # gunicorn: 400; the app: 413
                return True
        if arrival.complete or self.buffered > self.buffer_budget:
            self._hand_over(conn, arrival, registered)
            return True
        return False

    def _body_to_buffer(self, head: bytes) -> tuple[int | str | None, int, bool]:
        """(bytes of body to wait for, ``"chunked"``, or None to hand the request over
        as it is; the most its body may have; whether the client waits for ``100
        Continue``)."""
        length, chunked, expects_continue, mimetype = 0, False, False, ""
        lines = head.split(b"\n")
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return None, 0, False  # gunicorn answers 400
            elif name == b"transfer-encoding":
                if value != b"chunked" or chunked:
                    return None, 0, False  # other codings: gunicorn answers 400 or 501
                chunked = True
            elif name == b"expect" and value == b"100-continue":
                expects_continue = True
            elif name == b"content-type":
                mimetype = value.split(b";", 1)[0].strip().decode("latin-1")
        if chunked and length:
            return None, 0, False  # both: gunicorn refuses it (a smuggling attempt)
        method, _, rest = lines[0].decode("latin-1").strip().partition(" ")
        limit, streamed = self._limit(method, rest.rpartition(" ")[0], mimetype)
        limit = min(limit, self.body_limit)
        if streamed and (chunked or length > self.body_limit):
            return None, 0, False  # the app streams it to its store
        if chunked:
            return "chunked", limit, expects_continue
        if not 0 <= length <= limit:
            return None, 0, False  # over its limit: the app answers 413 without reading it
        return length, limit, expects_continue and length > 0

    def _limit(self, method: str, target: str, mimetype: str) -> tuple[int, bool]:
        """The body limit of the route a request is for (``uploads.body_limit``)."""
        app = getattr(self, "wsgi", None)
        path = unquote(urlsplit(target).path or "/", errors="replace")
        try:
            return body_limit(app, method, path, mimetype)
        except Exception:  # noqa: BLE001 - not this project's app: the plain limits
            limit = self.body_limit
            return (min(limit, MAX_URLENCODED_BYTES) if mimetype == URLENCODED else limit), \
                False

    # ----------------------------------------------------------------- TLS

    def _start_tls(self, conn) -> None:
        """A new connection to a server with its own certificate (gunicorn's
        ``certfile``, classroom mode): the handshake runs here too, without blocking and
        within the head's deadline, and then the request is read as over plain HTTP.
        (gunicorn's ``gthread`` shakes hands in a thread, on a blocking socket: eight
        clients that sent part of a handshake stalled a worker of 4 threads.)"""
        arrival = self.arriving[conn] = Arrival(b"", self.request_timeout, self.head_timeout)
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
        if not arrival.received:  # a connection that never sent a byte: no request
            self._close(conn, arrival)
            return
        if arrival.head_end is None:
            message = Message("The request's headers arrived too slowly (they may take "
                              "%(seconds)s s); please try again.",
                              seconds=f"{self.head_timeout:g}")
        else:
            message = Message("The request arrived too slowly (it may take %(seconds)s s, "
                              "and a second more for every %(kb)s KB sent); please try "
                              "again.", seconds=f"{self.request_timeout:g}",
                              kb=MIN_RATE // 1024)
        self._refuse(conn, arrival, 408, "request_timeout", message)
        try:
            from webapp.http import metrics  # after the fork: the worker's own metric files

            metrics.UPLOADS_REFUSED.labels("timeout").inc()
        except Exception:  # noqa: BLE001
            pass

    def _refuse(self, conn, arrival: Arrival, status: int, code: str, message: str) -> None:
        """Answer an arriving request here (JSON, one access log line) and close."""
        sent = self._send(conn, self._answer(status, code, message, arrival.data))
        self._log_answer(conn, arrival, status, code, sent)
        self._forget(conn, arrival)
        self._linger(conn)

    def _log_answer(self, conn, arrival: Arrival, status: int, code: str, sent: int) -> None:
        """One access log line, like any answered request (webapp/http/accesslog.py)."""
        line = bytes(arrival.data[:1024]).lstrip(b"\r\n").split(b"\r\n", 1)[0]
        method, _, rest = line.decode("latin-1").partition(" ")
        environ = {"REQUEST_METHOD": method[:16] or None, "PATH_INFO": rest.split(" ")[0]
                   .split("?")[0][:200] or None, "REMOTE_ADDR": _address(conn.client),
                   "webapp.error": code}
        answer = _Answer(str(status), sent)
        elapsed = _dt.timedelta(seconds=time.monotonic() - arrival.started)
        try:
            self.log.access(answer, None, environ, elapsed)
        except Exception:  # noqa: BLE001 - a log line never takes the worker down
            pass

    def _answer(self, status: int, code: str, message: str, head: bytes) -> bytes:
        """``_answer`` with ``message`` in the language the app would answer the request
        in (``webapp.i18n``: its ``?lang``, its cookie, the teacher's language, its
        Accept-Language), read from the bytes of its head that arrived; English without
        any, or when they cannot be read."""
        app = getattr(self, "wsgi", None)
        if head and isinstance(message, Message) and hasattr(app, "test_request_context"):
            try:
                # Not at import: gunicorn's master imports this module (no Babel there).
                from webapp.i18n import translate

                line, *lines = bytes(head[:MAX_HEAD_BYTES]).lstrip(b"\r\n").split(b"\r\n")
                target = line.decode("latin-1").split(" ")[1]
                wanted = ("accept-language", "cookie")
                headers = [(name.strip(), value.strip()) for name, _, value in (
                    raw.decode("latin-1").partition(":") for raw in lines)
                    if name.strip().lower() in wanted]
                with app.test_request_context(target if target.startswith("/") else "/",
                                              headers=headers):
                    message = translate(message)
            except Exception:  # noqa: BLE001 - a head that says nothing readable: English
                pass
        return _answer(status, code, message)

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

    def _linger(self, conn) -> None:
        """Close after an answer the client may still be sending into: stop writing,
        read and drop what comes for up to ``LINGER_SECONDS`` (closing a socket with
        unread data resets the connection, and the client could lose the answer)."""
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._drain, conn))
        except (OSError, ValueError, KeyError):
            self.nr_conns -= 1
            conn.close()
            return
        self.lingering[conn] = time.monotonic() + LINGER_SECONDS
        conn.stop_counting()  # answered: its address may open another

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
        if self.lingering.pop(conn, None) is None:
            return
        self._drop(conn)

    def _drop(self, conn) -> None:
        """Out of the event loop, and closed."""
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self.nr_conns -= 1
        conn.close()


class ReadAhead(SocketUnreader):
    """The parser's source once a request has arrived: the bytes read ahead, then the
    socket.  (gunicorn's ``unread`` would hold them in a buffer that every read copies
    whole: reading a 19 MB body that way took seconds.)  ``whole``: the request's body
    is all in ``ahead``.

    What is ahead is handed on in pieces of at most ``AHEAD_PIECE``, the size the app
    reads a body in (Werkzeug's multipart parser: 64 KB): gunicorn's reader keeps what
    a piece holds beyond the read in a buffer it copies on every read, so 1 MB pieces
    (its largest ``recv``) made each 64 KB read copy up to 2 MB: a 0.9 MB photo took
    2.3 ms to read instead of 0.7."""

    AHEAD_PIECE = 64 * 1024

    def __init__(self, sock, data: bytearray, whole: bool = False):
        super().__init__(sock)
        self.ahead, self.at, self.whole = data, 0, whole

    def chunk(self, size_hint=None):
        if self.at < len(self.ahead):
            size = max(self.mxchunk, min(size_hint or 0, self.AHEAD_PIECE))
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


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


def _answer(status: int, code: str, message: str) -> bytes:
    """A complete JSON error response (UTF-8, like the app's) that closes the connection."""
    body = json.dumps({"error": {"code": code, "message": message}},
                      ensure_ascii=False).encode("utf-8")
    retry = "Retry-After: 1\r\n" if status == 503 else ""
    return (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{retry}Connection: close\r\n\r\n").encode() + body


def _address(client) -> str | None:
    return client[0] if isinstance(client, tuple) and client else None


def _without_expect(head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    kept = [line for line in lines
            if line.partition(b":")[0].strip().lower() != b"expect"]
    return b"\r\n".join(kept)
