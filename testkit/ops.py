"""Helpers for the tests and benchmarks that run real gunicorn servers: start one for a
whole module, find its workers, read their memory, send corpus cases, read /metrics and
the JSON access log."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from testkit.server import Server, free_port

GUNICORN = [sys.executable, "-m", "gunicorn", "app:app"]
# What gunicorn's master logs when a worker dies or hangs (none of it may appear).
CRASH_MARKERS = ("WORKER TIMEOUT", "was sent SIGKILL", "was sent SIGSEGV", "exited with code",
                 "Worker failed to boot", "Traceback (most recent call last)",
                 "Segmentation fault", "Out of memory", "internal_error")


def launch(log_dir: Path, name: str = "server", prefix: tuple = (), **env_overrides) -> Server:
    """A gunicorn server on 127.0.0.1 with its own TMPDIR (so files it leaves behind can
    be found); call ``.wait_ready()`` and, at the end, ``.stop()``.  ``prefix``: a command
    that execs the server (``setpriv``, ``prlimit``), so the pid stays the master's."""
    port = free_port()
    tmp = log_dir / f"{name}-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "TMPDIR": str(tmp),
           **{k: str(v) for k, v in env_overrides.items()}}
    server = Server([*prefix, *GUNICORN], env, port, log_dir / f"{name}.log")
    server.tmpdir = tmp
    return server


def wait_decided(server, timeout: float = 900) -> dict:
    """``/readyz``'s engine once every answer in a row says the measured choice is served
    (with ``ENGINE``/``QUANTIZE=auto`` a fresh engine cache is measured in the background
    and each worker swaps the chosen engine in on its own: figures taken before that
    measure the swap).  ``server``: a running server (anything with a ``url``: this
    package's ``Server``, the benchmarks'), or a Flask test client."""
    started, settled = time.monotonic(), 0
    while time.monotonic() - started < timeout:
        if hasattr(server, "url"):
            engine = requests.get(server.url + "/readyz", timeout=30).json()["engine"]
        else:
            engine = server.get("/readyz").get_json()["engine"]
        state = (engine.get("auto") or {}).get("state")
        if state == "failed":
            raise RuntimeError(f"the trials failed: {engine['auto'].get('why')}")
        settled = settled + 1 if state != "measuring" else 0
        if settled >= 8:
            return engine
        time.sleep(0.5 if state == "measuring" else 0.05)
    raise RuntimeError(f"no engine chosen after {timeout:g} s")


def worker_pids(server: Server) -> list[int]:
    """The master's children (its workers), from /proc."""
    pid = server.proc.pid
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text("utf-8")
    except OSError:
        return []
    return sorted(int(p) for p in text.split())


def wait_for_workers(server: Server, count: int, timeout: float = 180,
                     ready: bool = True) -> list[int]:
    """Wait until the master has ``count`` workers (and, with ``ready``, each of them has
    logged its model as ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = worker_pids(server)
        if len(pids) == count and (not ready or all(
                f"pid {pid}" in server.log for pid in pids)):
            return pids
        time.sleep(0.2)
    raise AssertionError(f"not {count} ready workers after {timeout} s: {worker_pids(server)}"
                         f"\n{server.log[-3000:]}")


def status_kb(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` value in kB (VmRSS, VmHWM = peak RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text("utf-8").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    return status_kb(pid, "VmHWM") / 1024


def post_case(url: str, case, path: str = "/predict", timeout: float = 120,
              session: requests.Session | None = None) -> requests.Response:
    """Send one corpus case (testkit/hostile.py) the way its ``raw`` flag says."""
    http = session or requests
    if case.raw:
        return http.post(url + path, data=case.data, timeout=timeout,
                         headers={"Content-Type": case.content_type})
    return http.post(url + path, timeout=timeout,
                     files={"image": (case.upload_name, case.data, case.content_type)})


def scrape(url: str) -> dict[tuple, float]:
    """/metrics as {(sample name, sorted label items): value}."""
    text = requests.get(url + "/metrics", timeout=30).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, **labels) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(value for (sample, items), value in samples.items()
               if sample == name and set(labels.items()) <= set(items))


def access_lines(log: str) -> list[dict]:
    """The JSON access log lines of a server log (other lines are gunicorn's own)."""
    out = []
    for line in log.splitlines():
        if line.startswith("{") and '"path"' in line:
            out.append(json.loads(line))
    return out


def logged_requests(server: Server, count: int, timeout: float = 30, **fields) -> list[dict]:
    """The access log lines with these ``fields`` once there are ``count`` of them (or
    what there is after ``timeout``): a worker writes its line after the client has
    the answer."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in access_lines(server.log)
                 if all(line.get(key) == value for key, value in fields.items())]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


@dataclass
class LoadResult:
    """What a load run saw: one (started, finished, status, error) per request."""

    requests: list = field(default_factory=list)

    @property
    def errors(self) -> list:
        return [r for r in self.requests if r[2] != 200]

    def latencies_ms(self) -> list[float]:
        return sorted((r[1] - r[0]) * 1000 for r in self.requests if r[2] == 200)

    def percentile(self, p: float) -> float:
        values = self.latencies_ms()
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run_load(url: str, payload: bytes, clients: int, seconds: float,
             max_requests_per_client: int = 100_000, keepalive: bool = True,
             stop: threading.Event | None = None) -> LoadResult:
    """``clients`` threads posting ``payload`` to /predict for ``seconds`` (each on its own
    keep-alive connection unless ``keepalive`` is false)."""
    result = LoadResult()
    lock = threading.Lock()
    stop = stop or threading.Event()
    deadline = time.monotonic() + seconds

    def client():
        session = requests.Session() if keepalive else None
        for _ in range(max_requests_per_client):
            if stop.is_set() or time.monotonic() >= deadline:
                break
            started = time.monotonic()
            try:
                http = session or requests
                response = http.post(url + "/predict", timeout=120,
                                     files={"image": ("load.jpg", payload, "image/jpeg")})
                status, error = response.status_code, None
                if status != 200:
                    error = response.text[:300]
            except requests.RequestException as exc:
                status, error = 0, repr(exc)
            with lock:
                result.requests.append((started, time.monotonic(), status, error))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


def kill(pid: int, sig=signal.SIGKILL) -> None:
    os.kill(pid, sig)
