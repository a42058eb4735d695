"""The whole benchmark in one command: this project's server (gunicorn app:app, as
documented for production) against the seed recipe (bench/baseline_server.py), started
in one run, with the same randomly initialised ResNet18 weights file, on the same CPUs.

    python -m bench.run              # full run (~15 min on 2 quiet cores)
    python -m bench.run --quick      # a short run to check that everything works
    python -m bench.run --isa avx2   # both servers on oneDNN capped at AVX2: a common PC

Prints a table and writes bench/results.md, bench/results.json and bench/results.png.
Every number is a ratio against the baseline measured in the same run; load comes from
a separate process (bench/loadgen.py) on 127.0.0.1 with bounded request counts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from testkit.ops import wait_decided

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else 0.0


class Server:
    def __init__(self, name, argv, env, cpus, log_dir):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.log = open(log_dir / f"{name}.log", "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        self.served = 0

    def wait_ready(self, timeout=600) -> float:
        while time.perf_counter() - self.started < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited; see {self.log.name}")
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise SystemExit(f"{self.name} not ready after {timeout} s")

    def rss_mb(self) -> dict:
        import psutil

        master = psutil.Process(self.proc.pid)
        workers = master.children() or [master]
        rss = [p.memory_info().rss / 2**20 for p in workers]
        return {"workers": len(workers), "per_worker_mb": max(rss),
                "total_mb": sum(rss) + (master.memory_info().rss / 2**20
                                        if master.children() else 0)}

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def load(server: Server, image: Path, clients: int, n: int, cpus) -> dict:
    out = subprocess.run(
        [PY, "-m", "bench.loadgen", server.url + "/predict", str(image),
         "--clients", str(clients), "--requests", str(n), "--max-seconds", "600"],
        capture_output=True, text=True, check=True, cwd=ROOT,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    result = json.loads(out.stdout)
    server.served += n
    lat = result["latencies_ms"]
    return {"n": len(lat), "errors": len(result["errors"]), "rps": len(lat) / result["elapsed_s"],
            "median": statistics.median(lat) if lat else 0, "p95": pct(lat, 0.95),
            "p99": pct(lat, 0.99), "error_samples": result["errors"][:3]}


def make_images(tmp: Path) -> dict:
    from PIL import Image

    from testkit.photos import photo

    img = photo("chelsea").image
    paths = {}
    for name, size in (("12MP", (4000, 3000)), ("1280x960", (1280, 960))):
        scaled = img.resize(size, Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        scaled.save(buf, "JPEG", quality=92)
        paths[name] = tmp / f"photo-{name}.jpg"
        paths[name].write_bytes(buf.getvalue())
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests, to check it runs")
    parser.add_argument("--cpus", default=None,
                        help="CPU list for both servers and the load, e.g. 0,1 (default: all)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--isa", choices=["native", "avx2"], default="native",
                        help="avx2: oneDNN (OpenVINO and torch) limited to AVX2 for both "
                        "servers (ONEDNN_MAX_CPU_ISA): no AVX-512, bf16 or AMX, as on most "
                        "school and office PCs")
    parser.add_argument("--project-env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for this project's server, e.g. QUANTIZE=static")
    args = parser.parse_args()
    cpus = ({int(c) for c in args.cpus.split(",")} if args.cpus
            else os.sched_getaffinity(0))
    quick = args.quick
    if args.isa == "avx2":  # every child process (servers, model-only) inherits it
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    results: dict = {"cpus": len(cpus), "quick": quick, "isa": args.isa,
                     "machine": _cpu_name(),
                     "load_before": os.getloadavg()}

    import torch
    import torchvision

    torch.manual_seed(0)
    weights = tmp / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    images = make_images(tmp)

    print("1/5 model-only latency per engine ...", flush=True)
    out = subprocess.run(
        [PY, "-m", "bench.model_speed", "--weights", str(weights), "--threads",
         str(len(cpus)), "--rounds", "15" if quick else "150", "--cache-dir", str(tmp / "ms")],
        capture_output=True, text=True, check=True, cwd=ROOT,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    results["model_only"] = json.loads(out.stdout)

    print("2/5 agreement with fp32 on real photos, decoding drift ...", flush=True)
    out = subprocess.run([PY, "-m", "bench.accuracy", str(tmp / "acc")],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    results["accuracy"] = json.loads(out.stdout)

    print("3/5 starting both servers (time to /readyz) ...", flush=True)
    # The project's modules as bytecode, as the image has them (make bytecode): under
    # PYTHONDONTWRITEBYTECODE every worker would compile them again at every start.
    subprocess.run([PY, "-m", "compileall", "-q", "app.py", "model_loader.py", "webapp"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    project_env = {"MODEL_WEIGHTS": str(weights), "ENGINE_CACHE_DIR": str(tmp / "cache"),
                   "LOG_LEVEL": "warning", "ADMIN_TOKEN": ADMIN_TOKEN,
                   "MODEL_DIR": str(tmp / "models"),
                   **dict(kv.split("=", 1) for kv in args.project_env)}
    project_argv = [PY, "-m", "gunicorn", "app:app", "--access-logfile", "/dev/null"]
    baseline_argv = [PY, "-m", "bench.baseline_server", str(weights), "--port", "{port}"]
    servers = []
    try:
        cold = Server("project-cold", project_argv, project_env, cpus, tmp)
        servers.append(cold)
        ready = {"project (empty engine cache)": cold.wait_ready()}
        # The engine and precision are chosen in the background (ENGINE/QUANTIZE=auto):
        # wait for the choice, so the cache is filled for the warm start and no trials
        # run while the project is measured.
        results["engine_chosen"] = wait_decided(cold)
        cold.stop()
        project = Server("project", project_argv, project_env, cpus, tmp)
        servers.append(project)
        ready["project"] = project.wait_ready()
        wait_decided(project)  # every worker serves the choice (at once, from the cache)
        baseline = Server("baseline", baseline_argv, {}, cpus, tmp)
        servers.append(baseline)
        ready["baseline"] = baseline.wait_ready()
        results["ready_s"] = ready
        pair = {"project": project, "baseline": baseline}
        for server in pair.values():
            load(server, images["1280x960"], 1, 20, cpus)  # warm-up
        results["rss_after_warmup"] = {k: s.rss_mb() for k, s in pair.items()}

        print("4/5 end-to-end latency and throughput ...", flush=True)
        e2e = {k: {} for k in pair}
        n_e2e = 6 if quick else 40
        for image in ("12MP", "1280x960"):
            for _ in range(2):  # alternate, in halves
                for name, server in pair.items():
                    r = load(server, images[image], 1, n_e2e // 2, cpus)
                    e2e[name].setdefault(image, []).append(r)
        results["e2e"] = {name: {image: {
            "median": statistics.median([r["median"] for r in runs]),
            "p95": max(r["p95"] for r in runs),
            "errors": sum(r["errors"] for r in runs)} for image, runs in per.items()}
            for name, per in e2e.items()}
        throughput = {k: {} for k in pair}
        for clients in (1, 4, 8):
            n = (10 if quick else 60) * max(1, clients // 2)
            for name, server in pair.items():
                throughput[name][clients] = load(server, images["1280x960"], clients, n, cpus)
        results["throughput"] = throughput

        print("5/5 memory after 2,000 requests ...", flush=True)
        target = 200 if quick else 2000
        for server in pair.values():
            if server.served < target:
                load(server, images["1280x960"], 4, target - server.served, cpus)
        results["requests_served"] = {k: s.served for k, s in pair.items()}
        results["rss_after_requests"] = {k: s.rss_mb() for k, s in pair.items()}
        results["project_readyz"] = requests.get(project.url + "/readyz", timeout=5).json()

        print("6/6 model swap, hostile checkpoint uploads ...", flush=True)
        results["swap"] = swap_time(project, tmp, images["1280x960"])
        results["bombs"] = checkpoint_bombs(project, tmp)
        project.stop()

        print("7/7 the torch path (ENGINE=torch QUANTIZE=dynamic) ...", flush=True)
        results["torch_path"] = torch_path(project_env, project_argv, images, cpus, tmp,
                                           baseline, 6 if quick else 30)
    finally:
        for server in servers:
            server.stop()
    shutil.rmtree(tmp, ignore_errors=True)  # kept when something failed: the servers' logs
    results["load_after"] = os.getloadavg()
    report(results, Path(args.out))


ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def swap_time(server: Server, tmp: Path, image: Path) -> dict:
    """Upload a fine-tuned ResNet18 (converted for the engine at upload), activate it, and
    send photos until no worker answers with the old model: the time from the activation
    to the last answer of the old model, and how many requests failed meanwhile."""
    import torch
    import torchvision

    import model_loader

    torch.manual_seed(1)
    path = model_loader.save_checkpoint(
        tmp / "fine-tuned.pt", torchvision.models.resnet18(num_classes=5), arch="resnet18",
        classes=["a", "b", "c", "d", "e"])
    started = time.perf_counter()
    with open(path, "rb") as fh:
        upload = requests.post(server.url + "/admin/api/models", headers=AUTH,
                               files={"checkpoint": ("fine-tuned.pt", fh)}, timeout=600)
    upload.raise_for_status()
    upload_s = time.perf_counter() - started
    model_id = upload.json()["id"]
    data = image.read_bytes()
    activated = time.perf_counter()
    requests.post(f"{server.url}/admin/api/models/{model_id}/activate", headers=AUTH,
                  timeout=30).raise_for_status()
    last_old, failed, streak = activated, 0, 0
    while streak < 20 and time.perf_counter() - activated < 60:
        reply = requests.post(server.url + "/predict", files={"image": ("p.jpg", data)},
                              timeout=60)
        if reply.status_code != 200:
            failed += 1
        elif reply.json()["model"]["id"] == model_id:
            streak += 1
        else:
            last_old, streak = time.perf_counter(), 0
    return {"upload_and_convert_s": upload_s, "swap_s": last_old - activated,
            "failed_requests": failed}


def torch_path(env: dict, argv: list, images: dict, cpus, tmp: Path, baseline: Server,
               n: int) -> dict:
    """The design card's own configuration, ENGINE=torch QUANTIZE=dynamic: the inference
    time inside the server (its own ``timings_ms.inference``, one photo at a time) against
    the same model run outside any server (bench/outside_torch.py, on the same CPUs), the
    two alternating request by request; and end to end against the seed recipe."""
    server = Server("project-torch", argv, {**env, "ENGINE": "torch", "QUANTIZE": "dynamic",
                                            "ADMIN_TOKEN": ""}, cpus, tmp)
    outside = subprocess.Popen(
        [PY, "-m", "bench.outside_torch", env["MODEL_WEIGHTS"], str(len(cpus))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    try:
        server.wait_ready()
        assert outside.stdout.readline().strip() == "ready"
        data = images["1280x960"].read_bytes()
        inference, bare = [], []
        for _ in range(5 + 3 * n):
            reply = requests.post(server.url + "/predict", timeout=60,
                                  files={"image": ("p.jpg", data)})
            inference.append(reply.json()["timings_ms"]["inference"])
            outside.stdin.write("\n")
            outside.stdin.flush()
            bare.append(float(outside.stdout.readline()))
        e2e = {"project": load(server, images["1280x960"], 1, n, cpus)["median"],
               "baseline": load(baseline, images["1280x960"], 1, n, cpus)["median"]}
        return {"in_server_inference_ms": statistics.median(inference[5:]),
                "outside_ms": statistics.median(bare[5:]), "e2e_ms": e2e}
    finally:
        outside.kill()
        server.stop()


def checkpoint_bombs(server: Server, tmp: Path) -> dict:
    """Two uploads built to explode (testkit/weights.py): the time to their 422
    and how much the workers' memory grew."""
    from testkit.weights import deflate_bomb, views_bomb

    out = {}
    for name, make in (("deflate 1000:1", deflate_bomb), ("views of one number", views_bomb)):
        path = make(tmp / f"bomb-{len(out)}.pt")
        before = server.rss_mb()["per_worker_mb"]
        started = time.perf_counter()
        reply = requests.post(server.url + "/admin/api/models", headers=AUTH,
                              files={"checkpoint": (path.name, path.read_bytes())}, timeout=600)
        out[name] = {"status": reply.status_code, "seconds": time.perf_counter() - started,
                     "file_mb": path.stat().st_size / 2**20,
                     "worker_rss_growth_mb": server.rss_mb()["per_worker_mb"] - before,
                     "message": reply.json().get("error", {}).get("message", "")[:200]}
    return out


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}×" if a and b else "–"


