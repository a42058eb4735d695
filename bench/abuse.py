"""One attacker against the shipped setup: does any single client stall or bloat a worker?

Starts the server the way the image does (``gunicorn app:app`` with gunicorn.conf.py
and the Dockerfile's environment, bound to 127.0.0.1 instead of 0.0.0.0, /data in a
temporary folder; defaults for everything else: one worker on two cores), then sends one
attack of every class in docs/security.md, each built by testkit/attacks.py, one after
the other, and for each prints:

* its answer and the **time to it after the body's end** (the client's last byte);
* the worker's **RSS growth** (peak during the attack, sampled every 20 ms, minus the
  level before it);
* the **latency of a real photo** sent to /predict every 0.25 s while the attack runs
  (its slowest answer; every one must be a 200), also as a ratio to the median photo
  latency measured on the quiet server in the same run.

Targets, on a quiet 2-core machine: the 4xx within 2 s of the body's end, RSS growth at
most 100 MB, every concurrent photo a 200 within 2 s; for the attacks on slots,
connections, headers, pixels and metrics labels (the last five): every concurrent photo
a 200 within 2 s, RSS growth at most 150 MB and ``/metrics`` at most 200 KB afterwards
(its size is printed after every attack).  Figures taken while the machine is busy are
noisy: say so when you quote them.

    .venv/bin/python -m bench.abuse
    .venv/bin/python -m bench.abuse --only slow-headers --worker-class gthread  # before
    .venv/bin/python -m bench.abuse --only connections   # one class (or a word of its name)
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import requests
from urllib3 import encode_multipart_formdata

from testkit import attacks, ops
from testkit.server import Server, free_port

TOKEN = "bench-abuse-token-0123456789"
MB = attacks.MB


def dockerfile_env() -> dict[str, str]:
    """The ENV lines of the Dockerfile (what `docker run` gives the server)."""
    from testkit.deploy import dockerfile, env_of

    return env_of(dockerfile())


def start_server(work: Path, extra: list[str]) -> Server:
    env = {**os.environ, **dockerfile_env()}
    env["PATH"] = os.environ["PATH"]  # the image's venv path; ours is this interpreter's
    env["TORCH_HOME"] = os.environ["TORCH_HOME"]  # the image's build-time weights folder
    data = work / "data"
    for key, value in list(env.items()):
        if value.startswith("/data/") or value == "/data":
            env[key] = str(data / value.removeprefix("/data").lstrip("/"))
    port = free_port()
    env.update(HOST="127.0.0.1", PORT=str(port), ADMIN_TOKEN=TOKEN, DATA_DIR=str(data / "datasets"))
    for name in ("WEB_CONCURRENCY", "TORCH_THREADS", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    argv = [sys.executable, "-m", "gunicorn", "app:app", *extra]  # the image's CMD
    return Server(argv, env, port, work / "server.log")


# --------------------------------------------------------------------------- sending


@dataclass
class Request:
    method: str
    path: str
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    chunked: bool = False
    rate: float | None = None  # bytes per second, or as fast as possible


@dataclass
class Answer:
    status: int
    code: str | None
    after_body: float  # seconds from the body's last byte to the answer
    total: float


def send(port: int, req: Request, timeout: float = 600) -> Answer:
    """A raw HTTP/1.1 request (so the moment the body ends is known)."""
    headers = {"Host": "127.0.0.1", "Connection": "close", **req.headers}
    if req.chunked:
        headers["Transfer-Encoding"] = "chunked"
        step = 64 * 1024
        body = b"".join(f"{len(req.body[i:i + step]):x}\r\n".encode() + req.body[i:i + step]
                        + b"\r\n" for i in range(0, len(req.body), step)) + b"0\r\n\r\n"
    else:
        headers["Content-Length"] = str(len(req.body))
        body = req.body
    head = f"{req.method} {req.path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    started = time.monotonic()
    try:
        sock.sendall(head.encode())
        if req.rate:
            step = max(1, int(req.rate / 10))
            for at in range(0, len(body), step):
                sock.sendall(body[at:at + step])
                time.sleep(max(0.0, started + (at + step) / req.rate - time.monotonic()))
        else:
            sock.sendall(body)
    except OSError:  # answered (and closed) before the whole body was sent
        pass
    body_end = time.monotonic()
    data = b""
    try:
        while chunk := sock.recv(65536):  # Connection: close
            data += chunk
    except OSError:
        pass
    answered = time.monotonic()
    sock.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    code = None
    try:
        code = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    return Answer(status, code, max(0.0, answered - body_end), answered - started)


def multipart(fields) -> tuple[bytes, dict]:
    """A multipart body of ``fields`` (a dict, or (name, value) pairs when a name
    repeats) and its Content-Type."""
    body, content_type = encode_multipart_formdata(fields)
    return body, {"Content-Type": content_type}


def upload(data: bytes, name="x.jpg") -> Request:
    body, headers = multipart({"image": (name, data, "image/jpeg")})
    return Request("POST", "/predict", body, headers)


def archive(data: bytes, name: str, rate: float | None = None) -> Request:
    body, headers = multipart({"archive": (f"{name}.zip", data), "name": name})
    return Request("POST", "/admin/api/datasets", body,
                   {**headers, "Authorization": f"Bearer {TOKEN}"}, rate=rate)


def steady_zip(size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("cat/cat.png", attacks.real_png())
        zf.writestr("cat/noise.bin", random.Random(0).randbytes(size))
    return buf.getvalue()


# --------------------------------------------------------------------------- measuring


class Watch:
    """While an attack runs: the worker's RSS every 20 ms, a real photo every 0.25 s."""

    def __init__(self, server: Server, photo: bytes):
        self.server, self.photo = server, photo
        self.stop = threading.Event()
        self.rss: list[float] = []
        self.photos: list[tuple[int, float]] = []
        self.threads = [threading.Thread(target=self._sample),
                        threading.Thread(target=self._photos)]

    def __enter__(self):
        self.base = self._rss()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def _rss(self) -> float:
        total = 0.0
        for pid in ops.worker_pids(self.server):
            try:
                total += ops.rss_mb(pid)
            except (OSError, KeyError):
                pass
        return total

    def _sample(self):
        while not self.stop.wait(0.02):
            self.rss.append(self._rss())

    def _photos(self):
        while not self.stop.is_set():  # the first one as the attack starts
            started = time.monotonic()
            try:
                response = requests.post(self.server.url + "/predict", timeout=60,
                                         files={"image": ("cat.jpg", self.photo)})
                status = response.status_code
            except requests.RequestException:
                status = 0
            self.photos.append((status, time.monotonic() - started))
            self.stop.wait(0.25)

    @property
    def growth(self) -> float:
        return max(self.rss, default=self.base) - self.base


