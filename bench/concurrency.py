"""How one server should spread 2 cores: workers × engine threads × OpenVINO streams,
measured end to end on this project's server (gunicorn app:app) in one run.

    python -m bench.concurrency [--quick] [--isa avx2]

For each layout: the median latency of one photo at a time (1280×960 and 12 MP JPEG, the
upload page's and the kiosk's case), the requests per second with 8 clients, and the RSS
per worker.  The layouts are started one after another on the same CPUs, with the same
random ResNet18 and a warm engine cache, and measured in two alternating rounds so that a
machine that gets busier slows them alike.  Prints a table (docs/speed.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from bench.run import PY, Server, load, make_images

HERE = Path(__file__).resolve().parent

LAYOUTS = {
    "1 worker × 2 threads, one stream": {"WEB_CONCURRENCY": "1", "TORCH_THREADS": "2",
                                          "ENGINE_STREAMS": "latency"},
    "1 worker × 2 threads, dual streams": {"WEB_CONCURRENCY": "1", "TORCH_THREADS": "2",
                                            "ENGINE_STREAMS": "dual"},
    "2 workers × 1 thread": {"WEB_CONCURRENCY": "2", "TORCH_THREADS": "1",
                             "ENGINE_STREAMS": "latency"},
    "2 workers × 2 threads": {"WEB_CONCURRENCY": "2", "TORCH_THREADS": "2",
                              "ENGINE_STREAMS": "latency"},
    "2 workers × 2 threads, dual streams": {"WEB_CONCURRENCY": "2", "TORCH_THREADS": "2",
                                             "ENGINE_STREAMS": "dual"},
}


def measure(name, env, images, cpus, tmp, quick) -> dict:
    server = Server(name.split(",")[0].replace(" ", "-").replace("×", "x"),
                    [PY, "-m", "gunicorn", "app:app", "--access-logfile", "/dev/null"],
                    env, cpus, tmp)
    try:
        server.wait_ready()
        load(server, images["1280x960"], 1, 10, cpus)  # warm-up
        n = 6 if quick else 30
        out = {key: load(server, images[key], 1, n, cpus)["median"]
               for key in ("1280x960", "12MP")}
        out["rps_8_clients"] = load(server, images["1280x960"], 8, 24 if quick else 160,
                                    cpus)["rps"]
        out["rss_per_worker_mb"] = server.rss_mb()["per_worker_mb"]
        return out
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--isa", choices=["native", "avx2"], default="native",
                        help="avx2: oneDNN limited to AVX2 (ONEDNN_MAX_CPU_ISA), as on a "
                             "common PC")
    parser.add_argument("--quantize", default="auto")
    args = parser.parse_args()
    cpus = os.sched_getaffinity(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-concurrency-"))
    import torch
    import torchvision

    torch.manual_seed(0)
    weights = tmp / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    images = make_images(tmp)
    common = {"MODEL_WEIGHTS": str(weights), "ENGINE_CACHE_DIR": str(tmp / "cache"),
              "LOG_LEVEL": "warning", "QUANTIZE": args.quantize,
              "MODEL_DIR": str(tmp / "models")}
    if args.isa == "avx2":
        common["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    rounds: dict[str, list[dict]] = {name: [] for name in LAYOUTS}
    for _ in range(1 if args.quick else 2):
        for name, env in LAYOUTS.items():
            print(f"{name} ...", flush=True)
            rounds[name].append(measure(name, {**common, **env}, images, cpus, tmp,
                                        args.quick))
    result = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
              for name, runs in rounds.items()}
    base = result["1 worker × 2 threads, one stream"]
    print(f"\n{len(cpus)} CPUs, ISA {args.isa}, QUANTIZE={args.quantize}; ratios against "
          "1 worker × 2 threads, one stream (latency: it ÷ this; throughput: this ÷ it)\n")
    print("| layout | 1280×960 ms | 12 MP ms | 8 clients req/s | RSS/worker MB |")
    print("|---|---|---|---|---|")
    for name, r in result.items():
        print(f"| {name} | {r['1280x960']:.1f} ({base['1280x960'] / r['1280x960']:.2f}×) | "
              f"{r['12MP']:.1f} ({base['12MP'] / r['12MP']:.2f}×) | "
              f"{r['rps_8_clients']:.1f} ({r['rps_8_clients'] / base['rps_8_clients']:.2f}×) | "
              f"{r['rss_per_worker_mb']:.0f} |")
    (HERE / "concurrency.json").write_text(json.dumps({"isa": args.isa, "result": result},
                                                       indent=1))


if __name__ == "__main__":
    main()
