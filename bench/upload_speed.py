"""From upload to answer: how long a fine-tuned model takes from the admin API upload to
"stored" (the 201) and to the first /predict answered by it, on a real server (gunicorn,
the project's gunicorn.conf.py, default settings: QUANTIZE=auto, OpenVINO, 2 workers).

Each upload is a new file (a random network of the architecture, new seed), sent with its
class names and ``activate=1``; the engine cache starts empty, so every upload is
validated and converted as a person's would be.  With ``--repeat N`` it is the "N of N
in a row" check: every upload must be stored and answer.  Each upload's line then says
which engine and precision the background trials chose, when the workers served it, and
why (``/readyz``'s ``engine.auto``).

    .venv/bin/python -m bench.upload_speed                                   # ResNet18 x3
    .venv/bin/python -m bench.upload_speed --archs efficientnet_b0,resnet50,\\
        convnext_tiny,mobilenet_v3_large --repeat 5

Timings depend on the machine's load: run it on a quiet machine for figures to keep.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from testkit import attacks, ops

TOKEN = "bench-upload-token-0123456789"
BOUND = 600.0  # seconds an upload may take to answer before the run gives up


def main() -> int:
    import torch

    import model_loader

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="resnet18")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    server = ops.launch(work, "upload", WEB_CONCURRENCY=2, MODEL_DIR=work / "models",
                        ENGINE_CACHE_DIR=work / "cache", ADMIN_TOKEN=TOKEN)
    server.wait_ready(timeout=600)
    image = attacks.real_jpeg((640, 427))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    failures = 0
    try:
        for arch in args.archs.split(","):
            stored, answered = [], []
            for n in range(args.repeat):
                torch.manual_seed(1000 + n)
                buf = io.BytesIO()
                torch.save(model_loader.build_model(arch, 3).state_dict(), buf)
                started = time.monotonic()
                response = requests.post(
                    server.url + "/admin/api/models", headers=auth, timeout=BOUND,
                    files={"checkpoint": (f"{arch}-{n}.pth", buf.getvalue())},
                    data={"classes": "a,b,c", "activate": "1"})
                if response.status_code != 201:
                    failures += 1
                    print(f"{arch} #{n + 1}: {response.status_code} "
                          f"{response.text[:300]}", flush=True)
                    continue
                stored.append(time.monotonic() - started)
                model_id = response.json()["id"]
                while time.monotonic() - started < BOUND:
                    answer = requests.post(server.url + "/predict", timeout=BOUND,
                                           files={"image": ("photo.jpg", image)}).json()
                    if answer.get("model", {}).get("id") == model_id:
                        answered.append(time.monotonic() - started)
                        break
                    time.sleep(0.05)
                else:
                    failures += 1
                    print(f"{arch} #{n + 1}: never answered", flush=True)
                    continue
                auto = ops.wait_decided(server).get("auto") or {}
                decided = time.monotonic() - started
                print(f"{arch} #{n + 1}: stored in {stored[-1]:.1f} s, first answer "
                      f"{answered[-1]:.1f} s, serving {auto.get('engine')} "
                      f"{auto.get('chosen')} after {decided:.1f} s ({auto.get('why')})",
                      flush=True)
            if stored:
                print(f"{arch}: {len(answered)} of {args.repeat} answered; upload -> "
                      f"stored median {statistics.median(stored):.1f} s, -> first answer "
                      f"median {statistics.median(answered or [0]):.1f} s", flush=True)
    finally:
        server.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
