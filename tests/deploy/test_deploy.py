"""The deployment files, proven without a Docker engine: the Dockerfile's install and
test steps are `make` targets CI runs too (and `make smoke`'s command runs here), the
image runs as a non-root user with a health check and the project's gunicorn config,
docker-compose.yml describes replicas on one MODEL_DIR volume behind nginx, and
deploy/nginx.conf passes `nginx -t` and really fronts two replicas sharing a MODEL_DIR."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from testkit import ROOT, ops
from testkit.deploy import dockerfile, env_of
from testkit.photos import encode, photo
from testkit.server import free_port
from webapp.config import SETTINGS

BIN = Path(sys.executable).parent
TOKEN = "deploy-admin-token-0123456789"
MISSING_NGINX = """\
tests/deploy/test_deploy.py needs nginx to check deploy/nginx.conf (CI installs it):
  sudo apt-get install -y nginx-light     (Debian/Ubuntu; or any nginx >= 1.22 on PATH)"""


def makefile_targets() -> dict[str, tuple[list[str], list[str]]]:
    """Makefile target -> (prerequisites, recipe lines); order-only ones left out."""
    targets, current = {}, None
    for line in (ROOT / "Makefile").read_text("utf-8").splitlines():
        match = re.match(r"^([$()A-Za-z][\w.$()/-]*):(?!=)(.*)$", line)
        if match and not line.startswith("\t"):
            prerequisites = match.group(2).split("|")[0].split("#")[0].split()
            current = targets.setdefault(match.group(1), (prerequisites, []))[1]
        elif line.startswith("\t") and current is not None:
            current.append(line.strip())
        elif not line.strip():
            current = None
    return targets


def make_commands(target: str) -> list[str]:
    """What `make <target>` runs on a fresh checkout: the prerequisites' recipes, then
    the target's own."""
    targets = makefile_targets()
    prerequisites, recipe = targets[target]
    commands = []
    for prerequisite in prerequisites:
        if prerequisite in targets:
            commands += [c for c in make_commands(prerequisite) if c not in commands]
    return commands + recipe


# The only RUN steps that are not make targets: setting the image up, and checking the
# CPU-only torch got in (CI has whatever torch its machine has).
IMAGE_ONLY_STEPS = ("apt-get update", "python -c \"import sys, torch; sys.exit(")


def test_the_dockerfiles_install_and_test_steps_are_the_make_targets_ci_runs():
    instructions = dockerfile()
    runs = [args for instruction, args in instructions if instruction == "RUN"]
    used = []
    for run in runs:
        if run.startswith(IMAGE_ONLY_STEPS):
            continue
        match = re.search(r"\bmake (\w+)( VENV=/opt/venv)?\b", run)
        assert match, f"a RUN step that CI does not run: {run!r}"
        used.append(match.group(1))
    assert used == ["install", "bytecode", "weights", "engine", "smoke"]
    # CPU-only torch first when its index answers (deploy/cpu_torch.py), then the rest.
    install = ["$(BIN)/python deploy/cpu_torch.py $(TORCH_INDEX_URL)",
               "$(BIN)/pip install -q -r requirements.txt", "touch $@"]
    assert make_commands("install") == install
    assert make_commands("download") == install + ["$(BIN)/python -m model_loader download"]
    # make run and the image: ResNet18's weights when the network allows, quietly not.
    weights = ["$(BIN)/python -m model_loader download --optional --timeout 15", "touch $@"]
    assert make_commands("weights") == weights
    run = make_commands("run")
    assert run[:3] == install and weights[0] in run and run[-1] == "$(BIN)/gunicorn app:app"
    assert make_commands("smoke") == install + ["$(BIN)/python deploy/smoke.py"]
    assert make_commands("engine") == install + ["$(BIN)/python deploy/engine.py"]
    # The image runs with PYTHONDONTWRITEBYTECODE: its sources are compiled when it is built.
    assert env_of(instructions)["PYTHONDONTWRITEBYTECODE"] == "1"
    assert make_commands("bytecode") == install + [
        "$(BIN)/python -m compileall -q app.py model_loader.py webapp"]
    # The engine is made into the folder a fresh container starts its cache from.
    engine_step = next(r for r in runs if "make engine" in r)
    assert engine_step.startswith("ENGINE_CACHE_DIR=/opt/engines ")
    assert env_of(instructions)["ENGINE_CACHE_SEED"] == "/opt/engines"
    test = make_commands("test")
    assert "$(BIN)/pip install -q -r requirements-dev.txt" in test
    assert test[-1] == "$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile"
    # CI (`.ci/run`) runs `make test`, which runs this test and the smoke command below;
    # make test installs requirements-dev.txt, which is requirements.txt plus test tools.
    assert "make test" in (ROOT / ".ci" / "run").read_text("utf-8")
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text("utf-8")
    # The download is optional (offline builds), torch from the CPU index, pinned.
    assert any('if [ "$DOWNLOAD_WEIGHTS" = "1" ]; then make weights' in r for r in runs)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in [
        f"{i} {a}" for i, a in instructions]
    requirements = (ROOT / "requirements.txt").read_text("utf-8")
    assert "torch==2.14.1" in requirements and "torchvision==0.29.1" in requirements


