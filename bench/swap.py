"""How long a model swap takes on a loaded server (run by hand; the test
tests/views/test_admin_server.py only checks that swaps happen, whatever the machine's load).

Starts gunicorn (the project's gunicorn.conf.py, 2 workers) on 127.0.0.1 with two
fine-tuned checkpoints in its store, keeps CLIENTS threads predicting, and activates the
two models in turn SWITCHES times.  For each switch it prints the seconds from the
activation's answer until the first response by the new model, and until every worker
has logged that it serves it, and the same as a ratio to the median /predict latency
measured in the same run (busy machines stretch both alike).

    .venv/bin/python -m bench.swap                 # 6 switches, 3 clients
    .venv/bin/python -m bench.swap --switches 10
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import requests

from testkit import attacks, ops
from testkit.weights import FRUIT, TOOLS, save_finetuned_resnet18
from webapp.stores.registry import Registry

TOKEN = "bench-swap-token-0123456789"
BOUND = 120.0  # seconds a switch may take before the run gives up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--switches", type=int, default=6)
    parser.add_argument("--clients", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    store = Registry(work / "models")
    ids = [store.add(save_finetuned_resnet18(work / f"{name}.pt", classes, seed=n),
                     name=name)["id"]
           for n, (name, classes) in enumerate((("fruit", FRUIT), ("tools", TOOLS)))]
    server = ops.launch(work, "swap", WEB_CONCURRENCY=2, TORCH_THREADS=1,
                        MODEL_DIR=store.root, ADMIN_TOKEN=TOKEN)
    image = attacks.real_jpeg((320, 214))
    results, stop = [], threading.Event()

    def client():
        session = requests.Session()
        for _ in range(100_000):
            if stop.is_set():
                return
            started = time.monotonic()
            response = session.post(server.url + "/predict", timeout=60,
                                    files={"image": ("cat.jpg", image)})
            model = response.json().get("model", {}).get("id")
            results.append((started, time.monotonic(), response.status_code, model))
            time.sleep(0.02)

    def switches_logged() -> int:
        per_worker = defaultdict(int)
        for pid, _ in re.findall(r"pid (\d+) now serves model (\S+)", server.log):
            per_worker[pid] += 1
        return min(per_worker.values()) if len(per_worker) == 2 else 0

    try:
        server.wait_ready(timeout=300)
        ops.wait_for_workers(server, 2)
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        rows = []
        for n in range(args.switches):
            target = ids[n % 2]
            answer = requests.post(f"{server.url}/admin/api/models/{target}/activate",
                                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
            answered = time.monotonic()
            assert answer.status_code == 200, answer.text
            first = every = None
            while time.monotonic() - answered < BOUND and (first is None or every is None):
                if first is None:
                    first = min((done for started, done, _, model in list(results)
                                 if started >= answered and model == target), default=None)
                if every is None and switches_logged() > n:
                    every = time.monotonic()
                time.sleep(0.02)
            rows.append(((first or float("nan")) - answered,
                         (every or float("nan")) - answered))
            time.sleep(1)
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        stop.set()
        server.stop()
    latencies = [done - started for started, done, status, _ in results if status == 200]
    failed = sum(1 for *_, status, _ in results if status != 200)
    median = statistics.median(latencies)
    print(f"{len(results)} predictions while swapping, {failed} failed; median latency "
          f"{median * 1000:.0f} ms")
    print("switch | first answer by the new model | every worker serves it")
    for n, (first, every) in enumerate(rows, 1):
        print(f"{n:6d} | {first:6.2f} s ({first / median:6.1f}x a request) | "
              f"{every:6.2f} s ({every / median:6.1f}x)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
