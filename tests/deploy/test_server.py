"""Real server processes on 127.0.0.1: gunicorn as documented for production, and the
development server."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import requests

from testkit.photos import encode, photo
from testkit.weights import save_random_resnet18

pytestmark = pytest.mark.system  # real servers on 127.0.0.1 (conftest.py: the tiers)


def predict(server, name="coffee"):
    data = encode(photo(name).image, "JPEG")
    return requests.post(server.url + "/predict", files={"image": ("x.jpg", data)}, timeout=60)


def test_gunicorn_plans_workers_and_threads_from_the_cpus(start_server):
    """The default engine (OpenVINO, dual streams) on 2 CPUs or more: at least two workers
    of two threads, as measured in docs/speed.md; other engines: workers x threads within
    the CPUs."""
    server = start_server("gunicorn")
    ready = server.wait_ready()
    assert ready["model"]["source"] == "bundled"
    assert predict(server).json()["predictions"][0]["label"] == "espresso"
    workers, threads = map(int, re.search(r"serving with (\d+) worker\(s\) x (\d+) torch",
                                          server.log).groups())
    cpus = len(os.sched_getaffinity(0))
    assert (workers, threads) == ((max(2, cpus // 2), 2) if cpus >= 2 else (1, 1))
    assert predict(server).status_code == 200
    other = start_server("gunicorn", ENGINE="onnxruntime")
    other.wait_ready()
    workers, threads = map(int, re.search(r"serving with (\d+) worker\(s\) x (\d+) torch",
                                          other.log).groups())
    assert workers * threads <= cpus


def test_gunicorn_respects_a_smaller_cpu_affinity(start_server):
    server = start_server("gunicorn", cpus={0})
    server.wait_ready()
    assert "serving with 1 worker(s) x 1 torch thread(s)" in server.log
    assert requests.get(server.url + "/readyz", timeout=10).json()["torch_threads"] == 1


def test_each_gunicorn_worker_loads_the_model_after_fork(start_server):
    server = start_server("gunicorn", WEB_CONCURRENCY=2, TORCH_THREADS=1)
    server.wait_ready()
    assert "serving with 2 worker(s) x 1 torch thread(s)" in server.log
    for _ in range(4):
        assert predict(server, "camera").json()["predictions"][0]["label"] == "tripod"
    pids = set(re.findall(r"Booting worker with pid: (\d+)", server.log))
    assert len(pids) == 2
    # /readyz answers as soon as one worker is ready; the other may still be loading
    # (it waits while the first converts the model into the engine cache).
    deadline = time.monotonic() + 120
    while server.log.count("model ready") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.log.count("model ready") == 2


def test_gunicorn_refuses_to_start_on_a_bad_model_weights_file(start_server, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"definitely not weights")
    server = start_server("gunicorn", MODEL_WEIGHTS=bad)
    assert server.wait_exit(timeout=120) != 0
    assert "not a readable PyTorch weights file" in server.log


def test_dev_server_serves_an_explicit_weights_file(start_server, tmp_path):
    weights = save_random_resnet18(tmp_path / "my-resnet18.pth")
    server = start_server("dev", MODEL_WEIGHTS=weights, QUANTIZE="none")
    ready = server.wait_ready()
    assert ready["model"]["arch"] == "resnet18"
    assert ready["model"]["source"] == "explicit"
    assert ready["model"]["file"] == "my-resnet18.pth"
    assert str(tmp_path) not in json.dumps(ready)  # no server path to anyone who asks
    body = predict(server).json()
    assert body["model"]["arch"] == "resnet18" and len(body["predictions"]) == 3


def test_dev_server_exits_with_the_reason_on_a_wrong_shape_file(start_server, tmp_path):
    weights = save_random_resnet18(tmp_path / "ten-classes.pth", num_classes=10)
    server = start_server("dev", MODEL_WEIGHTS=weights)
    assert server.wait_exit(timeout=120) == 1
    assert "does not name its classes and its head has 10 outputs" in server.log
    assert "python -m model_loader convert" in server.log  # how to give them the names
