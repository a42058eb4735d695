"""The model inside the server against the same artefact outside it, request by request:
this project's server (gunicorn app:app, default settings unless ``--project-env``)
serves one photo at a time while bench/outside_engine.py runs the artefact the server
chose (the same engine cache, engine, precision, threads and streams, the same photo
preprocessed), one pass after each request, on the same CPUs.

    python -m bench.in_server              # 200 requests (1280x960 JPEG)
    python -m bench.in_server --quick      # 20 requests, to check it runs
    python -m bench.in_server --image 12MP --isa avx2 --project-env WEB_CONCURRENCY=1

Prints a table and JSON: the median of the server's ``timings_ms.inference`` against the
outside pass (the ratio the server's inference costs over the engine's own), and for the
same requests how far the stages of ``timings_ms`` are from its ``total`` and that total
from the client's latency (a fresh connection per request, as bench/loadgen.py).  With
``ENGINE=auto`` (the default) the engine cache starts empty, so it first waits for the
engine and precision to be chosen and swapped in.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from bench.loadgen import multipart
from bench.run import PY, Server, _cpu_name, make_images, pct
from testkit.ops import wait_decided

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

WARMUP = 5  # requests and passes left out of the figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 requests, to check it runs")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--image", choices=["1280x960", "12MP"], default="1280x960")
    parser.add_argument("--isa", choices=["native", "avx2"], default="native",
                        help="avx2: oneDNN limited to AVX2 (ONEDNN_MAX_CPU_ISA), as on a "
                             "common PC")
    parser.add_argument("--project-env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    n = 20 if args.quick else args.requests
    cpus = os.sched_getaffinity(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-in-server-"))
    import torch
    import torchvision

    torch.manual_seed(0)
    weights = tmp / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    image = make_images(tmp)[args.image]
    env = {"MODEL_WEIGHTS": str(weights), "ENGINE_CACHE_DIR": str(tmp / "cache"),
           "LOG_LEVEL": "info", "ADMIN_TOKEN": "", "MODEL_DIR": str(tmp / "models"),
           **dict(kv.split("=", 1) for kv in args.project_env)}
    if args.isa == "avx2":
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    server = Server("project", [PY, "-m", "gunicorn", "app:app", "--access-logfile",
                                "/dev/null"], env, cpus, tmp)
    outside = None
    try:
        server.wait_ready()
        engine = wait_decided(server)
        ready = requests.get(server.url + "/readyz", timeout=30).json()
        threads = ready["torch_threads"]
        dual = engine.get("streams", "1") != "1"
        argv = [PY, "-m", "bench.outside_engine", str(tmp / "cache"), engine["artefact"],
                engine["engine"], engine["precision"], str(threads), "--image", str(image),
                "--resize", str(round(ready["model"]["input_size"] / 0.875)),
                "--size", str(ready["model"]["input_size"])] + (["--dual"] if dual else [])
        outside = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, env={**os.environ, **env}, cwd=ROOT,
                                   preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        if outside.stdout.readline().strip() != "ready":
            raise SystemExit("bench/outside_engine.py did not start")
        body, content_type = multipart(image.read_bytes(), image.name)
        inside, bare, unaccounted, gap, other = [], [], [], [], 0
        stages_seen: dict[str, list[float]] = {}
        latencies = []
        for _ in range(WARMUP + n):
            # As bench/loadgen.py (the latencies of bench/run.py): a fresh connection.
            started = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            conn.request("POST", "/predict", body,
                         {"Content-Type": content_type, "Connection": "close"})
            reply = conn.getresponse()
            payload = reply.read()
            conn.close()
            latency = (time.perf_counter() - started) * 1000
            if reply.status != 200:
                raise SystemExit(f"/predict answered {reply.status}: {payload[:300]!r}")
            answer = json.loads(payload)
            outside.stdin.write("\n")
            outside.stdin.flush()
            bare_ms = float(outside.stdout.readline())
            if answer["model"]["engine"] != engine["engine"]:
                other += 1  # a worker not yet swapped: not the artefact measured outside
                continue
            timings = answer["timings_ms"]
            inside.append(timings["inference"])
            bare.append(bare_ms)
            stages = sum(v for k, v in timings.items() if k != "total")
            for stage, ms in timings.items():
                stages_seen.setdefault(stage, []).append(ms)
            latencies.append(latency)
            unaccounted.append(timings["total"] - stages)
            gap.append(latency - timings["total"])
        inside, bare = inside[WARMUP:], bare[WARMUP:]
        unaccounted, gap = unaccounted[WARMUP:], gap[WARMUP:]
        latencies = latencies[WARMUP:]
        result = {
            "machine": _cpu_name(), "cpus": len(cpus), "isa": args.isa, "image": args.image,
            "requests": len(inside), "other_engine_answers": other,
            "engine": {k: engine.get(k) for k in ("engine", "precision", "artefact",
                                                 "streams")},
            "threads": threads, "load_average": os.getloadavg()[0],
            "in_server_inference_ms": statistics.median(inside),
            "outside_ms": statistics.median(bare),
            "ratio": statistics.median(inside) / statistics.median(bare),
            "total_minus_stages_ms": {"median": statistics.median(unaccounted),
                                      "max": max(unaccounted, key=abs)},
            "client_minus_total_ms": {"median": statistics.median(gap),
                                      "p95": pct(gap, 0.95)},
            "client_latency_ms": statistics.median(latencies),
            "stages_ms": {stage: statistics.median(ms[WARMUP:])
                          for stage, ms in stages_seen.items()},
        }
    finally:
        if outside is not None:
            outside.kill()
        server.stop()
    r = result
    print(f"{r['machine']}, {r['cpus']} CPUs, load {r['load_average']:.1f}; "
          f"{r['engine']['engine']} {r['engine']['precision']} ({r['engine']['streams']} "
          f"streams, {r['threads']} threads); {r['requests']} requests of a {r['image']} JPEG"
          + (" — QUICK RUN" if args.quick else ""))
    print("| measure | ms |\n|---|---|")
    print(f"| inference outside the server (median) | {r['outside_ms']:.2f} |")
    print(f"| inference in the server, timings_ms.inference (median) | "
          f"{r['in_server_inference_ms']:.2f} ({r['ratio']:.2f}× outside) |")
    print(f"| timings_ms total − its stages (median; largest) | "
          f"{r['total_minus_stages_ms']['median']:.2f}; {r['total_minus_stages_ms']['max']:.2f} |")
    print(f"| client latency − timings_ms total (median; p95) | "
          f"{r['client_minus_total_ms']['median']:.2f}; {r['client_minus_total_ms']['p95']:.2f} |")
    print(f"| client latency (median) | {r['client_latency_ms']:.2f} |")
    print("| timings_ms, median of each: " + ", ".join(
        f"{stage} {ms:.2f}" for stage, ms in r["stages_ms"].items()) + " | |")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