def report(r: dict, out: Path) -> None:
    lines = []
    add = lines.append
    engine = r.get("project_readyz", {}).get("engine", {})
    isa = (" **oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) for both servers: a common "
           "PC**" if r.get("isa") == "avx2" else "")
    add(f"Machine: {r['machine']}{isa}, {r['cpus']} CPUs for each server and the load; load "
        f"average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after"
        + (" — QUICK RUN, numbers are rough" if r["quick"] else "") + ".")
    add(f"Project server: gunicorn app:app, ENGINE={engine.get('engine')} "
        f"QUANTIZE={engine.get('quantization')}, "
        f"{r['rss_after_warmup']['project']['workers']} worker(s). Baseline: the seed recipe "
        "(bench/baseline_server.py). Same random ResNet18 weights file.")
    add("")
    add("**1. Model-only latency, batch 1 (ms; ratio = the card's dynamic quantization ÷ "
        "this engine, higher is faster)**")
    add("")
    add("| engine | ResNet18 median | p95 | speed-up | Lite0 median | p95 | speed-up |")
    add("|---|---|---|---|---|---|---|")
    ms = r["model_only"]
    for name in ms["resnet18"]:
        a, b = ms["resnet18"][name], ms["efficientnet_lite0"].get(name, {})
        if "error" in a or "error" in b:
            add(f"| {name} | does not compile here: {a.get('error') or b.get('error')} "
                "| | | | | |")
            continue
        add(f"| {name} | {a['median']:.2f} | {a['p95']:.2f} | "
            f"{ratio(ms['resnet18']['torch dynamic']['median'], a['median'])} | "
            f"{b.get('median', 0):.2f} | {b.get('p95', 0):.2f} | "
            f"{ratio(ms['efficientnet_lite0']['torch dynamic']['median'], b.get('median'))} |")
    add("")
    add(f"**Agreement with fp32 ({r['accuracy'].get('model', 'bundled EfficientNet-Lite0')}, "
        f"{next(v['n'] for v in r['accuracy']['engines'].values() if 'n' in v)} real photos)**")
    add("")
    add("| engine | top-1 agreement | top-5 overlap |")
    add("|---|---|---|")
    for name, v in r["accuracy"]["engines"].items():
        if "error" in v:
            add(f"| {name} | does not compile here | |")
            continue
        add(f"| {name} | {v['top1_agreement'] * 100:.1f}% | {v['top5_overlap'] * 100:.1f}% |")
    add("")
    add("**Reduced-size decoding vs full decoding (12 MP photos, same model)**")
    add("")
    add("| format | same top-1 | largest score change |")
    add("|---|---|---|")
    for name, v in r["accuracy"]["decoding"].items():
        add(f"| {name} | {v['same_top1']}/{v['n']} | {v['max_score_drift']:.3f} |")
    add("")
    add("**2–4. Servers (ms; ratio = baseline ÷ project for latency, project ÷ baseline for "
        "throughput)**")
    add("")
    add("| measure | baseline | project | ratio |")
    add("|---|---|---|---|")
    e = r["e2e"]
    for image in ("12MP", "1280x960"):
        b, p = e["baseline"][image], e["project"][image]
        add(f"| /predict {image} JPEG, median | {b['median']:.0f} | {p['median']:.0f} | "
            f"{ratio(b['median'], p['median'])} |")
        add(f"| /predict {image} JPEG, p95 | {b['p95']:.0f} | {p['p95']:.0f} | "
            f"{ratio(b['p95'], p['p95'])} |")
    t = r["throughput"]
    for clients in t["baseline"]:
        b, p = t["baseline"][clients], t["project"][clients]
        add(f"| {clients} client(s): requests/s (1280×960) | {b['rps']:.1f} | {p['rps']:.1f} | "
            f"{ratio(p['rps'], b['rps'])} |")
        add(f"| {clients} client(s): p99 ms | {b['p99']:.0f} | {p['p99']:.0f} | "
            f"{ratio(b['p99'], p['p99'])} |")
        add(f"| {clients} client(s): errors | {b['errors']} of {b['n'] + b['errors']} | "
            f"{p['errors']} of {p['n'] + p['errors']} | |")
    for key, label in (("rss_after_warmup", "after warm-up"),
                       ("rss_after_requests", f"after {r['requests_served']['project']} "
                                              "requests")):
        b, p = r[key]["baseline"], r[key]["project"]
        add(f"| RSS per worker {label}, MB | {b['per_worker_mb']:.0f} | "
            f"{p['per_worker_mb']:.0f} ({p['workers']} workers) | "
            f"{ratio(b['per_worker_mb'], p['per_worker_mb'])} |")
    rd = r["ready_s"]
    add(f"| start to /readyz = 200, s | {rd['baseline']:.1f} | {rd['project']:.1f} "
        f"(empty engine cache: {rd['project (empty engine cache)']:.1f}) | "
        f"{ratio(rd['baseline'], rd['project'])} |")
    if "swap" in r:
        sw = r["swap"]
        add(f"| model swap: activation to the last answer of the old model, s | – | "
            f"{sw['swap_s']:.2f} ({sw['failed_requests']} failed requests; upload and "
            f"conversion {sw['upload_and_convert_s']:.1f} s) | |")
    if "torch_path" in r:
        tp = r["torch_path"]
        outside = tp.get("outside_ms") or r["model_only"]["resnet18"]["torch dynamic"]["median"]
        add(f"| ENGINE=torch QUANTIZE=dynamic: model inference in the server vs outside "
            f"(alternating), ms | {outside:.1f} (outside) | {tp['in_server_inference_ms']:.1f} | "
            f"{outside / tp['in_server_inference_ms']:.2f}× |")
        add(f"| ENGINE=torch QUANTIZE=dynamic: /predict 1280×960, median ms | "
            f"{tp['e2e_ms']['baseline']:.0f} | {tp['e2e_ms']['project']:.0f} | "
            f"{ratio(tp['e2e_ms']['baseline'], tp['e2e_ms']['project'])} |")
    for name, b in r.get("bombs", {}).items():
        add(f"| hostile checkpoint ({name}, {b['file_mb']:.2f} MB): answer, s; worker RSS "
            f"growth, MB | – | {b['status']} in {b['seconds']:.1f} s; "
            f"{b['worker_rss_growth_mb']:+.0f} MB | |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(out) + ".md").write_text(text)
    Path(str(out) + ".json").write_text(json.dumps(r, indent=1, default=str))
    chart(r, Path(str(out) + ".png"))
    print(f"wrote {out}.md, {out}.json, {out}.png")


def chart(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ms = r["model_only"]
    names = [n for n in ms["resnet18"] if "error" not in ms["resnet18"][n]]
    x = range(len(names))
    ax1.bar([i - 0.2 for i in x], [ms["resnet18"][n]["median"] for n in names], 0.4,
            label="ResNet18 (random weights)")
    ax1.bar([i + 0.2 for i in x], [ms["efficientnet_lite0"].get(n, {}).get("median", 0)
                                   for n in names], 0.4, label="EfficientNet-Lite0")
    ax1.set_xticks(list(x), names, rotation=30, ha="right")
    ax1.set_ylabel("ms per image, batch 1 (median)")
    ax1.set_yscale("log")
    ax1.set_title("Model only, per engine")
    ax1.legend()
    e, t = r["e2e"], r["throughput"]
    labels = ["12 MP JPEG\nlatency", "1280×960\nlatency"] + [
        f"{c} clients\nthroughput" for c in t["project"]]
    values = [e["baseline"][i]["median"] / e["project"][i]["median"]
              for i in ("12MP", "1280x960")] + [
        t["project"][c]["rps"] / t["baseline"][c]["rps"] for c in t["project"]]
    ax2.bar(labels, values, color="tab:green")
    ax2.axhline(1, color="grey", linewidth=1)
    for i, v in enumerate(values):
        ax2.text(i, v, f"{v:.1f}×", ha="center", va="bottom")
    ax2.set_ylim(0, max(values) * 1.15)
    ax2.set_title("This server vs the seed recipe (higher is better)")
    engine = r.get("project_readyz", {}).get("engine", {})
    fig.suptitle(("QUICK RUN — " if r["quick"] else "") + f"{r['cpus']} CPUs, {r['machine']}; "
                 f"this server: ENGINE={engine.get('engine')} "
                 f"QUANTIZE={engine.get('quantization')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
