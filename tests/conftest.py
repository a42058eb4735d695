"""Shared fixtures, and the two tiers of the suite.  The helpers the fixtures, the tests
and the benchmarks use (servers, photos, weight files) are in testkit/.

**Tiers.**  ``make test-fast`` runs ``pytest -m "not system and not browser and not slow"``:
no server process, no browser, no model converted or trained for seconds (``slow``), for the
inner loop.  A test that starts a real server (gunicorn, the
development server, nginx), runs one of the project's command lines in a subprocess, or has
the server convert new models (a builder child process each, with torch) is marked
``system``; one that drives Chromium is marked ``browser``.  ``make test`` (what CI
runs) runs both tiers.  ``Server``, the builder child and the training process refuse to
start inside a test without the ``system`` mark, so a slow test cannot slip into the fast
tier unnoticed.

**Isolation.**  The whole session runs with its own empty ``TORCH_HOME`` (a torchvision
cache on the developer's machine never changes what is tested), no setting inherited from
the shell, and an engine cache of its own (``ENGINE_CACHE_DIR``: a model is converted
once per session, which is what makes a fresh app cheap).  Every test then gets its own
empty ``MODEL_DIR`` and ``DATA_DIR`` (in ``tmp_path``) and, through the ``app`` fixture,
a fresh application -- the way Flask's tutorial tests do.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from testkit import tiers
from testkit.server import Server, free_port
from testkit.tiers import require_system_mark
from testkit.weights import FRUIT, TOOLS, save_finetuned_resnet18, save_random_resnet18
from webapp.config import SETTINGS

# The folders every test session sets itself (pytest_configure).
_SESSION_FOLDERS = {"TORCH_HOME": "torch-home", "MODEL_DIR": "models", "DATA_DIR": "data",
                    "ENGINE_CACHE_DIR": "engine-cache"}
# Every other setting (the table in webapp/config.py) a developer's shell may have: the
# tests see the defaults.
_INHERITED = tuple(sorted({s.name for s in SETTINGS} - set(_SESSION_FOLDERS)))
_session_env = pytest.MonkeyPatch()
_session_folders: list[Path] = []


def pytest_configure(config):
    """The session's environment, set before any test module is imported (some read
    ``ENGINE_CACHE_DIR`` at import) and undone, its folders removed, when it ends.

    Under pytest-xdist (``make test`` runs two processes) each worker has its own folders
    but all of them share the engine cache the controller made, which they inherit: the
    bundled model is converted once per run, not once per worker.  The cache's file locks
    are what gunicorn's workers sharing a cache rely on too."""
    base = Path(tempfile.mkdtemp(prefix="pytest-session-"))
    _session_folders.append(base)
    for name in _INHERITED:
        _session_env.delenv(name, raising=False)
    folders = dict(_SESSION_FOLDERS)
    if hasattr(config, "workerinput"):  # an xdist worker: the controller's engine cache
        del folders["ENGINE_CACHE_DIR"]
    if getattr(config.option, "numprocesses", None):
        # Two test processes on 2 cores: torch's OpenMP threads, by default, spin while
        # they wait for each other, and a spinning thread takes the core a thread of the
        # other process needs (a 10 s training run took 81 s).  Waiting threads sleep
        # instead; the workers inherit this, and so does every process they start.
        _session_env.setenv("OMP_WAIT_POLICY", "PASSIVE")
    for name, folder in folders.items():
        (base / folder).mkdir()
        _session_env.setenv(name, str(base / folder))


def pytest_unconfigure(config):
    _session_env.undo()
    while _session_folders:
        shutil.rmtree(_session_folders.pop(), ignore_errors=True)


_LONG_TIERS = ("system", "browser", "slow")


def pytest_collection_modifyitems(config, items):
    """Modules with the most server, browser and slow tests first (the order within a
    module stays).  ``make test`` runs two pytest-xdist processes that take whole modules
    (``--dist loadfile``) in this order: the long modules start early and the quick ones
    fill the end, instead of one process finishing a long module alone."""
    weight = Counter(item.path for item in items
                     if any(item.get_closest_marker(mark) for mark in _LONG_TIERS))
    first_seen = {path: n for n, path in enumerate(dict.fromkeys(i.path for i in items))}
    items.sort(key=lambda item: (-weight[item.path], first_seen[item.path]))


@pytest.fixture(autouse=True)
def _own_folders(tmp_path, monkeypatch):
    """Each test's own empty model registry and teach data (apps it creates and servers
    it starts inherit them)."""
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "model-dir"))
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data-dir"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    tiers.current_test = item


@pytest.fixture(autouse=True)
def _children_need_the_system_mark(monkeypatch):
    """A builder child (an upload validated and converted under caps: torch imported
    afresh, 5-30 s), the engine trials' child or a training process makes a test slow:
    ``require_system_mark``, as ``Server`` does.  The real functions run; only the tier
    is checked."""
    from webapp.engines import child, trials
    from webapp.training.jobs import JobQueue

    run_builder, spawn_runner = child.run_builder, JobQueue.spawn_runner
    run_trials = trials.run_child

    def checked_builder(*args, **kwargs):
        require_system_mark("a builder child process")
        return run_builder(*args, **kwargs)

    def checked_trials(*args, **kwargs):
        require_system_mark("the engine trials' child process")
        return run_trials(*args, **kwargs)

    def checked_runner(self, *args, **kwargs):
        require_system_mark("a training process")
        return spawn_runner(self, *args, **kwargs)

    monkeypatch.setattr(child, "run_builder", checked_builder)
    monkeypatch.setattr(trials, "run_child", checked_trials)
    monkeypatch.setattr(JobQueue, "spawn_runner", checked_runner)


@pytest.fixture(scope="session")
def random_resnet18(tmp_path_factory) -> Path:
    return save_random_resnet18(tmp_path_factory.mktemp("weights") / "resnet18-random.pth")


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


@pytest.fixture()
def app(tmp_path):
    """A fresh app with the bundled ImageNet model (no ResNet18 weights on this machine)
    and this test's own empty folders.  Cheap: the converted model comes from the
    session's engine cache; the model loads on the first request that needs it."""
    from webapp import create_app

    return create_app({"TESTING": True, "MODEL_DIR": str(tmp_path / "model-dir"),
                       "DATA_DIR": str(tmp_path / "data-dir")})


@pytest.fixture()
def client(app):
    return app.test_client()


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
    """Model files as people have them (testkit/model_files.py), each made on first use."""
    from testkit.model_files import ModelFiles

    return ModelFiles(tmp_path_factory.mktemp("model-files"))
