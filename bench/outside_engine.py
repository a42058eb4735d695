"""The network a server serves, run outside any server: the same artefact from the same
engine cache, on the same engine, precision, threads and streams, fed the same
preprocessed photo.  Prints ``ready``, then for each line read from stdin one pass,
answering with its time in ms (the engine call alone, what ``timings_ms.inference``
measures in the server).

    python -m bench.outside_engine CACHE_DIR ARTEFACT ENGINE PRECISION THREADS \\
        [--dual] [--image photo.jpg --resize 256 --size 224]

bench/run.py alternates these passes with requests to the server, so both are measured at
the same moments of the same machine's load (figures taken minutes apart move 30 % on a
shared machine).  ``/readyz``'s ``engine`` says which artefact and precision the server
runs (``artefact``, ``precision``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache_dir")
    parser.add_argument("artefact")
    parser.add_argument("engine", choices=["openvino", "onnxruntime"])
    parser.add_argument("precision", help="fp32, bf16 or int8 (as /readyz says)")
    parser.add_argument("threads", type=int)
    parser.add_argument("--dual", action="store_true", help="ENGINE_STREAMS=dual")
    parser.add_argument("--image", default="")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    from webapp.engines.runtime import open_engine

    cache = Path(args.cache_dir)
    precision = args.precision.split()[0]  # "fp32 (this CPU has no native bf16)"
    engine = open_engine(cache / args.artefact, args.engine, args.threads, precision,
                         args.dual, blobs=str(cache / "openvino"))
    if args.image:
        from PIL import Image

        from webapp.checkpoints.preprocess import preprocess_array

        with Image.open(args.image) as img:
            batch = preprocess_array(img.convert("RGB"), args.resize, args.size,
                                     (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))[None]
    else:
        batch = np.random.default_rng(0).standard_normal(
            (1, 3, args.size, args.size), dtype=np.float32)
    for _ in range(3):
        engine(batch)
    print("ready", flush=True)
    for _ in sys.stdin:
        started = time.perf_counter()
        engine(batch)
        print((time.perf_counter() - started) * 1000, flush=True)


if __name__ == "__main__":
    main()
