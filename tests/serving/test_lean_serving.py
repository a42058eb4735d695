"""Lean serving on a real gunicorn server with the default settings: after startup,
/predict, /explain, a checkpoint upload and a swap, no worker has libtorch mapped; the
torch work ran in child processes.  Uploads built to explode (zip records that deflate
1000:1, tensors that are views of one number) get a 422 that says what was wrong, and the
workers' memory does not move."""

from __future__ import annotations

import time

import pytest
import requests

from testkit.photos import encode, photo
from testkit.weights import deflate_bomb, save_random_resnet18, views_bomb

pytestmark = pytest.mark.system  # real servers on 127.0.0.1 (conftest.py: the tiers)

TOKEN = "lean-serving-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _workers(server) -> list[int]:
    with open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def _torch_mapped(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as fh:
        maps = fh.read()
    return "libtorch" in maps or "libc10" in maps


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        fields = dict(line.split(":", 1) for line in fh)
    return int(fields["VmRSS"].split()[0]) / 1024


def test_workers_never_load_torch_and_bombs_cost_them_nothing(start_server, tmp_path,
                                                             fruit_checkpoint):
    weights = save_random_resnet18(tmp_path / "resnet18.pth")
    server = start_server("gunicorn", MODEL_WEIGHTS=weights, WEB_CONCURRENCY=2,
                          TORCH_THREADS=1, ADMIN_TOKEN=TOKEN, MODEL_DIR=tmp_path / "models",
                          ENGINE_CACHE_DIR=tmp_path / "cache")
    info = server.wait_ready(timeout=600)
    assert info["model"]["arch"] == "resnet18" and info["engine"]["engine"] == "openvino"
    workers = _workers(server)
    assert len(workers) == 2

    photo_jpeg = encode(photo("chelsea").image, "JPEG")
    answer = requests.post(server.url + "/predict", files={"image": ("cat.jpg", photo_jpeg)},
                           timeout=60)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 3
    explained = requests.post(server.url + "/explain",
                              files={"image": ("cat.jpg", photo_jpeg)}, timeout=60)
    assert explained.status_code == 200 and explained.json()["heatmap"]["layer"] == "layer4"

    before = {pid: _rss_mb(pid) for pid in workers}
    for bomb, words in ((deflate_bomb(tmp_path / "deflate.pt"), "would expand to"),
                        (views_bomb(tmp_path / "views.pt"), "not a trained model")):
        refused = requests.post(server.url + "/admin/api/models", headers=AUTH,
                                files={"checkpoint": (bomb.name, bomb.read_bytes())},
                                timeout=300)
        assert refused.status_code == 422, refused.text
        assert words in refused.json()["error"]["message"]
    growth = {pid: _rss_mb(pid) - before[pid] for pid in workers}
    assert max(growth.values()) < 100, growth

    with open(fruit_checkpoint, "rb") as fh:
        stored = requests.post(server.url + "/admin/api/models", headers=AUTH,
                               files={"checkpoint": ("fruit.pt", fh)}, timeout=600)
    assert stored.status_code == 201, stored.text
    model_id = stored.json()["id"]
    assert requests.post(f"{server.url}/admin/api/models/{model_id}/activate", headers=AUTH,
                         timeout=30).status_code == 200
    deadline = time.monotonic() + 120  # "eventually": the swap time is in bench/
    while True:
        replies = [requests.post(server.url + "/predict", timeout=60,
                                 files={"image": ("cat.jpg", photo_jpeg)}) for _ in range(6)]
        assert all(r.status_code == 200 for r in replies)
        if {r.json()["model"]["id"] for r in replies} == {model_id}:
            break
        assert time.monotonic() < deadline, "the workers never switched"
        time.sleep(0.25)
    reply = replies[-1]
    assert reply.json()["predictions"][0]["label"] in {"apple", "banana", "cherry"}

    assert _workers(server) == workers  # the same processes all along
    for pid in workers:
        assert not _torch_mapped(pid), f"worker {pid} has libtorch mapped"
    assert not _torch_mapped(server.proc.pid)
