"""A server you can leave alone, on real gunicorn servers: a worker that cannot load its
model exits with the reason (and the server stops after a few tries) instead of
answering 500 while /healthz says 200; a damaged active.json serves the last good
model with a notice; a logout that cannot be saved says so and a deleted sessions.json
lets no old cookie back in; uploads and activations under load never kill a worker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from testkit import ops
from testkit.photos import encode, photo
from testkit.weights import FRUIT, TOOLS, save_finetuned_resnet18
from webapp import engines
from webapp.engines import EngineSettings
from webapp.engines.artefacts import ArtefactCache
from webapp.stores.registry import Registry

pytestmark = pytest.mark.system  # real servers on 127.0.0.1 (conftest.py: the tiers)

TOKEN = "fail-safe-admin-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
# The server runs without the capabilities that let root ignore file modes, so a folder
# without write permission is read-only to it (as to the image's unprivileged user).
UNPRIVILEGED = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner")


def small_jpeg() -> bytes:
    image = photo("coffee").image.copy()
    image.thumbnail((320, 320))
    return encode(image, "JPEG", quality=90)


def _chmod_tree(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | 0o222 if writable else mode & ~0o222)


def _seeded_cache(base: Path) -> Path:
    """An engine cache holding the built-in model's entry (copied from the session's)."""
    settings = EngineSettings(cache_dir=os.environ["ENGINE_CACHE_DIR"], quantize="none")
    card = engines.ensure_card(engines.builtin_source({}), settings)
    cache = base / "cache"
    cache.mkdir(parents=True)
    for file in ArtefactCache(settings.cache.root).root.glob(f"{card.key}*"):
        shutil.copy(file, cache / file.name)
    return cache


def _watch_while_failing(server) -> set[tuple[str, int]]:
    """(path, status) of every /healthz and /readyz answer until the server exits."""
    seen = set()
    while server.proc.poll() is None:
        for path in ("/healthz", "/readyz"):
            try:
                seen.add((path, requests.get(server.url + path, timeout=2).status_code))
            except requests.RequestException:
                pass
        time.sleep(0.1)
    return seen


# --------------------------------------------------------------------------- health


@pytest.mark.parametrize("damage", ["empty read-only cache", "undecodable sidecar, read-only"])
def test_a_worker_that_cannot_load_its_model_exits_with_the_reason(tmp_path, damage):
    """Before: a worker whose model failed to load stayed up answering 500 with /healthz
    200 (Docker's HEALTHCHECK and liveness probes saw nothing wrong).  Now it logs the
    reason and exits; the master starts another and stops after 3 failures in a row,
    saying why.  No client ever sees a 500, nor a 200 from /healthz or /readyz."""
    if damage.startswith("empty"):
        cache = tmp_path / "cache"
        cache.mkdir()
    else:
        cache = _seeded_cache(tmp_path)
        sidecar = next(cache.glob("*.card.json.sha256"))
        sidecar.write_bytes(b"\xff\xfe" + sidecar.read_bytes()[2:])
    _chmod_tree(cache, writable=False)
    server = ops.launch(tmp_path, "failing", prefix=UNPRIVILEGED, WEB_CONCURRENCY=1,
                        QUANTIZE="none", ENGINE_CACHE_DIR=cache, MODEL_DIR=tmp_path / "m")
    try:
        seen = _watch_while_failing(server)
        assert server.wait_exit(timeout=300) == 5
        assert not {status for _, status in seen} & {200, 500}, seen
        log = server.log
        assert log.count("the model could not be loaded") == 3
        assert "The engine cache (ENGINE_CACHE_DIR) cannot be written" in log
        assert "The model could not be loaded 3 times in a row, so the server stops" in log
        assert "internal_error" not in log
    finally:
        server.stop()
        _chmod_tree(cache, writable=True)


def test_an_undecodable_sidecar_in_a_writable_cache_is_rebuilt_and_served(tmp_path):
    cache = _seeded_cache(tmp_path)
    sidecar = next(cache.glob("*.fp32.onnx.sha256"))
    sidecar.write_bytes(b"\xff\xfe" + sidecar.read_bytes()[2:])
    server = ops.launch(tmp_path, "rebuilt", WEB_CONCURRENCY=1, QUANTIZE="none",
                        ENGINE_CACHE_DIR=cache, MODEL_DIR=tmp_path / "m")
    try:
        ready = server.wait_ready(timeout=600)
        assert ready["status"] == "ready"
        response = requests.post(server.url + "/predict", timeout=60,
                                 files={"image": ("c.jpg", small_jpeg())})
        assert response.status_code == 200
        assert response.json()["predictions"][0]["label"] == "espresso"
        assert "is damaged; rebuilding it" in server.log
    finally:
        server.stop()


def test_a_read_only_engine_cache_that_holds_the_model_serves(tmp_path):
    """A cache the server cannot write but which holds every entry of its model (built
    before, e.g. into an image): the model is served, compiled without OpenVINO's blob
    cache (ENGINE=openvino: the engine whose cache this is about)."""
    cache = _seeded_cache(tmp_path)
    _chmod_tree(cache, writable=False)
    server = ops.launch(tmp_path, "read-only", prefix=UNPRIVILEGED, WEB_CONCURRENCY=1,
                        ENGINE="openvino", QUANTIZE="none", ENGINE_CACHE_DIR=cache,
                        MODEL_DIR=tmp_path / "m")
    try:
        assert server.wait_ready(timeout=600)["status"] == "ready"
        response = requests.post(server.url + "/predict", timeout=60,
                                 files={"image": ("c.jpg", small_jpeg())})
        assert response.json()["predictions"][0]["label"] == "espresso"
        assert "compiling without it" in server.log
    finally:
        server.stop()
        _chmod_tree(cache, writable=True)


def _mount_tmpfs(path: Path, megabytes: int) -> None:
    """A small tmpfs at ``path`` (a real full disk), or skip where mounting is not
    allowed."""
    if os.getuid() != 0 or not shutil.which("mount") or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0777", "tmpfs",
             str(path)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")


def test_each_store_that_fails_is_the_one_named(tmp_path, fruit_checkpoint):
    """A full engine cache is not an "invalid checkpoint" (422) but 507 naming
    ENGINE_CACHE_DIR; a read-only one 503 naming it, not MODEL_DIR; a full DATA_DIR 507
    naming DATA_DIR, not MODEL_DIR.  Nothing is stored; the model goes on serving."""
    cache, data = tmp_path / "cache", tmp_path / "data"
    cache.mkdir()
    data.mkdir()
    _mount_tmpfs(cache, 64)  # the built-in model's entry and blob fit, a new model not
    try:
        seeded = _seeded_cache(tmp_path / "seed")
        for file in seeded.iterdir():
            if not file.name.endswith((".int8.onnx", ".int8.onnx.sha256")):
                shutil.copy(file, cache / file.name)
        _mount_tmpfs(data, 1)
        server = ops.launch(tmp_path, "stores", WEB_CONCURRENCY=1, QUANTIZE="none",
                            ENGINE_CACHE_DIR=cache, DATA_DIR=data, MODEL_DIR=tmp_path / "m",
                            ADMIN_TOKEN=TOKEN)
        try:
            server.wait_ready(timeout=600)

            def upload():
                with open(fruit_checkpoint, "rb") as fh:
                    return requests.post(server.url + "/admin/api/models", headers=BEARER,
                                         files={"checkpoint": ("fruit.pt", fh)}, timeout=600)

            full = upload()
            assert full.status_code == 507, full.text[:500]
            assert full.json()["error"]["code"] == "store_full"
            assert "engine cache (ENGINE_CACHE_DIR) has no room" in full.json()["error"]["message"]
            subprocess.run(["mount", "-o", "remount,ro", str(cache)], check=True)
            read_only = upload()
            assert read_only.status_code == 503, read_only.text[:500]
            message = read_only.json()["error"]["message"]
            assert "engine cache (ENGINE_CACHE_DIR) cannot be written" in message
            assert "MODEL_DIR" not in message
            models = requests.get(server.url + "/admin/api/models", headers=BEARER,
                                  timeout=60).json()["models"]
            assert [m["id"] for m in models] == ["builtin"]

            made = requests.post(server.url + "/admin/api/datasets", headers=BEARER,
                                 json={"name": "noise", "classes": ["a", "b"]}, timeout=60)
            assert made.status_code == 201, made.text
            noise = encode(Image.effect_noise((1024, 1024), 90).convert("RGB"), "PNG")
            statuses = []
            for _ in range(20):  # about 300 KB each as a JPEG: the 1 MB disk fills up
                answer = requests.post(server.url + "/admin/api/datasets/noise/images",
                                       headers=BEARER, data={"label": "a"},
                                       files={"image": ("noise.png", noise)}, timeout=60)
                statuses.append(answer.status_code)
                if answer.status_code != 201:
                    break
            assert statuses[-1] == 507, statuses
            message = answer.json()["error"]["message"]
            assert "Teach data folder (DATA_DIR) has no room" in message, message
            response = requests.post(server.url + "/predict", timeout=60,
                                     files={"image": ("c.jpg", small_jpeg())})
            assert response.json()["predictions"][0]["label"] == "espresso"
        finally:
            server.stop()
    finally:
        for path in (data, cache):
            subprocess.run(["umount", str(path)], check=False)


# --------------------------------------------------------------------------- state


def test_a_truncated_active_json_serves_the_last_good_model_with_a_notice(
        tmp_path, fruit_checkpoint, tools_checkpoint):
    store = Registry(tmp_path / "store")
    fruit = store.add(fruit_checkpoint, name="Fruit", untrusted=False)["id"]
    tools = store.add(tools_checkpoint, name="Tools", untrusted=False)["id"]
    store.activate(fruit)
    store.activate(tools)  # history: fruit, builtin
    whole = store.pointer.read_bytes()
    store.pointer.write_bytes(whole[:len(whole) // 2])

    server = ops.launch(tmp_path, "pointer", WEB_CONCURRENCY=2, TORCH_THREADS=1,
                        MODEL_DIR=store.root, ADMIN_TOKEN=TOKEN)
    try:
        ready = server.wait_ready(timeout=600)
        assert ready["model"]["id"] == tools and ready["model"]["name"] == "Tools"
        assert ready["registry"] == {"active": tools, "serving": tools, "in_sync": False}
        assert "active.json is damaged" in ready["notice"]
        response = requests.post(server.url + "/predict", timeout=60,
                                 files={"image": ("c.jpg", small_jpeg())})
        assert {p["label"] for p in response.json()["predictions"]} <= set(TOOLS)
        # The history survived: a rollback goes to fruit and repairs the pointer.
        rolled = requests.post(server.url + "/admin/api/rollback", headers=BEARER, timeout=60)
        assert rolled.json()["active"] == fruit
        # Each of the 2 workers swaps on its own: 8 answers in a row from fruit.
        deadline, in_a_row = time.monotonic() + 60, 0
        while in_a_row < 8:
            ready = requests.get(server.url + "/readyz", timeout=30).json()
            answer = requests.post(server.url + "/predict", timeout=60,
                                   files={"image": ("c.jpg", small_jpeg())}).json()
            served = ready["registry"]["in_sync"] and ready["model"]["id"] == fruit \
                and answer["model"]["id"] == fruit
            in_a_row = in_a_row + 1 if served else 0
            if answer["model"]["id"] == fruit:
                assert set(FRUIT) >= {p["label"] for p in answer["predictions"]}
            assert time.monotonic() < deadline, (ready, answer["model"])
            time.sleep(0.05 if served else 0.2)
        assert ready["notice"] is None or "damaged" not in ready["notice"]
    finally:
        server.stop()


def _login(url: str) -> requests.Session:
    session = requests.Session()
    page = session.get(url + "/admin/login", timeout=30).text
    csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
    response = session.post(url + "/admin/login", data={"csrf_token": csrf, "token": TOKEN},
                            allow_redirects=False, timeout=30)
    assert response.status_code == 302, response.text[:300]
    return session


def _csrf(session: requests.Session, url: str) -> str:
    page = session.get(url + "/admin/", timeout=30).text
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)


def _admitted(url: str, cookie: str) -> bool:
    response = requests.get(url + "/admin/api/models", cookies={"session": cookie},
                            timeout=30)
    assert response.status_code in (200, 401), response.text[:300]
    return response.status_code == 200


def test_sessions_fail_closed_on_a_read_only_or_damaged_session_store(tmp_path):
    """A logout on a read-only MODEL_DIR says it could not be saved (and what still
    holds) instead of "Logged out."; a deleted sessions.json lets no earlier cookie in."""
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    server = ops.launch(tmp_path, "sessions", prefix=UNPRIVILEGED, WEB_CONCURRENCY=2,
                        TORCH_THREADS=1, MODEL_DIR=store_dir, ADMIN_TOKEN=TOKEN)
    try:
        server.wait_ready(timeout=600)
        browser = _login(server.url)
        cookie = browser.cookies["session"]
        assert _admitted(server.url, cookie)
        csrf = _csrf(browser, server.url)
        _chmod_tree(store_dir, writable=False)
        try:
            response = browser.post(server.url + "/admin/logout", data={"csrf_token": csrf},
                                    allow_redirects=False, timeout=30)
        finally:
            _chmod_tree(store_dir, writable=True)
        assert response.status_code == 503
        assert "Logging out could not be saved" in response.text
        assert "Logged out." not in response.text
        assert _admitted(server.url, cookie)  # as the page said: copies still work

        (store_dir / "sessions.json").unlink()
        assert not _admitted(server.url, cookie)  # no generation, no session
        again = _login(server.url)  # a new generation
        assert _admitted(server.url, again.cookies["session"])
        assert not _admitted(server.url, cookie)
    finally:
        server.stop()


# --------------------------------------------------------------------------- swaps


def test_uploads_and_activations_under_load_kill_no_worker(tmp_path):
    """ENGINE=openvino QUANTIZE=none, 2 workers sharing one engine cache (and OpenVINO's
    blob cache in it): 6 upload + activate cycles while two clients send photos.  A worker reading a
    blob the other is writing would die with SIGBUS inside compile_model (it did, in 2 of
    6 such cycles, until the compiles were serialised).  Every photo is answered, every
    model is served by both workers, no worker dies."""
    checkpoints = [save_finetuned_resnet18(tmp_path / f"m{n}.pt", FRUIT, seed=100 + n)
                   for n in range(6)]
    server = ops.launch(tmp_path, "swaps", WEB_CONCURRENCY=2, TORCH_THREADS=1, QUANTIZE="none",
                        ENGINE="openvino", MODEL_DIR=tmp_path / "store",
                        ENGINE_CACHE_DIR=tmp_path / "cache", ADMIN_TOKEN=TOKEN, MAX_REQUESTS=0)
    stop = threading.Event()
    statuses: list[int] = []

    def photos():
        session = requests.Session()
        while not stop.is_set():
            try:
                statuses.append(session.post(server.url + "/predict", timeout=120, files={
                    "image": ("c.jpg", small_jpeg())}).status_code)
            except requests.RequestException:
                statuses.append(0)

    try:
        server.wait_ready(timeout=600)
        workers = ops.wait_for_workers(server, 2)
        clients = [threading.Thread(target=photos) for _ in range(2)]
        for client in clients:
            client.start()
        for n, checkpoint in enumerate(checkpoints):
            with open(checkpoint, "rb") as fh:
                added = requests.post(server.url + "/admin/api/models", headers=BEARER,
                                      files={"checkpoint": (f"m{n}.pt", fh)}, timeout=600)
            assert added.status_code == 201, added.text[:500]
            model_id = added.json()["id"]
            activated = requests.post(server.url + f"/admin/api/models/{model_id}/activate",
                                      headers=BEARER, timeout=60)
            assert activated.status_code == 200
            served, deadline = set(), time.monotonic() + 300
            while served != set(workers):  # both workers serve it (new connections)
                assert time.monotonic() < deadline, server.log[-3000:]
                serving = requests.get(server.url + "/admin/api/models", headers=BEARER,
                                       timeout=120).json()["serving"]
                if serving["id"] == model_id:
                    served.add(serving["pid"])
                time.sleep(0.05)
        stop.set()
        for client in clients:
            client.join(timeout=180)
        print(f"{len(statuses)} photos during {len(checkpoints)} cycles")
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        assert ops.worker_pids(server) == workers
        assert not [m for m in ops.CRASH_MARKERS if m in server.log], server.log[-3000:]
    finally:
        stop.set()
        server.stop()
