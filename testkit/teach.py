"""Teach through the admin API (webapp.training): an app with one job thread and a data
folder (``make_app``), datasets of drawn shapes sent image by image (``build``), the test
client shaped like a requests session (``Client``), waiting for a job's state
(``wait_job``, ``training``), and what a job may leave behind (a training process, work
files, models).  ``build`` and ``wait_job`` take a test client or a real server's
session alike."""

from __future__ import annotations

import io
import os
import random
import time
from pathlib import Path

from testkit import admin
from testkit.admin import BEARER
from testkit.photos import encode
from testkit.shapes import SHAPES, draw
from webapp.stores.registry import Registry

FINAL = ("done", "failed", "cancelled")
LONG = {"epochs": 100, "patience": 0, "image_size": 64}  # runs until it is stopped


def make_app(tmp_path: Path, **config):
    """The admin app (``testkit.admin.make_app``) with its models and data under
    ``tmp_path`` and one job thread."""
    return admin.make_app(tmp_path / "models", DATA_DIR=str(tmp_path / "data"),
                          JOB_THREADS=1, **config)


def shape_png(shape: str, rng: random.Random, size: int = 160) -> bytes:
    return encode(draw(shape, rng, size), "PNG")


def build(post, name: str, per_class: dict[str, int], seed: int = 0) -> None:
    """A dataset of drawn shapes through the API; ``post(url, **kwargs)`` is a test
    client's or a requests session's."""
    response = post("/admin/api/datasets", json={"name": name, "classes": list(per_class)})
    assert response.status_code == 201
    rng = random.Random(seed)
    for n, (label, count) in enumerate(per_class.items()):
        shape = label if label in SHAPES else SHAPES[n % len(SHAPES)]
        for _ in range(count):
            response = post(f"/admin/api/datasets/{name}/images",
                            data={"label": label},
                            files={"image": ("shape.png", shape_png(shape, rng))})
            assert response.status_code == 201, response.text


class Response:
    """A test client response with requests' ``.json()`` and ``.text``."""

    def __init__(self, response):
        self.raw = response
        self.status_code = response.status_code
        self.headers = response.headers
        self.text = response.get_data().decode("utf-8", "replace")

    def json(self):
        return self.raw.get_json()

    def get_json(self):
        return self.raw.get_json()

    def get_data(self, as_text=False):
        return self.raw.get_data(as_text=as_text)


class Client:
    """The Flask test client with the bearer token, shaped like a requests session."""

    def __init__(self, app):
        self.app = app
        self.client = app.test_client()

    def request(self, method, url, json=None, data=None, files=None):
        if files:
            data = {**(data or {}), **{k: (io.BytesIO(v[1]), v[0]) for k, v in files.items()}}
        return Response(self.client.open(url, method=method, headers=BEARER, json=json,
                                         data=data))

    def post(self, url, **kwargs):
        return self.request("POST", url, **kwargs)

    def get(self, url):
        return self.request("GET", url)

    def delete(self, url):
        return self.request("DELETE", url)


def wait_job(http, job_id, until=FINAL, timeout=300.0, seen=None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/admin/api/jobs/{job_id}").json()
        if seen is not None:
            seen.append(job)
        if until(job) if callable(until) else job["state"] in until:
            return job
        assert time.monotonic() < deadline, f"job did not reach {until}: {job}"
        time.sleep(0.3)


def training(job) -> bool:
    """Running, past the first training batch (so torch is up and a step was taken)."""
    assert job["state"] in ("queued", "running"), job
    return job["state"] == "running" and job["progress"].get("stage") in ("train", "epoch")


def pid_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def work_files(tmp_path: Path) -> list[str]:
    """Snapshots and half-trained outputs of jobs: none once jobs have ended."""
    jobs = tmp_path / "data" / ".jobs"
    return sorted(str(p.relative_to(jobs)) for p in jobs.glob("*/*")
                  if p.name in ("data", "out"))


def models_in(tmp_path: Path) -> list[str]:
    return [m["id"] for m in Registry(tmp_path / "models").list_models()]