def test_the_image_runs_gunicorn_as_a_non_root_user_with_a_health_check():
    instructions = dockerfile()
    values = {}
    for instruction, args in instructions:
        values.setdefault(instruction, []).append(args)
    assert values["FROM"] == ["python:3.11-slim-bookworm"]
    assert values["USER"][-1] not in ("root", "0")
    # USER comes after every RUN: nothing at runtime runs as root.
    last_run = max(i for i, (ins, _) in enumerate(instructions) if ins == "RUN")
    assert [ins for ins, _ in instructions].index("USER") > last_run
    assert json.loads(values["CMD"][-1]) == ["gunicorn", "app:app"]
    assert (ROOT / "gunicorn.conf.py").exists()  # what gunicorn reads from WORKDIR /app
    assert values["WORKDIR"] == ["/app"]
    health = values["HEALTHCHECK"][-1]
    assert health.split(" CMD ")[1] == '["python", "deploy/healthcheck.py"]'
    env = env_of(instructions)
    assert env["HOST"] == "0.0.0.0" and values["EXPOSE"] == [env["PORT"]]
    volume = json.loads(values["VOLUME"][0])[0]
    for key in ("MODEL_DIR", "KIOSK_SETTINGS_FILE", "XDG_CACHE_HOME"):
        assert env[key].startswith(volume + "/"), key  # kept on the volume
    assert not env["TORCH_HOME"].startswith(volume)  # build-time weights stay visible
    assert env["MALLOC_ARENA_MAX"] == "2"


def test_every_variable_the_image_sets_is_a_setting_or_one_of_its_tools():
    """Every ``ENV`` of the Dockerfile is a setting (webapp/config.py's table, whose rows
    docs/settings.md has), or a variable of the image's tools that docs/operating.md's
    Docker section names."""
    env = set(env_of(dockerfile()))
    settings = {setting.name for setting in SETTINGS}
    operating = (ROOT / "docs" / "operating.md").read_text("utf-8")
    docker = operating.split("\n## Docker\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([A-Z][A-Z0-9_]*)`", docker))
    assert not env - settings - named, (
        f"the Dockerfile sets {sorted(env - settings - named)}: neither a setting nor "
        "named in docs/operating.md#docker")


def test_dockerignore_keeps_what_the_image_needs_and_nothing_else():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text("utf-8").splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        """Docker's rules, roughly: a pattern matches the path or a folder above it;
        ``**/`` matches at any depth."""
        parts = path.split("/")
        prefixes = [parts[:k] for k in range(1, len(parts) + 1)]
        for pattern in patterns:
            anywhere = pattern.startswith("**/")
            pattern = pattern.removeprefix("**/")
            for prefix in prefixes:
                starts = range(len(prefix)) if anywhere else (0,)
                if any(fnmatch.fnmatch("/".join(prefix[i:]), pattern) for i in starts):
                    return True
        return False

    for needed in ("app.py", "gunicorn.conf.py", "model_loader.py", "requirements.txt",
                   "Makefile", "webapp/views/api.py", "templates/base.html", "static/js/app.js",
                   "translations/en.json", "deploy/smoke.py", "deploy/healthcheck.py"):
        assert not ignored(needed), needed
    for unwanted in (".venv", ".git", "instance", "tests", "testkit", "bench", "artifacts",
                     "webapp/__pycache__/api.cpython-311.pyc"):
        assert ignored(unwanted), unwanted


