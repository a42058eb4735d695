"""How much memory the builder child needs per architecture: a random network of each
(saved as a bare state_dict) converted by ``python -m webapp.engines.build checkpoint``
exactly as an upload is, with QUANTIZE=auto's precision trials (int8 calibration, bf16 on
OpenVINO), without a memory cap; the child reports its peak address space (what the cap,
RLIMIT_AS, limits) and its peak RSS.  The caps in webapp/engines/child.py and
build.CONVERSION_MB are sized from these figures (docs/speed.md).

    .venv/bin/python -m bench.builder_memory                  # the six below, ~10 min
    .venv/bin/python -m bench.builder_memory --archs resnet18
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ARCHS = ("resnet18", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b1", "resnet50",
         "convnext_tiny")


def main() -> int:
    import torch

    import model_loader
    from webapp.engines import EngineSettings, child, model_key

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            torch.manual_seed(0)
            path = Path(tmp) / f"{arch}.pth"
            torch.save(model_loader.build_model(arch, 5).state_dict(), path)
            settings = EngineSettings(quantize="auto", cache_dir=str(Path(tmp) / arch))
            given = {"classes": "a,b,c,d,e"}
            sha = model_loader.sha256_file(path)
            started = time.perf_counter()
            answer = child.run_builder(
                ["checkpoint", str(path), "--given", json.dumps(given), "--sha256", sha,
                 "--key", model_key(sha, given), "--cache", settings.cache_dir,
                 "--decide", json.dumps(dataclasses.asdict(settings))], what=arch)
            memory = answer.get("memory", {})
            rows.append({"arch": arch, "file_mb": round(path.stat().st_size / 2**20, 1),
                         **memory, "seconds": round(time.perf_counter() - started, 1),
                         "chosen": answer.get("decision", {}).get("chosen")})
            print(json.dumps(rows[-1]), flush=True)
    print(f"largest growth of address space: {max(r['growth_mb'] for r in rows)} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
