"""Model-only latency per engine (batch 1, median and p95 ms), measured round-robin so
that a busy machine slows every engine alike.  Prints JSON.

    python -m bench.model_speed --weights resnet18.pth --threads 2 --rounds 100"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings

CANDIDATES = [("torch", "none"), ("torch", "dynamic"), ("torch", "static"),
              ("onnxruntime", "none"), ("onnxruntime", "static"),
              ("openvino", "none"), ("openvino", "bf16"), ("openvino", "static")]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def measure(loaded, threads: int, rounds: int, cache_dir: str, skip=()) -> dict:
    import numpy as np

    from webapp.engines import EngineSettings, build

    x = np.random.default_rng(0).standard_normal(
        (1, 3, loaded.input_size, loaded.input_size), dtype=np.float32)
    engines, build_s, failed = {}, {}, {}
    for engine, mode in CANDIDATES:
        if (engine, mode) in skip:
            continue
        started = time.perf_counter()
        settings = EngineSettings(engine=engine, quantize=mode, cache_dir=cache_dir,
                                  threads=threads)
        try:
            _, served = build.serve_loaded(loaded, settings)
        except Exception as exc:  # e.g. bf16 on a CPU without it: part of the result
            failed[f"{engine} {mode}"] = {"error": str(exc).strip().splitlines()[-1][:160]}
            continue
        build_s[f"{engine} {mode}"] = time.perf_counter() - started
        engines[f"{engine} {mode}"] = served
    times = {name: [] for name in engines}
    for name, fn in list(engines.items()):
        try:
            for _ in range(5):
                fn(x)
        except Exception as exc:  # compiled, but cannot run here (bf16 under AVX2)
            failed[name] = {"error": str(exc).strip().splitlines()[-1][:160]}
            del engines[name], times[name]
    for _ in range(rounds):
        for name, fn in engines.items():
            t0 = time.perf_counter()
            fn(x)
            times[name].append((time.perf_counter() - t0) * 1000)
    return {**{name: {"median": statistics.median(v), "p95": percentile(v, 0.95),
                      "build_s": build_s[name]} for name, v in times.items()}, **failed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True, help="a ResNet18 state_dict")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import model_loader
    from webapp.engines import torch_engine

    torch_engine.configure_threads(args.threads)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="bench-engines-")
    result = {
        "resnet18": measure(model_loader.load_checkpoint(args.weights), args.threads,
                            args.rounds, cache_dir),
        # torch static on Lite0 takes ~100 ms a pass (quantized depthwise convolutions
        # fall back to slow kernels): measured with a tenth of the rounds.
        "efficientnet_lite0": measure(model_loader.load_bundled(), args.threads,
                                      args.rounds, cache_dir, skip={("torch", "static")}),
    }
    slow = measure(model_loader.load_bundled(), args.threads, max(5, args.rounds // 10),
                   cache_dir, skip=set(CANDIDATES) - {("torch", "static")})
    result["efficientnet_lite0"].update(slow)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