@pytest.mark.system
def test_the_smoke_command_of_the_image_build_passes():
    """`make smoke` (what the Dockerfile runs at build time), with this venv."""
    command = make_commands("smoke")[-1].replace("$(BIN)", str(BIN))
    done = subprocess.run(shlex.split(command), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok  /predict" in done.stdout and "ok  JSON access log" in done.stdout


@pytest.mark.system
def test_a_server_starting_from_the_engine_made_ahead_of_time_converts_nothing(
        start_server, tmp_path):
    """`make engine` (the image's build step) into a seed folder, then a server with an
    empty engine cache and ENGINE_CACHE_SEED: it copies the seed, converts nothing (no
    builder child) and answers; the damaged copy of an entry is not taken."""
    seed, cache = tmp_path / "seed", tmp_path / "cache"
    env = {**os.environ, "ENGINE_CACHE_DIR": str(seed), "WEB_CONCURRENCY": "1",
           "TORCH_THREADS": "1"}
    command = make_commands("engine")[-1].replace("$(BIN)", str(BIN))
    done = subprocess.run(shlex.split(command), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "converted EfficientNet-Lite0" in done.stdout
    entries = sorted(p.name for p in seed.iterdir() if not p.name.startswith("."))
    assert any(n.endswith(".card.json") for n in entries)
    assert any(n.endswith(".auto.json") for n in entries)  # QUANTIZE=auto's decision
    assert list((seed / "openvino").iterdir())  # OpenVINO's compiled network
    # Readable by another user (the image's app user did not build it).
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in seed.rglob("*"))

    server = start_server("gunicorn", ENGINE_CACHE_DIR=cache, ENGINE_CACHE_SEED=seed,
                          WEB_CONCURRENCY=2, TORCH_THREADS=1)
    ready = server.wait_ready()
    assert ready["model"]["arch"] == "efficientnet_lite0"
    ops.wait_for_workers(server, 2)
    assert "copied from" in server.log
    assert "for serving in" not in server.log  # the log line of a build (a child process)
    # Both workers open the precision that was decided (compiling one after the other:
    # together, one of them could not read the network the other was writing).
    assert "does not open" not in server.log
    served = re.findall(r"model ready: .* engine (\w+), (\w+)\)", server.log)
    assert len(served) == 2 and len(set(served)) == 1, served
    copied = sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
    assert set(entries) <= set(copied)
    response = requests.post(server.url + "/predict", timeout=60,
                             files={"image": ("cat.jpg", encode(photo("chelsea").image))})
    assert response.status_code == 200


def test_compose_runs_replicas_on_one_model_dir_behind_nginx():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))
    app, proxy = compose["services"]["classifier"], compose["services"]["nginx"]
    env = env_of(dockerfile())
    assert app["build"]["context"] == "."
    assert app["deploy"]["replicas"] >= 2
    volume, _, target = app["volumes"][0].partition(":")
    assert volume in compose["volumes"]  # a named volume every replica mounts
    assert env["MODEL_DIR"].startswith(target + "/")
    assert app["environment"]["TRUSTED_PROXIES"] == "1"
    assert "ADMIN_TOKEN" in app["environment"]
    assert "ports" not in app  # only nginx is published
    assert proxy["image"].startswith("nginx:")
    source, _, mounted = proxy["volumes"][0].partition(":")
    assert (ROOT / source).resolve() == ROOT / "deploy" / "nginx.conf"
    assert mounted.startswith("/etc/nginx/nginx.conf")
    assert proxy["depends_on"]["classifier"]["condition"] == "service_healthy"
    upstream = re.search(r"server (\S+):(\d+)", (ROOT / "deploy" / "nginx.conf").read_text("utf-8"))
    assert upstream.groups() == ("classifier", env["PORT"])


# --------------------------------------------------------------------------- nginx


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)
    if not found:
        pytest.fail(MISSING_NGINX, pytrace=False)
    return found


def render_nginx_conf(tmp: Path, port: int, upstreams: list[int]) -> Path:
    """deploy/nginx.conf with local addresses instead of Docker's, and files in ``tmp``."""
    text = (ROOT / "deploy" / "nginx.conf").read_text("utf-8")
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;"
                        for p in upstreams)
    text, n = re.subn(r"^\s*server classifier:5000[^\n]*;", servers, text, flags=re.M)
    assert n == 1
    text, n = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", text)
    assert n == 1
    text = text.replace("/tmp/nginx-", f"{tmp}/nginx-")
    text = text.replace("access_log /dev/stdout json;", f"access_log {tmp}/access.log json;")
    text = text.replace("error_log /dev/stderr warn;", f"error_log {tmp}/error.log warn;")
    path = tmp / "nginx.conf"
    path.write_text(text)
    return path


