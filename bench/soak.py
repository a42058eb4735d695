"""Soak benchmark of the production server (run by hand; figures in docs/security.md and
docs/operating.md).

Each run starts a fresh gunicorn server (the project's gunicorn.conf.py, default
settings, on 127.0.0.1; the engine cache is shared by the runs, the processes are new:
what a first start goes through, such as two threads' first inferences at once, happens
in every run) and for MINUTES sends, at once from the start:

* real photos (phone-sized JPEGs and PNGs) from CLIENTS clients, RATE per second in all,
  each client paced (the next request when its time comes, or at once when late);
* one file a second from the hostile corpus (testkit/hostile.py), whose answer must be the
  one the corpus allows (never a 5xx);
* an activation a minute, alternating between a fine-tuned model uploaded at the start
  and the built-in one.

A run passes when no good request failed (every photo a 200, every activation a 200, no
connection error), the corpus got only its allowed answers, gunicorn logged no worker
crash (``WORKER TIMEOUT``, a signal, an exit) and the resident memory of each worker,
the median of minute 2 against the median of the last minute, grew by at most
``--max-growth`` MB.  Worker recycling is off (MAX_REQUESTS=0): a leak cannot hide
behind restarts.

    .venv/bin/python -m bench.soak                          # 15 minutes, 5 runs
    .venv/bin/python -m bench.soak --minutes 3 --runs 1     # a short check
    .venv/bin/python -m bench.soak --env WEB_CONCURRENCY=1 --env TORCH_THREADS=2
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from testkit import hostile, ops
from testkit.photos import (
    encode,
    real_photos,
)
from testkit.weights import FRUIT, save_finetuned_resnet18

TOKEN = "bench-soak-admin-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def photo_payloads() -> list[tuple[str, bytes, str]]:
    out = []
    for item in real_photos():
        big = item.image.resize((1600, round(1600 * item.image.height / item.image.width)))
        out.append((f"{item.name}.jpg", encode(big, "JPEG", quality=88), "image/jpeg"))
        out.append((f"{item.name}.png", encode(item.image, "PNG"), "image/png"))
    return out


@dataclass
class Run:
    """What one run saw."""

    photos: list = field(default_factory=list)  # (seconds since start, latency ms, status)
    corpus: list = field(default_factory=list)  # (case name, status, allowed)
    activations: list = field(default_factory=list)  # (seconds since start, model, status)
    errors: list = field(default_factory=list)  # (what, detail)
    rss: list = field(default_factory=list)  # (seconds since start, {pid: MB})
    crashes: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def failed(self, what: str, detail: str) -> None:
        with self.lock:
            self.errors.append((what, detail[:200]))


def soak(work: Path, cache: Path, model: Path, args, env: dict, number: int) -> Run:
    run = Run()
    server = ops.launch(work, f"soak-{number}", MODEL_DIR=work / f"models-{number}",
                        ENGINE_CACHE_DIR=cache, ADMIN_TOKEN=TOKEN, MAX_REQUESTS=0, **env)
    photos = photo_payloads()
    corpus = hostile.corpus()
    stop = threading.Event()
    try:
        server.wait_ready(timeout=900)
        with open(model, "rb") as fh:
            added = requests.post(server.url + "/admin/api/models", headers=BEARER,
                                  files={"checkpoint": ("fruit.pt", fh)}, timeout=900)
        if added.status_code != 201:
            run.failed("upload", f"{added.status_code} {added.text}")
            return run
        models = [added.json()["id"], "builtin"]
        started = time.monotonic()

        def paced(every: float, offset: float, send) -> None:
            for n in range(10**9):
                due = started + offset + n * every
                if stop.wait(max(0.0, due - time.monotonic())):
                    return
                send(n)

        def photo(rng: random.Random, session: requests.Session):
            def send(_n):
                name, data, ctype = rng.choice(photos)
                t0 = time.monotonic()
                try:
                    status = session.post(server.url + "/predict", timeout=120, files={
                        "image": (name, data, ctype)}).status_code
                except requests.RequestException as exc:
                    status = 0
                    run.failed("photo", repr(exc))
                with run.lock:
                    run.photos.append((t0 - started, (time.monotonic() - t0) * 1000, status))
                if status not in (0, 200):
                    run.failed("photo", f"status {status}")
            return send

        def hostile_file(n):
            case = corpus[n % len(corpus)]
            try:
                status = ops.post_case(server.url, case).status_code
            except requests.RequestException as exc:
                run.failed("corpus", f"{case.name}: {exc!r}")
                return
            with run.lock:
                run.corpus.append((case.name, status, status in case.expect))

        def activate(n):
            model_id = models[n % 2]
            try:
                status = requests.post(server.url + f"/admin/api/models/{model_id}/activate",
                                       headers=BEARER, timeout=120).status_code
            except requests.RequestException as exc:
                status = 0
                run.failed("activation", repr(exc))
            run.activations.append((time.monotonic() - started, model_id, status))
            if status not in (0, 200):
                run.failed("activation", f"{model_id}: status {status}")

        every = args.clients / args.rate
        threads = [threading.Thread(target=paced, args=(
            every, n * every / args.clients, photo(random.Random(n), requests.Session())))
            for n in range(args.clients)]
        threads.append(threading.Thread(target=paced, args=(1 / args.corpus_rate, 0.5,
                                                            hostile_file)))
        threads.append(threading.Thread(target=paced, args=(args.activate_every,
                                                            args.activate_every, activate)))
        for thread in threads:
            thread.start()
        duration = args.minutes * 60
        while time.monotonic() - started < duration:
            time.sleep(args.sample)
            pids = ops.worker_pids(server)
            run.rss.append((time.monotonic() - started, _rss(pids)))
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
    finally:
        stop.set()
        run.crashes = [m for m in ops.CRASH_MARKERS if m in server.log]
        server.stop()
    return run


def _rss(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = ops.rss_mb(pid)
        except (OSError, KeyError):  # gone meanwhile
            pass
    return out


def growth(run: Run, minutes: float) -> dict[int, tuple[float, float]]:
    """Per worker: (median RSS of minute 2, median RSS of the last minute), in MB."""
    out = {}
    pids = set().union(*(set(rss) for _, rss in run.rss)) if run.rss else set()
    for pid in pids:
        second = [rss[pid] for t, rss in run.rss if 60 <= t < 120 and pid in rss]
        last = [rss[pid] for t, rss in run.rss if t >= minutes * 60 - 60 and pid in rss]
        if second and last:
            out[pid] = (statistics.median(second), statistics.median(last))
    return out


def report(number: int, run: Run, args) -> bool:
    ok_photos = [ms for _, ms, status in run.photos if status == 200]
    elapsed = max((t for t, _, _ in run.photos), default=1.0)
    ordered = sorted(ok_photos) or [float("nan")]

    def pct(p):
        return ordered[min(len(ordered) - 1, int(p / 100 * (len(ordered) - 1)))]

    wrong_corpus = [(name, status) for name, status, allowed in run.corpus if not allowed]
    print(f"\nrun {number}: {len(run.photos)} photos ({len(run.photos) / elapsed:.1f}/s), "
          f"{len(run.corpus)} corpus files, {len(run.activations)} activations")
    print(f"  photo latency ms: p50 {pct(50):.0f}  p90 {pct(90):.0f}  p99 {pct(99):.0f}  "
          f"max {ordered[-1]:.0f}")
    print(f"  failed good requests: {len(run.errors)}" + (
        f"  e.g. {run.errors[:3]}" if run.errors else ""))
    print(f"  corpus answers not allowed: {len(wrong_corpus)}" + (
        f"  e.g. {wrong_corpus[:3]}" if wrong_corpus else ""))
    print(f"  worker crashes in the log: {run.crashes or 'none'}")
    fine = not run.errors and not wrong_corpus and not run.crashes
    grown = growth(run, args.minutes)
    workers = {pid for _, rss in run.rss for pid in rss}
    if len(workers) != len(run.rss[0][1] if run.rss else ()):
        print(f"  workers changed during the run: {sorted(workers)}")
        fine = False
    for pid, (second, last) in sorted(grown.items()):
        delta = last - second
        within = delta <= args.max_growth
        fine &= within
        print(f"  worker {pid}: RSS minute 2 {second:.0f} MB -> last minute {last:.0f} MB "
              f"({delta:+.0f} MB, {'within' if within else 'OVER'} {args.max_growth:g} MB); "
              f"peak sample {max(rss[pid] for _, rss in run.rss if pid in rss):.0f} MB")
    print(f"  run {number}: {'PASS' if fine else 'FAIL'}")
    return fine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=float, default=20, help="photos per second, in all")
    parser.add_argument("--corpus-rate", type=float, default=1, help="corpus files a second")
    parser.add_argument("--activate-every", type=float, default=60, help="seconds")
    parser.add_argument("--sample", type=float, default=5, help="seconds between RSS samples")
    parser.add_argument("--max-growth", type=float, default=30, help="MB, minute 2 to the end")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="server setting (repeatable), e.g. WEB_CONCURRENCY=2")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    cache = work / "engine-cache"
    model = save_finetuned_resnet18(work / "fruit.pt", FRUIT, seed=7)
    print(f"{args.runs} run(s) of {args.minutes:g} min: {args.rate:g} photos/s from "
          f"{args.clients} clients, {args.corpus_rate:g} corpus file/s, an activation every "
          f"{args.activate_every:g} s; settings {env or 'default'}; work folder {work}")
    results = [report(n + 1, soak(work, cache, model, args, env, n + 1), args)
               for n in range(args.runs)]
    print(f"\n{sum(results)} of {len(results)} runs passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
