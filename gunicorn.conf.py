"""gunicorn settings: ``gunicorn app:app`` picks this file up from the working directory.

Workers × engine threads never exceed the CPUs this process may use (affinity mask and
cgroup quota); the split depends on ENGINE (``plan_concurrency``).  WEB_CONCURRENCY and
TORCH_THREADS override the choice.  The model is loaded in each worker after the fork
(no preload: forking after torch/OpenVINO started their thread pools can hang), and
before the worker accepts its first request.
"""

import os
import sys

from webapp.config import Config, plan_concurrency

_settings = Config.from_env()
workers, _threads = plan_concurrency(
    _settings["WEB_CONCURRENCY"], int(os.environ.get("TORCH_THREADS", "0") or 0),
    engine=_settings["ENGINE"],
)
# Workers read these when they build the app.
os.environ["WEB_CONCURRENCY"] = str(workers)
os.environ["TORCH_THREADS"] = str(_threads)

bind = os.environ.get("GUNICORN_BIND") or f"{_settings['HOST']}:{_settings['PORT']}"
worker_class = "gthread"
threads = _settings["HTTP_THREADS"]
preload_app = False
control_socket_disable = True  # two servers on one machine would share one socket path
timeout = 60
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = _settings["LOG_LEVEL"]


def post_fork(server, worker):
    """Cap glibc's malloc arenas in the worker before its threads start (glibc reads the
    MALLOC_ARENA_MAX variable only when a process starts; a forked worker does not start
    again, so it is set with mallopt).  Threads that each get an arena of their own make
    a worker's memory grow with every big image."""
    arenas = _settings["MALLOC_ARENA_MAX"]
    if arenas:
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
        except (OSError, AttributeError):  # not glibc
            pass


def post_worker_init(worker):
    """Load the model now, so the first request does not wait for it.  A model that
    cannot be loaded stops the server with its reason instead of serving errors."""
    from model_loader import ModelLoadError

    try:
        worker.wsgi.extensions["model_holder"].warm_up()
    except ModelLoadError as exc:
        worker.log.error("the model could not be loaded: %s", exc)
        sys.exit(3)  # gunicorn's WORKER_BOOT_ERROR: the arbiter stops instead of looping


def when_ready(server):
    server.log.info(
        "serving with %d worker(s) x %s torch thread(s), %d HTTP threads each "
        "(ENGINE=%s QUANTIZE=%s)", workers, _threads, threads, _settings["ENGINE"],
        _settings["QUANTIZE"],
    )
