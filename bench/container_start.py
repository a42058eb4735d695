"""How long a fresh container of the image takes to answer /readyz with 200: each run
starts the image with a new, empty volume on /data (as a first deployment does), a
read-only root and a tmpfs /tmp, polls /readyz every 0.1 s, and removes both.  Run it on
a quiet machine after building the image (podman or docker):

    python -m bench.container_start offline-classifier:check --runs 5
    python -m bench.container_start offline-classifier --engine docker --cpus 2

The image holds the built-in model's engine (ENGINE_CACHE_SEED), so the figure is the
processes' start and the model's load, not a conversion.  Standard library only.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import urllib.request
import uuid


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def one_run(engine: str, image: str, port: int, extra: list[str], timeout: float) -> float:
    name = f"start-bench-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-data"
    argv = [engine, "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
            "-p", f"{port}:5000", "-v", f"{volume}:/data", *extra, image]
    started = time.monotonic()
    try:
        subprocess.run(argv, check=True, capture_output=True)
        while not ready(f"http://127.0.0.1:{port}/readyz"):
            if time.monotonic() - started > timeout:
                raise SystemExit(f"no 200 from /readyz within {timeout:g} s")
            time.sleep(0.1)
        return time.monotonic() - started
    finally:
        subprocess.run([engine, "rm", "-f", name], capture_output=True)
        subprocess.run([engine, "volume", "rm", "-f", volume], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--engine", default="podman", help="podman (default) or docker")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=18600)
    parser.add_argument("--cpus", help="give the container this many CPUs (--cpus)")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--run-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for `run` (repeat it), e.g. --run-arg=--ulimit "
                        "--run-arg=nofile=1024:1024")
    args = parser.parse_args()
    extra = list(args.run_arg) + (["--cpus", args.cpus] if args.cpus else [])
    times = []
    for n in range(args.runs):
        seconds = one_run(args.engine, args.image, args.port, extra, args.timeout)
        times.append(seconds)
        print(f"run {n + 1}: first /readyz 200 after {seconds:.2f} s", flush=True)
    print(f"median {statistics.median(times):.2f} s, min {min(times):.2f} s "
          f"over {len(times)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
