"""Load and soak benchmark of the production server (run by hand;
docs/operating.md has the measured numbers).

Starts gunicorn with the project's gunicorn.conf.py on 127.0.0.1 (or uses --url), then
CLIENTS threads send a realistic mix for MINUTES: real photos as phone-sized JPEGs and
as PNGs, plus one request in ten from the hostile corpus (tests/hostile.py).  Prints the
latency percentiles of the photos, throughput, errors (any 5xx, any answer the corpus
does not allow, any connection error), and the resident memory of every worker sampled
every few seconds: after the warm-up (the first WARMUP seconds) it must stay within ±10%
of its level just after the warm-up.  Worker recycling is off (MAX_REQUESTS=0) unless
asked for, so a leak cannot hide behind restarts.

    .venv/bin/python bench/soak.py                       # 10 minutes, 8 clients
    .venv/bin/python bench/soak.py --minutes 1           # a short load run
    .venv/bin/python bench/soak.py --env WEB_CONCURRENCY=2 --env TORCH_THREADS=1
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import hostile, ops  # noqa: E402
from tests.conftest import encode  # noqa: E402  (also gives an empty TORCH_HOME/MODEL_DIR)
from tests.photos import real_photos  # noqa: E402


def photo_payloads() -> list[tuple[str, bytes, str]]:
    out = []
    for item in real_photos():
        big = item.image.resize((1600, round(1600 * item.image.height / item.image.width)))
        out.append((f"{item.name}.jpg", encode(big, "JPEG", quality=88), "image/jpeg"))
        out.append((f"{item.name}.png", encode(item.image, "PNG"), "image/png"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=60, help="seconds")
    parser.add_argument("--sample", type=float, default=5, help="seconds between samples")
    parser.add_argument("--hostile-share", type=float, default=0.1)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="server setting (repeatable), e.g. WEB_CONCURRENCY=2")
    args = parser.parse_args()
    env = {"MAX_REQUESTS": "0"}
    env.update(item.split("=", 1) for item in args.env)

    photos = photo_payloads()
    corpus = [c for c in hostile.corpus() if not c.name.startswith("heavy-")]
    heavy = [c for c in hostile.corpus() if c.name.startswith("heavy-")]
    server = ops.launch(Path(tempfile.mkdtemp(prefix="soak-")), "soak", **env)
    try:
        server.wait_ready(timeout=300)
        time.sleep(2)
        workers = ops.worker_pids(server)
        print(f"server: {server.url}, workers {workers}, settings {env}; "
              f"{args.clients} clients for {args.minutes:g} min")
        stop = threading.Event()
        lock = threading.Lock()
        latencies, errors, counts = [], [], {"photo": 0, "hostile": 0}

        def client(seed: int):
            rng = random.Random(seed)
            session = requests.Session()
            for n in itertools.count():
                if stop.is_set():
                    return
                try:
                    if rng.random() < args.hostile_share:
                        case = heavy[n % len(heavy)] if rng.random() < 0.05 else \
                            rng.choice(corpus)
                        response = ops.post_case(server.url, case, session=session)
                        ok = response.status_code in case.expect
                        kind = "hostile"
                    else:
                        name, data, ctype = rng.choice(photos)
                        started = time.perf_counter()
                        response = session.post(server.url + "/predict", timeout=120,
                                                files={"image": (name, data, ctype)})
                        elapsed = (time.perf_counter() - started) * 1000
                        ok = response.status_code == 200
                        kind = "photo"
                        if ok:
                            with lock:
                                latencies.append(elapsed)
                    with lock:
                        counts[kind] += 1
                        if not ok:
                            errors.append((kind, response.status_code, response.text[:200]))
                except requests.RequestException as exc:
                    with lock:
                        errors.append(("connection", 0, repr(exc)))

        threads = [threading.Thread(target=client, args=(seed,), daemon=True)
                   for seed in range(args.clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        samples = []  # (seconds since start, {pid: rss MB})
        duration = args.minutes * 60
        while time.monotonic() - started < duration:
            time.sleep(args.sample)
            pids = ops.worker_pids(server)
            samples.append((time.monotonic() - started,
                            {pid: ops.rss_mb(pid) for pid in pids}))
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
        elapsed = time.monotonic() - started
        peaks = {pid: round(ops.peak_rss_mb(pid)) for pid in ops.worker_pids(server)}
    finally:
        server.stop()

    total = counts["photo"] + counts["hostile"]
    print(f"\nrequests: {total} in {elapsed:.0f} s ({total / elapsed:.1f}/s): "
          f"{counts['photo']} photos, {counts['hostile']} from the hostile corpus")
    print(f"errors: {len(errors)}" + (f"  e.g. {errors[:3]}" if errors else ""))
    if latencies:
        ordered = sorted(latencies)

        def pct(p):
            return ordered[min(len(ordered) - 1, int(p / 100 * (len(ordered) - 1)))]

        print(f"photo latency ms: p50 {pct(50):.0f}  p90 {pct(90):.0f}  p99 {pct(99):.0f}  "
              f"max {ordered[-1]:.0f}")
    restarted = set(samples[-1][1]) != set(samples[0][1]) if samples else False
    print(f"worker peak RSS (VmHWM) MB: {peaks}" + ("  (workers changed!)" if restarted else ""))
    # Flat = no trend: the median RSS of every minute after the warm-up stays within
    # ±10% of the first one.  Single samples also catch requests in flight (a 49-MP
    # image from the corpus costs ~400 MB while it is decoded); those are reported as
    # the transient peak, not counted as growth.
    after = [(t, rss) for t, rss in samples if t >= args.warmup]
    flat = True
    if after:
        per_minute = max(1, int(60 / args.sample))
        print(f"\nRSS MB per worker, median / max of each minute (sampled every "
              f"{args.sample:g} s):")
        for pid in after[0][1]:
            series = [rss[pid] for _, rss in after if pid in rss]
            minutes = [series[i:i + per_minute] for i in range(0, len(series), per_minute)]
            minutes = [m for m in minutes if len(m) >= per_minute // 2]
            medians = [statistics.median(m) for m in minutes]
            print(f"  worker {pid}: " + "  ".join(
                f"{med:.0f}/{max(m):.0f}" for med, m in zip(medians, minutes)))
            reference = medians[0]
            drift = max(abs(m - reference) for m in medians) / reference * 100
            ok = drift <= 10
            flat &= ok
            print(f"  worker {pid}: first minute after warm-up {reference:.0f} MB, minute "
                  f"medians {min(medians):.0f}-{max(medians):.0f} MB (largest deviation "
                  f"{drift:.1f}%: {'flat, within 10%' if ok else 'NOT flat'}); transient "
                  f"peak {max(series):.0f} MB")
    return 0 if not errors and flat else 1


if __name__ == "__main__":
    sys.exit(main())