@pytest.mark.system
def test_nginx_accepts_the_config(tmp_path):
    conf = render_nginx_conf(tmp_path, free_port(), [free_port(), free_port()])
    done = subprocess.run([nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(conf), "-e",
                           str(tmp_path / "error.log"), "-g", f"pid {tmp_path}/nginx.pid;"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


@pytest.mark.system
def test_two_replicas_sharing_a_model_dir_behind_nginx(tmp_path, fruit_checkpoint):
    """The compose topology without Docker: nginx (deploy/nginx.conf) in front of two
    gunicorn replicas on one MODEL_DIR.  Requests reach both, with nginx's request id in
    their access logs; /metrics stays private; an oversized body is a JSON 413; a model
    uploaded through nginx is served by both replicas; when one replica dies, nginx
    sends /predict to the other and the health check tells them apart."""
    nginx = nginx_binary()
    shared = tmp_path / "models"
    replicas = [ops.launch(tmp_path, f"replica{n}", WEB_CONCURRENCY=1, TORCH_THREADS=1,
                           MODEL_DIR=shared, ADMIN_TOKEN=TOKEN, TRUSTED_PROXIES=1)
                for n in range(2)]
    port = free_port()
    conf = render_nginx_conf(tmp_path, port, [r.port for r in replicas])
    # As root, nginx's workers would run as nobody, who cannot enter pytest's private
    # temp folder where the rendered config keeps nginx's temp files.
    user = "user root;" if os.getuid() == 0 else ""
    proxy = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf), "-e",
                              str(tmp_path / "error.log"), "-g",
                              f"pid {tmp_path}/nginx.pid; daemon off; {user}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    image = encode(photo("chelsea").image.resize((224, 168)), "JPEG")

    def predict():
        return requests.post(url + "/predict", files={"image": ("cat.jpg", image)},
                             timeout=60)

    try:
        for replica in replicas:
            replica.wait_ready()
        responses = [predict() for _ in range(8)]
        assert [r.status_code for r in responses] == [200] * 8
        assert "script-src 'self'" in responses[0].headers["Content-Security-Policy"]
        for replica in replicas:  # round robin: both answered, with nginx's request id
            lines = [line for line in ops.access_lines(replica.log)
                     if line["path"] == "/predict"]
            assert lines, replica.log[-2000:]
            assert all(re.fullmatch(r"[0-9a-f]{32}", line["request_id"]) for line in lines)
            assert all(line["remote"] == "127.0.0.1" for line in lines)
        # A phone-sized photo, over nginx's 1 MB in-memory body buffer.
        phone = encode(photo("chelsea").image.resize((4000, 2664)), "JPEG", quality=95)
        assert len(phone) > 1_100_000
        big = requests.post(url + "/predict", files={"image": ("phone.jpg", phone)},
                            timeout=120)
        assert big.status_code == 200, big.text[:300]
        assert requests.get(url + "/metrics", timeout=30).status_code == 403
        assert requests.get(replicas[0].url + "/metrics", timeout=30).status_code == 200
        too_big = requests.post(url + "/predict", timeout=60,
                                files={"image": ("big.jpg", b"\0" * (25 << 20))})
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_large"

        # A 45 MB checkpoint through nginx (past its 21 MB image limit), activated:
        # both replicas serve it.
        with open(fruit_checkpoint, "rb") as fh:
            uploaded = requests.post(url + "/admin/api/models", timeout=300,
                                     headers={"Authorization": f"Bearer {TOKEN}"},
                                     files={"checkpoint": ("fruit.pt", fh)},
                                     data={"name": "Fruit", "activate": "1"})
        assert uploaded.status_code == 201, uploaded.text
        fruit = uploaded.json()["id"]
        deadline = time.monotonic() + 30
        while {predict().json()["model"]["id"] for _ in range(4)} != {fruit}:
            assert time.monotonic() < deadline
            time.sleep(0.2)

        # One replica goes away: clients of nginx do not notice.
        health = ["python", "deploy/healthcheck.py"]
        check = [str(BIN / "python"), *health[1:]]
        alive = subprocess.run(check, cwd=ROOT, env={**os.environ,
                               "PORT": str(replicas[0].port)}, timeout=30)
        assert alive.returncode == 0
        replicas[0].stop()
        dead = subprocess.run(check, cwd=ROOT, capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PORT": str(replicas[0].port)})
        assert dead.returncode == 1 and "unhealthy" in dead.stderr
        assert [predict().status_code for _ in range(6)] == [200] * 6
    finally:
        if proxy.poll() is None:
            os.killpg(proxy.pid, signal.SIGTERM)
            proxy.wait(timeout=30)
        for replica in replicas:
            replica.stop()
