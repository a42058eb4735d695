"""Convert the built-in model for serving ahead of time, into ``ENGINE_CACHE_DIR``: its
model card, its network, QUANTIZE=auto's decision for this CPU and the engine's threads,
and OpenVINO's compiled network -- what a worker would otherwise build on its first start.

``make engine`` runs it; the Docker build runs it into ``/opt/engines``, which the image
names as ``ENGINE_CACHE_SEED``: a fresh container copies that into its own cache and
serves in seconds.  The workers and threads are planned as gunicorn.conf.py plans them
(the decision depends on the engine's threads); a machine with another CPU decides its
precision again on its first start.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    from webapp.config import Config, dual_streams, plan_concurrency, setting

    settings = Config.from_env()
    workers, threads = plan_concurrency(
        settings["WEB_CONCURRENCY"], setting("TORCH_THREADS"),
        dual=dual_streams(settings))
    os.environ["WEB_CONCURRENCY"], os.environ["TORCH_THREADS"] = str(workers), str(threads)

    from webapp import create_app, current
    from webapp.engines.artefacts import default_cache_dir

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="engine-") as work:  # no store is touched
        app = create_app({"MODEL_DIR": str(Path(work) / "models"),
                          "DATA_DIR": str(Path(work) / "datasets")})
        with app.app_context():
            loaded = current.holder().get().loaded
    cache = Path(app.config["ENGINE_CACHE_DIR"] or default_cache_dir())
    # Readable by everyone: the image's user is not the one that built it, and OpenVINO
    # writes its compiled networks for their owner only.
    for path in [cache, *cache.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    print(f"converted {loaded.name} ({loaded.arch}, {loaded.engine_info.get('precision')} on "
          f"{loaded.engine_name}, {threads} thread(s)) into {cache} in "
          f"{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
