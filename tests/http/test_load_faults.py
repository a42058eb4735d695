"""Real gunicorn servers on 127.0.0.1 under load and faults: 8 concurrent clients while
workers recycle (max_requests), a worker SIGKILLed mid-load, a full and a read-only
MODEL_DIR during checkpoint uploads, a corrupted active checkpoint at startup.  Bounded
durations; latencies are printed, never asserted (measurements live in bench/)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from testkit import ops
from testkit.photos import encode, photo
from testkit.registry import leftovers, snapshot
from testkit.weights import FRUIT
from webapp.stores.registry import BUILTIN, Registry

pytestmark = pytest.mark.system  # real servers on 127.0.0.1 (conftest.py: the tiers)

TOKEN = "faults-admin-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
LOAD_SECONDS = 20
RECYCLE_BOUND = 300  # seconds: ends a hang; not a speed requirement


def small_jpeg() -> bytes:
    image = photo("coffee").image.copy()
    image.thumbnail((320, 320))
    return encode(image, "JPEG", quality=90)


def report(label: str, result: ops.LoadResult, seconds: float) -> None:
    n = len(result.requests)
    print(f"{label}: {n} requests in {seconds:.0f} s ({n / seconds:.1f}/s), "
          f"{len(result.errors)} errors, p50 {result.percentile(50):.0f} ms, "
          f"p90 {result.percentile(90):.0f} ms, p99 {result.percentile(99):.0f} ms")


# --------------------------------------------------------------------------- load


def test_eight_clients_get_no_errors_while_workers_recycle(tmp_path):
    """8 keep-alive clients, 8 requests each, on 2 workers that restart every 10-15
    requests (max_requests + jitter): 64 requests need at least five worker lives, so
    workers recycle mid-load; every request is answered 200, and /metrics still counts
    every one of them after the workers that served them are gone.  A count, not a rate:
    a busy machine takes longer (RECYCLE_BOUND is only there to end a hang)."""
    server = ops.launch(tmp_path, "load", WEB_CONCURRENCY=2, TORCH_THREADS=1, HTTP_THREADS=4,
                        MAX_REQUESTS=10, MAX_REQUESTS_JITTER=5)
    try:
        server.wait_ready()
        first = ops.wait_for_workers(server, 2)
        started = time.monotonic()
        result = ops.run_load(server.url, small_jpeg(), clients=8, seconds=RECYCLE_BOUND,
                              max_requests_per_client=8)
        report("8 clients, workers recycling", result, time.monotonic() - started)
        assert not result.errors, result.errors[:5]
        assert len(result.requests) == 64
        restarts = server.log.count("Autorestarting worker")
        print(f"worker restarts during the run: {restarts}")
        assert restarts >= 2
        assert set(ops.wait_for_workers(server, 2)).isdisjoint(first)
        samples = ops.scrape(server.url)
        assert ops.total(samples, "http_requests_total", endpoint="/predict",
                         status="200") == len(result.requests)
        assert ops.total(samples, "classifier_stage_seconds_count",
                         stage="inference") == len(result.requests)
        assert not [m for m in ("WORKER TIMEOUT", "was sent SIGKILL", "Traceback")
                    if m in server.log]
    finally:
        server.stop()


def test_a_killed_worker_fails_only_its_requests_in_flight(tmp_path):
    """SIGKILL one of two workers while 8 clients (a new connection per request) load
    the server: the only failures are requests that were in flight when it died, every
    request started afterwards is answered by the other worker, and the master starts a
    replacement that serves again, by itself."""
    server = ops.launch(tmp_path, "kill", WEB_CONCURRENCY=2, TORCH_THREADS=1, HTTP_THREADS=4,
                        MAX_REQUESTS=0)
    try:
        server.wait_ready()
        victim, survivor = ops.wait_for_workers(server, 2)
        results = {}
        load = threading.Thread(target=lambda: results.setdefault("load", ops.run_load(
            server.url, small_jpeg(), clients=8, seconds=LOAD_SECONDS, keepalive=False)))
        load.start()
        time.sleep(LOAD_SECONDS / 3)
        killed_at = time.monotonic()
        ops.kill(victim)
        load.join()
        result = results["load"]
        report("8 clients, one worker killed", result, LOAD_SECONDS)
        failed = result.errors
        print(f"failed requests: {len(failed)}: {[r[3][:80] for r in failed]}")
        margin = 0.5  # the signal is delivered asynchronously
        assert all(started <= killed_at + margin and finished >= killed_at
                   for started, finished, _, _ in failed), failed
        assert len(failed) <= 8  # at most every client's one request in flight
        later = [r for r in result.requests if r[0] > killed_at + margin]
        assert later and all(status == 200 for _, _, status, _ in later)
        # The master noticed and replaced the worker; the replacement serves.
        workers = ops.wait_for_workers(server, 2)
        assert victim not in workers and survivor in workers
        assert f"Worker (pid:{victim}) was sent SIGKILL" in server.log
        replacement = next(pid for pid in workers if pid != survivor)
        served = set()
        deadline = time.monotonic() + 60
        while replacement not in served and time.monotonic() < deadline:
            response = requests.post(server.url + "/predict", timeout=60,
                                     files={"image": ("c.jpg", small_jpeg())})
            assert response.status_code == 200
            served = {line["pid"] for line in ops.access_lines(server.log)}
        assert replacement in served
        info = ops.scrape(server.url)
        pids = {dict(items)["pid"] for (name, items) in info if name == "classifier_model_info"}
        assert pids == {str(pid) for pid in workers}  # the dead worker's gauge is gone
    finally:
        server.stop()


# --------------------------------------------------------------------------- the disk


def _mount_tmpfs(path: Path, megabytes: int) -> bool:
    """A small tmpfs at ``path`` (a real full disk), when this process may mount."""
    if os.getuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0777",
                           "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def _upload(server, data: bytes, filename="model.pt", **form):
    return requests.post(server.url + "/admin/api/models", headers=BEARER, data=form,
                         files={"checkpoint": (filename, data)}, timeout=300)


def _error(response, status, code):
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["code"] == code, error
    return error["message"]


def _serving(server) -> dict:
    response = requests.post(server.url + "/predict", timeout=60,
                             files={"image": ("c.jpg", small_jpeg())})
    assert response.status_code == 200, response.text
    return response.json()["model"]


def _chmod_tree(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | 0o222 if writable else mode & ~0o222)


def _make_read_only(path: Path, mounted: bool, read_only: bool) -> None:
    """A read-only file system (EROFS, which binds root too) when ``path`` is our tmpfs;
    otherwise file modes (EACCES, for a server that does not run as root)."""
    if mounted:
        subprocess.run(["mount", "-o", "remount," + ("ro" if read_only else "rw"), str(path)],
                       check=True, capture_output=True)
    else:
        _chmod_tree(path, writable=not read_only)


def test_a_full_or_read_only_model_dir_refuses_uploads_clearly_and_serving_goes_on(
        fruit_checkpoint):
    """MODEL_DIR on a 70 MB tmpfs when mounting is allowed (a real ENOSPC, then remounted
    read-only: EROFS), otherwise under a 60 MB file size limit (EFBIG, the same path) and
    made read-only by file modes, the server without the capabilities that let root
    ignore them.  A full store: 507 store_full; a read-only
    one: 503 store_read_only.  Either way the store is unchanged, no partial upload is
    left in tmp/, /predict keeps answering, and writing works again once there is room
    or permission, without a restart."""
    base = Path(tempfile.mkdtemp(prefix="model-dir-faults-"))
    store_dir = base / "models"
    for path in (store_dir, base / "torch", base / "faults-tmp"):
        path.mkdir()
    mounted = _mount_tmpfs(store_dir, 70)
    prefix = ()
    if not mounted:
        if os.getuid() == 0:  # root ignores file modes unless it drops the capabilities
            prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner")
        prefix = ("prlimit", f"--fsize={60 << 20}", *prefix)
    print("full disk simulated with", "a 70 MB tmpfs" if mounted else "RLIMIT_FSIZE 60 MB")
    server = ops.launch(base, "faults", prefix=prefix, WEB_CONCURRENCY=1, TORCH_THREADS=1,
                        MODEL_DIR=store_dir, ADMIN_TOKEN=TOKEN, TORCH_HOME=base / "torch",
                        HOME=base)
    store = Registry(store_dir)
    try:
        server.wait_ready()
        response = _upload(server, fruit_checkpoint.read_bytes(), "fruit.pt", name="Fruit")
        assert response.status_code == 201, response.text
        fruit = response.json()["id"]
        before = snapshot(store_dir), store.state()

        # Full: an 80 MB upload does not fit (the tmpfs has ~25 MB left).
        message = _error(_upload(server, b"\0" * (80 << 20), "big.pt"), 507, "store_full")
        assert "nothing was stored" in message and str(store_dir) not in message
        assert (snapshot(store_dir), store.state()) == before
        assert leftovers(store_dir) == []
        assert _serving(server)["id"] == BUILTIN
        # Small writes still fit: activating works, and is served.
        assert requests.post(server.url + f"/admin/api/models/{fruit}/activate",
                             headers=BEARER, timeout=60).status_code == 200
        deadline = time.monotonic() + 30
        while _serving(server)["id"] != fruit:
            assert time.monotonic() < deadline
            time.sleep(0.2)

        # Read-only: uploads and changes are refused, serving goes on.
        before = snapshot(store_dir), store.state()
        _make_read_only(store_dir, mounted, True)
        try:
            message = _error(_upload(server, fruit_checkpoint.read_bytes()[:1000] + b"x",
                                     "new.pt"), 503, "store_read_only")
            assert "nothing was changed" in message and str(store_dir) not in message
            _error(requests.post(server.url + "/admin/api/rollback", headers=BEARER,
                                 timeout=60), 503, "store_read_only")
            assert (snapshot(store_dir), store.state()) == before
            model = _serving(server)
            assert model["id"] == fruit
            ready = requests.get(server.url + "/readyz", timeout=30).json()
            assert ready["status"] == "ready" and ready["registry"]["in_sync"] is True
        finally:
            _make_read_only(store_dir, mounted, False)
        assert requests.post(server.url + "/admin/api/rollback", headers=BEARER,
                             timeout=60).json()["active"] == BUILTIN
        assert "Traceback" not in server.log and "internal_error" not in server.log
    finally:
        server.stop()
        if mounted:
            subprocess.run(["umount", str(store_dir)], check=False)
        with contextlib.suppress(OSError):
            shutil.rmtree(base)


# --------------------------------------------------------------------------- startup


def test_a_corrupted_active_checkpoint_at_startup_falls_back_and_says_so(
        tmp_path, fruit_checkpoint, tools_checkpoint):
    """The active model's file was damaged on disk while the server was down: both
    workers start on the previous good model (from the history), /readyz and the log say
    which model could not be loaded and why, and the answers come from the fallback."""
    store = Registry(tmp_path / "store")
    fruit = store.add(fruit_checkpoint, name="Fruit")["id"]
    tools = store.add(tools_checkpoint, name="Tools")["id"]
    store.activate(fruit)
    store.activate(tools)  # history: fruit, builtin
    damaged = store.root / "models" / tools / "checkpoint.pt"
    damaged.write_bytes(damaged.read_bytes()[:4096])

    server = ops.launch(tmp_path, "corrupt", WEB_CONCURRENCY=2, TORCH_THREADS=1,
                        MODEL_DIR=store.root)
    try:
        ready = server.wait_ready()
        assert ready["status"] == "ready"
        assert ready["model"]["id"] == fruit and ready["model"]["name"] == "Fruit"
        assert ready["registry"] == {"active": tools, "serving": fruit, "in_sync": False}
        assert f"The active model {tools} could not be loaded" in ready["notice"]
        assert "not the one that was stored (damaged on disk)" in ready["notice"]
        ops.wait_for_workers(server, 2)
        deadline = time.monotonic() + 60
        while server.log.count(f"The active model {tools} could not be loaded") < 2:
            assert time.monotonic() < deadline, server.log[-3000:]
            time.sleep(0.2)
        for _ in range(4):
            model = _serving(server)
            assert model["id"] == fruit
        response = requests.post(server.url + "/predict", timeout=60,
                                 files={"image": ("c.jpg", small_jpeg())})
        assert {p["label"] for p in response.json()["predictions"]} <= set(FRUIT)
    finally:
        server.stop()
