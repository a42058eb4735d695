"""No telemetry: the product sends nothing anywhere and leaves no analytics client id.

OpenVINO's model converter (loaded by every ``import openvino``) reports usage and writes
``~/intel/openvino_ga_cid`` and ``~/intel/stats`` unless its telemetry package is kept
out; ONNX Runtime writes a device id to ``~/.cache/Microsoft/DeveloperTools`` unless
``ORT_DISABLE_TELEMETRY`` is set (both in ``webapp/__init__.py``).  Checked in the test
process and, for real, in every kind of process the product starts, each with a home
folder of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

import webapp  # noqa: F401 - first, as in every process of the product
from testkit import ROOT
from testkit.admin import BEARER, TOKEN
from testkit.teach import build, wait_job


def test_openvino_runs_with_its_do_nothing_telemetry_stub():
    # webapp is imported (by the imports above), as every process of the product does first
    from openvino.tools.ovc import telemetry_utils

    assert sys.modules["openvino_telemetry"] is None
    assert telemetry_utils.tm.__name__ == "openvino.tools.ovc.telemetry_stub"
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "1"  # inherited by every child process


def telemetry_traces(home: Path) -> list[str]:
    """Files OpenVINO's telemetry writes (its client id, its counters, its consent file)
    or anything else named after telemetry, under ``home``."""
    found = []
    for folder, dirs, files in os.walk(home):
        for name in dirs + files:
            path = Path(folder, name)
            relative = str(path.relative_to(home))
            if relative.startswith("intel") or "telemetry" in name.lower() \
                    or "Microsoft" in relative or name in ("openvino_ga_cid", "stats",
                                                           "deviceid"):
                found.append(relative)
    return found


@pytest.mark.system
def test_no_process_writes_telemetry_files_or_mentions_telemetry(start_server, tmp_path,
                                                                 fruit_checkpoint):
    """A server start, a checkpoint upload (a builder child), a Teach training (the
    training runner) and ``make smoke``, all with an empty home folder of their own:
    afterwards no telemetry file is in it and no log line mentions telemetry."""
    home = tmp_path / "home"
    home.mkdir()
    server = start_server("gunicorn", HOME=home, WEB_CONCURRENCY=1, TORCH_THREADS=1,
                          MODEL_DIR=tmp_path / "models", DATA_DIR=tmp_path / "data",
                          ADMIN_TOKEN=TOKEN, JOB_THREADS=1)
    server.wait_ready()
    http = requests.Session()
    http.headers.update(BEARER)

    def post(url, **kwargs):
        return http.post(server.url + url, timeout=300, **kwargs)

    response = post("/admin/api/models",
                    files={"checkpoint": ("fruit.pt", fruit_checkpoint.read_bytes())})
    assert response.status_code == 201, response.text

    build(post, "shapes", {"circle": 8, "square": 8}, seed=3)
    response = post("/admin/api/datasets/shapes/train",
                    json={"epochs": 1, "image_size": 64, "name": "Shapes"})
    assert response.status_code == 202, response.text

    class Http:
        def get(self, url):
            return http.get(server.url + url, timeout=60)

    job = wait_job(Http(), response.json()["job"], timeout=400)
    assert job["state"] == "done", job

    smoke = subprocess.run([sys.executable, "deploy/smoke.py"], cwd=ROOT, timeout=600,
                           capture_output=True, text=True, env={**os.environ, "HOME": str(home)})
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr

    logs = {"server": server.log, "smoke": smoke.stdout + smoke.stderr,
            "training": (tmp_path / "data" / ".jobs" / "runner.log").read_text("utf-8")}
    assert telemetry_traces(home) == []
    for name, text in logs.items():
        lines = [line for line in text.splitlines() if "telemetry" in line.lower()]
        assert lines == [], (name, lines)
    # The home folder was the one they used (a cache or config of some tool is there).
    assert any(home.iterdir()), "the processes did not use this home folder"
