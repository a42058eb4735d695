"""Teach it live, measured in one run on this machine: how long a training job with the
teach defaults takes (Train pressed -> model in the registry) for a 2-class, 60-image
dataset, and what it does to /predict latency while it runs -- with the job's threads
capped (JOB_THREADS default: half the CPUs) and, for comparison, uncapped (every CPU).

    python -m bench.teach_job [--per-class 30] [--requests 40] [--interval 0.25]
                              [--uncapped-threads N]

Starts real gunicorn servers on 127.0.0.1 (default settings), builds the dataset through
the admin API (drawn shapes, 640x480 JPEGs like webcam frames), sends /predict requests
with a 640x480 photo every ``--interval`` seconds (a few busy kiosks; 0 = back to back),
and prints medians and ratios against the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from testkit.photos import photo
from testkit.shapes import draw
from webapp.config import available_cpus

ROOT = Path(__file__).resolve().parent.parent

TOKEN = "bench-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(base: Path, **env) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full_env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "ADMIN_TOKEN": TOKEN,
                "MODEL_DIR": str(base / "models"), "DATA_DIR": str(base / "data"),
                "LOG_LEVEL": "warning", **{k: str(v) for k, v in env.items()}}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "app:app"], cwd=ROOT,
                            env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/readyz", timeout=5).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not start")


def webcam_jpeg(shape: str, rng: random.Random) -> bytes:
    frame = draw(shape, rng, 480).resize((640, 480))
    buf = io.BytesIO()
    frame.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def predict_ms(url: str, image: bytes) -> float:
    started = time.perf_counter()
    response = requests.post(url + "/predict", files={"image": ("cat.jpg", image)}, timeout=60)
    assert response.status_code == 200, response.text
    return (time.perf_counter() - started) * 1000


def quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def paced(url: str, image: bytes, interval: float) -> float:
    started = time.monotonic()
    ms = predict_ms(url, image)
    rest = interval - (time.monotonic() - started)
    if rest > 0:
        time.sleep(rest)
    return ms


def run(base: Path, per_class: int, n_requests: int, interval: float, label: str,
        **env) -> dict:
    proc, url = start_server(base, **env)
    try:
        http = requests.Session()
        http.headers.update(AUTH)
        assert http.post(url + "/admin/api/datasets", timeout=60, json={
            "name": "bench", "classes": ["circle", "square"]}).status_code == 201
        rng = random.Random(7)
        for shape in ("circle", "square"):
            for _ in range(per_class):
                response = http.post(url + "/admin/api/datasets/bench/images", timeout=60,
                                     data={"label": shape},
                                     files={"image": ("f.jpg", webcam_jpeg(shape, rng))})
                assert response.status_code == 201, response.text
        buf = io.BytesIO()
        photo("chelsea").image.resize((640, 480)).save(buf, "JPEG", quality=90)
        image = buf.getvalue()
        for _ in range(5):
            predict_ms(url, image)  # warm-up
        baseline = [paced(url, image, interval) for _ in range(n_requests)]

        started = time.monotonic()
        job = http.post(url + "/admin/api/datasets/bench/train", timeout=60).json()
        during, state = [], job
        while state["state"] in ("queued", "running"):
            if state["state"] == "running" and state["progress"].get("stage") in (
                    "train", "epoch"):
                during.append(paced(url, image, interval))
            else:
                time.sleep(0.2)
            state = http.get(f"{url}/admin/api/jobs/{job['job']}", timeout=60).json()
        wall = time.monotonic() - started
        assert state["state"] == "done", state
        return {"label": label, "baseline": baseline, "during": during, "wall": wall,
                "job": state}
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--uncapped-threads", type=int, default=available_cpus())
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(run(Path(tmp) / "capped", args.per_class, args.requests,
                           args.interval, "JOB_THREADS default"))
        results.append(run(Path(tmp) / "uncapped", args.per_class, args.requests,
                           args.interval,
                           f"JOB_THREADS={args.uncapped_threads}",
                           JOB_THREADS=args.uncapped_threads))
    print(f"{available_cpus()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"2 classes × {args.per_class} images (640×480 JPEG), teach defaults; /predict "
          f"every {args.interval:g} s")
    print(f"{'job threads':<22} {'job s':>6} {'epochs':>6} {'val acc':>7} "
          f"{'predict ms idle':>16} {'during job':>11} {'× idle':>7} {'p90 idle':>9} "
          f"{'p90 during':>11}")
    for r in results:
        idle_med, idle_p90 = quantiles(r["baseline"])
        during_med, during_p90 = quantiles(r["during"]) if r["during"] else (float("nan"),) * 2
        job = r["job"]
        print(f"{r['label']:<22} {r['wall']:6.1f} {len(job['history']):6d} "
              f"{job['metrics']['val_accuracy']:7.3f} {idle_med:16.1f} {during_med:11.1f} "
              f"{during_med / idle_med:7.2f} {idle_p90:9.1f} {during_p90:11.1f}"
              f"   ({len(r['during'])} requests during the job; training process peak "
              f"memory {job.get('peak_memory_mb')} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