def quiet_latency(server: Server, photo: bytes, n: int = 15) -> float:
    times = []
    for _ in range(n):
        started = time.monotonic()
        response = requests.post(server.url + "/predict", timeout=60,
                                 files={"image": ("cat.jpg", photo)})
        assert response.status_code == 200, response.text
        times.append(time.monotonic() - started)
    return statistics.median(times)


def run_requests(server: Server, reqs: list[Request]) -> list[Answer]:
    answers: list = [None] * len(reqs)

    def one(n, req):
        answers[n] = send(server.port, req)

    threads = [threading.Thread(target=one, args=item) for item in enumerate(reqs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def slow_headers(server: Server, connections: int = 50, seconds: float = 12) -> list[Answer]:
    """``connections`` clients sending one header line every 2 s (bounded: ``seconds``),
    then each one's fate within 45 s: 408, closed (0) or still waiting (0)."""
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        socks.append(sock)
    started = time.monotonic()
    line = 0
    while time.monotonic() - started < seconds:
        time.sleep(2)
        for sock in socks:
            try:
                sock.sendall(f"X-Slow-{line}: 1\r\n".encode())
            except OSError:
                pass
        line += 1
    answers, deadline = [], time.monotonic() + 45  # REQUEST_TIMEOUT (30 s) and then some
    for sock in socks:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data = sock.recv(100)
        except OSError:
            data = b""
        waited = time.monotonic() - started
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
        answers.append(Answer(status, "request_timeout" if status == 408 else None, 0.0,
                              waited))
        sock.close()
    return answers


def _connect(server: Server, source: str, timeout: float = 10) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", server.port), timeout=timeout,
                                        source_address=(source, 0))
    except OSError:
        return None


def _fates(socks: list, wait: float) -> list[Answer]:
    """What each held connection got within ``wait`` seconds: its status (0: closed or
    still waiting)."""
    answers, deadline = [], time.monotonic() + wait
    for sock in socks:
        data = b""
        if sock is not None:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = sock.recv(200)
            except OSError:
                pass
            sock.close()
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
        code = None
        for name in (b"request_timeout", b"too_many_connections", b"request_header_too_large"):
            if name in data:
                code = name.decode()
        answers.append(Answer(status, code, 0.0, 0.0))
    return answers


def chunked_heads(server: Server, connections: int = 12) -> list[Answer]:
    """``connections`` clients that send a chunked POST /predict head and a first chunk,
    then nothing (they took every upload slot for ~100 s before chunked bodies were read
    ahead), from another address than the photos'."""
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n--b\r\nContent-Dis")
    socks = [_connect(server, "127.0.0.2") for _ in range(connections)]
    for sock in socks:
        if sock is not None:
            sock.sendall(head)
    return _fates(socks, 45)  # REQUEST_TIMEOUT and then some


def idle_connections(server: Server, connections: int = 2200) -> list[Answer]:
    """``connections`` connections from one address, each sending one byte (each worker
    stopped accepting at 1,000 connections: a photo waited 32 s per wave)."""
    socks = []
    for _ in range(connections):
        sock = _connect(server, "127.0.0.3", timeout=5)
        if sock is not None:
            try:
                sock.sendall(b"G")
            except OSError:
                pass
        socks.append(sock)
    return _fates(socks, 20)  # HEADER_TIMEOUT and then some


def big_heads(server: Server, connections: int = 600, size: int = int(0.78 * MB)
              ) -> list[Answer]:
    """``connections`` clients sending ``size`` bytes of header lines each (they grew the
    workers by 274-323 MB), spread over 10 addresses so that no address is over its
    connection cap: what is measured is the head limit."""
    lines = attacks.header_lines(size)

    def one(n: int) -> Answer:
        sock = _connect(server, f"127.0.1.{2 + n % 10}")
        if sock is None:
            return Answer(0, None, 0.0, 0.0)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for line in lines:
                sock.sendall(line)
        except OSError:
            pass
        return _fates([sock], 20)[0]

    answers: list = [None] * connections
    threads = [threading.Thread(target=lambda n=n: answers.__setitem__(n, one(n)))
               for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def pixel_requests(server: Server, requests_: int = 4, images: int = 16) -> list[Answer]:
    """``requests_`` requests at once, each of ``images`` legal 49-megapixel PNGs (16 s and
    ~414 MB of a worker each, before the request's pixel budget)."""
    png = attacks.big_png()
    body, headers = multipart([("image", (f"{n}.png", png, "image/png"))
                               for n in range(images)])
    return run_requests(server, [Request("POST", "/predict", body, headers)] * requests_)


def random_methods(server: Server, count: int = 20_000, clients: int = 8) -> list[Answer]:
    """``count`` requests with random methods, kept-alive (each was a new /metrics series:
    97 KB -> 1.8 MB, a scrape 0.04 -> 1.8 s)."""
    statuses: list[int] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        reader = sock.makefile("rb")
        for _ in range(count // clients):
            method = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(8))
            for _attempt in range(2):  # again on a new connection if the server closed it
                try:
                    sock.sendall(f"{method} /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    status_line = reader.readline()
                except OSError:
                    status_line = b""
                if status_line:
                    break
                sock.close()
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
                reader = sock.makefile("rb")
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
            statuses.append(int(status_line.split(b" ")[1]) if status_line else 0)
        sock.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [Answer(status, None, 0.0, 0.0) for status in set(statuses)] or [
        Answer(0, None, 0.0, 0.0)]


def metrics_size(server: Server) -> tuple[int, float]:
    """(bytes of /metrics, seconds the scrape took)."""
    started = time.monotonic()
    size = len(requests.get(server.url + "/metrics", timeout=120).content)
    return size, time.monotonic() - started


# --------------------------------------------------------------------------- the attacks


def attack_list(quick: bool):
    n = 4 if quick else 19
    deep = attacks.deep_json(30_000)
    return [
        ("cpu", f"2 × JPEG of FF padding, {n} MB, to /predict",
         lambda s: run_requests(s, [upload(attacks.filler_jpeg(n * MB))] * 2)),
        ("cpu", "JPEG with 5,000 repeated scans to /predict",
         lambda s: run_requests(s, [upload(attacks.many_scans_jpeg(5000))])),
        ("cpu", f"dataset zip of 40 padding JPEGs ({n} MB each)",
         lambda s: run_requests(s, [archive(attacks.filler_zip(40, n * MB), "padding")])),
        ("memory", f"4 × form of {n} MB a=&a=&... to /admin/login",
         lambda s: run_requests(s, [Request("POST", "/admin/login", attacks.form_flood(
             n * MB), {"Content-Type": "application/x-www-form-urlencoded",
                       "Accept": "application/json"})] * 4)),
        ("memory", "multipart form of 5,000 parts to /predict",
         lambda s: run_requests(s, [Request("POST", "/predict", attacks.multipart_parts(
             5000), {"Content-Type": "multipart/form-data; boundary=b"})])),
        ("slow", "50 connections sending a header line every 2 s",
         lambda s: slow_headers(s)),
        ("slow", "8 MB dataset zip at 250 KB/s (32 s, over REQUEST_TIMEOUT)",
         lambda s: run_requests(s, [archive(steady_zip(8 * MB), "steady",
                                            rate=250 * 1024)])),
        ("limit", "25 MB chunked raw image body (over MAX_UPLOAD_MB)",
         lambda s: run_requests(s, [Request("POST", "/predict", attacks.real_jpeg()
                                            + bytes(25 * MB), {"Content-Type": "image/jpeg"},
                                            chunked=True)])),
        ("json", "JSON nested 30,000 deep to PUT /admin/api/kiosk",
         lambda s: run_requests(s, [Request("PUT", "/admin/api/kiosk", deep, {
             "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})])),
        ("zip", "zip of 100,000 entries whose end record says 1",
         lambda s: run_requests(s, [archive(attacks.understated_zip(100_000), "many")])),
        ("slots", "12 connections sending only a chunked POST /predict head",
         lambda s: chunked_heads(s)),
        ("connections", "2,200 idle connections from one address, 1 byte each",
         lambda s: idle_connections(s)),
        ("headers", "600 connections x 0.78 MB of header lines (10 addresses)",
         lambda s: big_heads(s)),
        ("pixels", "4 requests at once of 16 legal 49-MP PNGs each",
         lambda s: pixel_requests(s)),
        ("metrics", "20,000 requests with random methods",
         lambda s: random_methods(s)),
    ]

# Attacks after which the concurrent photo, memory and /metrics are held to the
# reliability targets (a photo within 2 s, RSS +150 MB at most, /metrics 200 KB at most).
RELIABILITY = ("slots", "connections", "headers", "pixels", "metrics")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only attacks whose class or name contains this")
    parser.add_argument("--quick", action="store_true", help="4 MB payloads instead of 19")
    parser.add_argument("--worker-class", help="override gunicorn's worker class "
                        "(gthread: the stock threaded worker, for a before/after)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-abuse-"))
    extra = ["--worker-class", args.worker_class] if args.worker_class else []
    server = start_server(work, extra)
    photo = attacks.real_jpeg()
    rows, missed = [], 0
    try:
        server.wait_ready(timeout=300)
        ops.wait_decided(server)  # the measured engine serves: no swap during an attack
        quiet = quiet_latency(server, photo)
        print(f"server: gunicorn app:app ({args.worker_class or 'webapp.http.worker'}), "
              f"{len(ops.worker_pids(server))} worker(s); quiet photo latency "
              f"{quiet * 1000:.0f} ms (median of 15)\n")
        for kind, name, run in attack_list(args.quick):
            if args.only and args.only not in kind and args.only not in name:
                continue
            with Watch(server, photo) as watch:
                answers = run(server)
                time.sleep(0.5)  # one more photo after the last answer
            photos = watch.photos or [(0, float("nan"))]
            worst = max(t for _, t in photos)
            ok_photos = all(status == 200 for status, _ in photos)
            after = max(a.after_body for a in answers)
            counts = collections.Counter(f"{a.status} {a.code or ''}".strip() for a in answers)
            outcome = ", ".join(f"{k}" + (f" x{n}" if n > 1 else "")
                                for k, n in sorted(counts.items()))
            scrape, scrape_seconds = metrics_size(server)
            held = kind in RELIABILITY
            fine = (after <= 2 or kind == "slow" or held) and ok_photos and worst <= 2 \
                and watch.growth <= (150 if held else 100) and (not held or scrape <= 200_000)
            missed += not fine
            rows.append((kind, name, outcome, after, watch.growth, len(photos), ok_photos,
                         worst, worst / quiet, fine, scrape))
            print(f"[{kind}] {name}\n    answer: {outcome}; {after:.2f} s after the body's "
                  f"end ({max(a.total for a in answers):.1f} s in all); worker RSS "
                  f"+{watch.growth:.0f} MB; {len(photos)} photos meanwhile, "
                  f"{'all 200' if ok_photos else 'NOT ALL 200'}, slowest {worst * 1000:.0f} "
                  f"ms ({worst / quiet:.1f}x quiet); /metrics {scrape / 1000:.0f} KB in "
                  f"{scrape_seconds:.2f} s {'ok' if fine else 'MISSED A TARGET'}")
    finally:
        server.stop()
    print("\n| class | attack | answer | s after body | RSS growth | photos meanwhile | "
          "/metrics |")
    print("|---|---|---|---|---|---|---|")
    for kind, name, outcome, after, growth, n, ok, worst, ratio, _, scrape in rows:
        print(f"| {kind} | {name} | {outcome} | {after:.2f} | +{growth:.0f} MB | {n}, "
              f"{'all 200' if ok else 'NOT all 200'}, slowest {worst * 1000:.0f} ms "
              f"({ratio:.1f}x quiet) | {scrape / 1000:.0f} KB |")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
