"""Model swaps on real servers (gunicorn on 127.0.0.1): under load with several workers,
and across two servers sharing one MODEL_DIR."""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict

import pytest
import requests

import model_loader
from testkit import ops
from testkit.photos import encode, photo
from testkit.weights import FRUIT, TOOLS
from webapp.stores.registry import BUILTIN, Registry

pytestmark = pytest.mark.system  # real servers on 127.0.0.1 (conftest.py: the tiers)

TOKEN = "server-admin-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SWITCH_BOUND = 60.0  # generous: how long a swap may take before the test gives up
# How fast a swap is (seconds from activation to every worker serving it) is measured by
# bench/swap.py, not here: a busy machine must not fail the test, nor hide a bug.


def small_jpeg() -> bytes:
    image = photo("chelsea").image.copy()
    image.thumbnail((128, 128))
    return encode(image, "JPEG")


def test_models_swap_under_load_without_a_failed_request(start_server, tmp_path,
                                                        fruit_checkpoint, tools_checkpoint):
    """Three clients keep predicting on a 2-worker gunicorn while models are activated
    and rolled back repeatedly: every response is a 200 from exactly one model (it names
    the model whose classes it answers with); every worker eventually switches to each
    activation, by itself; and once both have, every request gets the new model."""
    store = Registry(tmp_path / "store")
    fruit = store.add(fruit_checkpoint, name="Fruit")["id"]
    tools = store.add(tools_checkpoint, name="Tools")["id"]
    server = start_server("gunicorn", WEB_CONCURRENCY=2, TORCH_THREADS=1, HTTP_THREADS=4,
                          MODEL_DIR=store.root, ADMIN_TOKEN=TOKEN)
    server.wait_ready()
    deadline = time.monotonic() + 120
    while server.log.count("model ready") < 2:  # both workers, not just the first one
        assert time.monotonic() < deadline, server.log
        time.sleep(0.2)
    labels = {fruit: set(FRUIT), tools: set(TOOLS), BUILTIN: set(model_loader.imagenet_labels())}
    names = {fruit: "Fruit", tools: "Tools"}
    image = small_jpeg()

    results = []  # (started, finished, status, body)
    stop = threading.Event()

    def client():
        for _ in range(5000):  # bounded; the switches below take ~20-60 s
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                response = requests.post(server.url + "/predict",
                                         files={"image": ("cat.jpg", image)}, timeout=60)
                status, body = response.status_code, response.json()
            except (requests.RequestException, ValueError) as exc:
                status, body = 0, {"exception": repr(exc)}
            results.append((started, time.monotonic(), status, body))
            time.sleep(0.02)

    def admin(path):
        asked = time.monotonic()
        response = requests.post(server.url + path, headers=BEARER, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["active"], asked

    def switched(count: int) -> bool:
        """Both workers have logged their ``count``-th switch."""
        per_worker = defaultdict(int)
        for pid, _ in re.findall(r"pid (\d+) now serves model (\S+)", server.log):
            per_worker[pid] += 1
        return len(per_worker) == 2 and min(per_worker.values()) >= count

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    switches = []  # (model active from then on, API asked, both workers switched)
    try:
        time.sleep(1.0)
        for step in (f"/admin/api/models/{fruit}/activate", f"/admin/api/models/{tools}/activate",
                     "/admin/api/rollback", "/admin/api/rollback",
                     f"/admin/api/models/{tools}/activate", "/admin/api/rollback",
                     f"/admin/api/models/{fruit}/activate"):
            active, asked = admin(step)
            deadline = time.monotonic() + SWITCH_BOUND
            while not switched(len(switches) + 1):
                assert time.monotonic() < deadline, server.log[-3000:]
                time.sleep(0.05)
            both = time.monotonic()
            switches.append((active, asked, both))
            # Stay on this model until a request that started after both workers
            # switched has been answered.
            while not any(started >= both for started, *_ in list(results)):
                assert time.monotonic() < deadline + SWITCH_BOUND
                time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    expected = [fruit, tools, fruit, BUILTIN, tools, BUILTIN, fruit]
    assert [active for active, _, _ in switches] == expected

    failures = [(status, body) for _, _, status, body in results if status != 200]
    assert not failures, failures[:5]
    assert len(results) >= 20
    for _, _, _, body in results:
        model = body["model"]
        assert model["id"] in labels, model
        assert {p["label"] for p in body["predictions"]} <= labels[model["id"]], body
        if model["id"] in names:
            assert model["name"] == names[model["id"]]
    # Once both workers serve the new model, only it answers (until the next switch).
    bounds = [asked for _, asked, _ in switches[1:]] + [float("inf")]
    for (active, _, both), until in zip(switches, bounds):
        window = [body["model"]["id"] for started, finished, _, body in results
                  if both <= started and finished < until]  # before the next switch began
        assert window and set(window) == {active}, (active, window)

    # Both workers switched for every activation, each by itself, in order.
    served = defaultdict(list)
    for pid, model_id in re.findall(r"pid (\d+) now serves model (\S+)", server.log):
        served[pid].append(model_id)
    assert len(served) == 2, server.log[-3000:]
    for pid, sequence in served.items():
        assert sequence == expected, (pid, sequence)


def test_two_servers_sharing_a_model_dir_follow_each_other(start_server, tmp_path,
                                                          fruit_checkpoint):
    """An upload and an activation on one server are served by the other (eventually:
    bench/swap.py times it), a rollback on the other is followed by the first, and a
    login works on both."""
    model_dir = tmp_path / "shared"
    one = start_server("gunicorn", WEB_CONCURRENCY=1, TORCH_THREADS=1, MODEL_DIR=model_dir,
                       ADMIN_TOKEN=TOKEN)
    two = start_server("gunicorn", WEB_CONCURRENCY=1, TORCH_THREADS=1, MODEL_DIR=model_dir,
                       ADMIN_TOKEN=TOKEN)
    one.wait_ready()
    two.wait_ready()
    image = small_jpeg()

    def serving(server) -> str:
        response = requests.post(server.url + "/predict", files={"image": ("c.jpg", image)},
                                 timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["model"]["id"]

    def wait_until(server, model_id) -> None:
        started = time.monotonic()
        while serving(server) != model_id:
            assert time.monotonic() - started < SWITCH_BOUND, (server.url, model_id)
            time.sleep(0.05)

    # A real HTTP upload (45 MB) to server one, with activation.
    with open(fruit_checkpoint, "rb") as fh:
        response = requests.post(one.url + "/admin/api/models", headers=BEARER,
                                 files={"checkpoint": ("fruit.pt", fh)},
                                 data={"name": "Fruit", "activate": "1"}, timeout=300)
    assert response.status_code == 201, response.text
    fruit = response.json()["id"]
    wait_until(one, fruit)
    wait_until(two, fruit)
    listed = requests.get(two.url + "/admin/api/models", headers=BEARER, timeout=60).json()
    assert [m["id"] for m in listed["models"]] == [BUILTIN, fruit]

    assert requests.post(two.url + "/admin/api/rollback", headers=BEARER,
                         timeout=60).json()["active"] == BUILTIN
    wait_until(one, BUILTIN)
    wait_until(two, BUILTIN)

    # One login, both servers: the session key lives in the shared MODEL_DIR.
    session = requests.Session()
    page = session.get(one.url + "/admin/login", timeout=30).text
    csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
    response = session.post(one.url + "/admin/login", data={"csrf_token": csrf,
                                                            "token": TOKEN},
                            allow_redirects=False, timeout=30)
    assert response.status_code == 302
    cookie = session.cookies.get("session")
    other = requests.get(two.url + "/admin/", cookies={"session": cookie},
                         allow_redirects=False, timeout=60)
    assert other.status_code == 200 and 'id="models"' in other.text


def test_activate_and_wait_answers_once_every_worker_serves_the_model(start_server, tmp_path,
                                                                      fruit_checkpoint,
                                                                      tools_checkpoint):
    """activate / rollback / redo with ?wait= on 2 workers: the answer comes once both
    serve the model, so every /predict after it gets the new model at once; the command
    line's --wait the same; a model that cannot be loaded gets 504 wait_timeout naming
    the workers; a killed worker does not block the next wait."""
    import os
    import signal
    import subprocess
    import sys

    from testkit import ROOT

    store = Registry(tmp_path / "store")
    fruit = store.add(fruit_checkpoint, name="Fruit")["id"]
    tools = store.add(tools_checkpoint, name="Tools")["id"]
    run_dir = tmp_path / "run"
    server = start_server("gunicorn", WEB_CONCURRENCY=2, TORCH_THREADS=1, HTTP_THREADS=4,
                          MODEL_DIR=store.root, ADMIN_TOKEN=TOKEN, RUN_DIR=run_dir)
    server.wait_ready()
    pids = ops.wait_for_workers(server, 2)
    image = small_jpeg()

    def served_by_all(model_id: str, count: int = 12) -> None:
        with requests.Session() as http:  # several connections: both workers answer
            for _ in range(count):
                body = http.post(server.url + "/predict", files={"image": ("c.jpg", image)},
                                 headers={"Connection": "close"}, timeout=60).json()
                assert body["model"]["id"] == model_id, body["model"]

    def admin(path: str, wait="60") -> requests.Response:
        return requests.post(f"{server.url}{path}?wait={wait}", headers=BEARER, timeout=120)

    response = admin(f"/admin/api/models/{fruit}/activate")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["active"] == fruit
    assert body["workers"] == {str(pid): fruit for pid in pids}
    served_by_all(fruit)

    response = admin("/admin/api/rollback", wait="true")
    assert response.status_code == 200 and response.json()["active"] == BUILTIN
    served_by_all(BUILTIN)
    response = admin("/admin/api/redo", wait="30")
    assert response.status_code == 200 and set(response.json()["workers"].values()) == {fruit}
    served_by_all(fruit)

    # The command line, on the same machine and store.
    env = {**os.environ, "MODEL_DIR": str(store.root), "RUN_DIR": str(run_dir)}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "models",
                           "activate", tools, "--wait", "60"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"active: {tools}" in done.stdout and "served by 2 worker(s)" in done.stdout
    served_by_all(tools)

    # A model that cannot be loaded: the workers keep serving Tools; the wait says so.
    checkpoint = store.checkpoint_path(fruit)
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    response = admin(f"/admin/api/models/{fruit}/activate", wait="3")
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["code"] == "wait_timeout" and f"{fruit} is active" in error["message"]
    assert "2 of 2 worker(s) still serve another model" in error["message"]
    assert set(error["workers"].values()) == {tools}
    bad = requests.post(f"{server.url}/admin/api/rollback?wait=soon", headers=BEARER,
                        timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_wait"
    assert store.state().active == fruit  # a bad wait changed nothing

    # A worker killed (its note still says Tools): it does not block the next wait, and
    # its replacement loads the active model before it answers.
    ops.kill(pids[0], signal.SIGKILL)
    response = admin(f"/admin/api/models/{BUILTIN}/activate")
    assert response.status_code == 200, response.text
    workers = response.json()["workers"]
    assert str(pids[0]) not in workers and set(workers.values()) == {BUILTIN}
    ops.wait_for_workers(server, 2)
    served_by_all(BUILTIN)
