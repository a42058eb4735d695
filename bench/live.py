"""Live mode, one viewer: how many answers a second /predict gives to frames sent the way
static/js/live.js sends them (a 640x480 camera's whole picture, JPEG quality 0.85, the
next frame only when the last answer has arrived, at most one every 125 ms), against a
real gunicorn server with the default settings on 127.0.0.1.  Also without the 125 ms
pause (what the machine could give).  Prints JSON.  Target: >= 5 answers/s
with one viewer.

    python -m bench.live [--seconds 15]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.teach_job import start_server
from testkit.holds import views
from testkit.photos import photo

PERIOD = 0.125


def frames(count: int = 20) -> list[bytes]:
    import random

    out = []
    for img in views(photo("chelsea").image, random.Random(1), count, size=(640, 480)):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def viewer(url: str, pictures: list[bytes], seconds: float, period: float) -> dict:
    latencies, end, n = [], time.monotonic() + seconds, 0
    started = time.monotonic()
    with requests.Session() as session:
        while time.monotonic() < end:
            t0 = time.monotonic()
            r = session.post(url + "/predict", data={"topk": "3"}, timeout=30,
                             files={"image": ("live.jpg", pictures[n % len(pictures)])})
            r.raise_for_status()
            latencies.append((time.monotonic() - t0) * 1000)
            n += 1
            time.sleep(max(0.0, period - (time.monotonic() - t0)))
    took = time.monotonic() - started
    return {"answers_per_s": round(n / took, 2), "answers": n,
            "median_ms": round(statistics.median(latencies), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args(argv)
    pictures = frames()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp))
        try:
            viewer(url, pictures, 2, 0)  # warm up
            result = {"live.js pacing (125 ms)": viewer(url, pictures, args.seconds, PERIOD),
                      "back to back": viewer(url, pictures, args.seconds, 0)}
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
