"""Shared fixtures.  Every test runs with its own empty TORCH_HOME, so a torchvision
cache on the developer's machine never changes what is tested."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import torch
import torchvision

ROOT = Path(__file__).resolve().parent.parent

# Before anything reads it: an empty torch cache for the whole test session.
_TORCH_HOME = tempfile.mkdtemp(prefix="torch-home-")
os.environ["TORCH_HOME"] = _TORCH_HOME
# Empty teach-live datasets and jobs, never the project's instance/datasets.
for _name in ("JOB_THREADS", "MAX_DATASET_IMAGES", "MAX_DATASET_MB"):
    os.environ.pop(_name, None)
os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="data-dir-")
for _name in ("MODEL_WEIGHTS", "ALLOW_DOWNLOAD", "QUANTIZE", "WEB_CONCURRENCY",
              "TORCH_THREADS", "MAX_UPLOAD_MB", "MAX_IMAGE_PIXELS"):
    os.environ.pop(_name, None)
# ... and an empty model registry, never the project's instance/models.
for _name in ("ADMIN_TOKEN", "SECRET_KEY", "MAX_CHECKPOINT_MB", "ADMIN_LOGIN_LIMIT"):
    os.environ.pop(_name, None)
os.environ["MODEL_DIR"] = tempfile.mkdtemp(prefix="model-dir-")
for _name in ("ENGINE", "CALIBRATION_DIR", "MALLOC_ARENA_MAX"):
    os.environ.pop(_name, None)
# Converted models go to a cache of this session, shared by its servers (not ~/.cache).
os.environ["ENGINE_CACHE_DIR"] = tempfile.mkdtemp(prefix="engine-cache-")
atexit.register(shutil.rmtree, os.environ["ENGINE_CACHE_DIR"], ignore_errors=True)


def encode(image, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def save_random_resnet18(path: Path, num_classes: int = 1000, seed: int = 0) -> Path:
    """A randomly initialised ResNet18 saved exactly as torchvision publishes weights."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def random_resnet18(tmp_path_factory) -> Path:
    return save_random_resnet18(tmp_path_factory.mktemp("weights") / "resnet18-random.pth")


def save_finetuned_resnet18(path: Path, classes: list[str], seed: int = 0,
                            input_size: int = 64, metrics: dict | None = None) -> Path:
    """A randomly initialised ResNet18 with a len(classes)-way head, saved as a
    checkpoint in format v1 (``model_loader.save_checkpoint``), the way a fine-tune is."""
    import model_loader

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=len(classes))
    path.parent.mkdir(parents=True, exist_ok=True)
    return model_loader.save_checkpoint(path, model, arch="resnet18", classes=classes,
                                        input_size=input_size, metrics=metrics)


FRUIT = ["apple", "banana", "cherry"]
TOOLS = ["hammer", "saw", "drill", "wrench"]


@pytest.fixture(scope="session")
def fruit_checkpoint(tmp_path_factory) -> Path:
    """ResNet18 fine-tune, 3 classes, 64 px, with metrics (~45 MB: made once)."""
    return save_finetuned_resnet18(tmp_path_factory.mktemp("ckpt") / "fruit.pt", FRUIT,
                                   seed=1, metrics={"val_accuracy": 0.913, "epochs": 5})


@pytest.fixture(scope="session")
def tools_checkpoint(tmp_path_factory) -> Path:
    """ResNet18 fine-tune, 4 classes, 64 px (~45 MB: made once)."""
    return save_finetuned_resnet18(tmp_path_factory.mktemp("ckpt") / "tools.pt", TOOLS,
                                   seed=2)


@pytest.fixture(scope="session")
def app():
    """The real app with the bundled ImageNet model (no ResNet18 weights on this machine)."""
    from webapp import create_app

    app = create_app({"TESTING": True})
    app.extensions["model_holder"].warm_up()
    return app


@pytest.fixture()
def client(app):
    return app.test_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A real server process on 127.0.0.1 (gunicorn or the dev server)."""

    def __init__(self, argv, env, port, log_path, cpus=None):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=preexec)

    def wait_ready(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log}")
            try:
                response = requests.get(self.url + "/readyz", timeout=5)
                if response.status_code == 200:
                    return response.json()
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log}")

    @property
    def log(self) -> str:
        self._log.flush()
        return Path(self.log_path).read_text(errors="replace")

    def wait_exit(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            import signal

            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture()
def start_server(tmp_path):
    """start_server(kind="gunicorn"|"dev", **env) -> a running Server, stopped after."""
    servers = []

    def start(kind: str = "gunicorn", cpus=None, **env_overrides) -> Server:
        port = free_port()
        env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1",
               **{k: str(v) for k, v in env_overrides.items()}}
        if kind == "gunicorn":
            argv = [sys.executable, "-m", "gunicorn", "app:app"]
        else:
            argv = [sys.executable, "app.py", "--port", str(port)]
        server = Server(argv, env, port, tmp_path / f"server-{len(servers)}.log", cpus)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """Model files as people have them (tests/model_files.py), each made on first use."""
    from tests.model_files import ModelFiles

    return ModelFiles(tmp_path_factory.mktemp("model-files"))
