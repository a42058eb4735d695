"""gunicorn settings: ``gunicorn app:app`` picks this file up from the working directory.

Workers and engine threads come from the CPUs this process may use (affinity mask and
cgroup quota): two workers of two threads on 2 CPUs with OpenVINO's dual streams, half the
CPUs as workers and the rest as threads otherwise (``plan_concurrency``, measured).
WEB_CONCURRENCY and TORCH_THREADS override the choice.  The model is loaded in each
worker after the fork (no preload: forking after torch/OpenVINO started their thread
pools can hang), and before the worker accepts its first request.
"""

import os
import shutil
import sys
import tempfile

from webapp.config import Config, dual_streams, given, plan_concurrency, setting

_settings = Config.from_env()
workers, _threads = plan_concurrency(
    _settings["WEB_CONCURRENCY"], setting("TORCH_THREADS"),
    dual=dual_streams(_settings),
)
# Workers read these when they build the app.
os.environ["WEB_CONCURRENCY"] = str(workers)
os.environ["TORCH_THREADS"] = str(_threads)

bind = _settings["GUNICORN_BIND"] or f"{_settings['HOST']}:{_settings['PORT']}"
# Classroom network mode (webapp/classroom.py): HTTPS with the local CA's certificate for
# this machine's addresses, made or renewed here, before gunicorn listens.
_classroom_notes = []
if _settings["CLASSROOM"]:
    from webapp import classroom

    try:
        _tls, _classroom_notes = classroom.prepare(_settings)
    except OSError as exc:
        sys.exit(f"classroom mode: the certificates cannot be kept in "
                 f"{classroom.tls_folder(_settings)}: {exc}")
    certfile, keyfile = str(_tls.cert), str(_tls.key)
# gthread, but each request is read in the worker's event loop before a thread gets it:
# slow clients hold no thread and no upload slot (webapp/http/worker.py, docs/security.md).
worker_class = "webapp.http.worker.BufferingWorker"
threads = _settings["HTTP_THREADS"]
preload_app = False
control_socket_disable = True  # two servers on one machine would share one socket path
timeout = _settings["WORKER_TIMEOUT"]
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = _settings["LOG_LEVEL"]

# Operating it (docs/operating.md): JSON access log lines, worker recycling, request limits.
logger_class = "webapp.http.accesslog.JsonAccessLogger"
max_requests = _settings["MAX_REQUESTS"]
max_requests_jitter = _settings["MAX_REQUESTS_JITTER"]
limit_request_line = 4094  # gunicorn's defaults, stated: URL, header count and size
limit_request_fields = 100
limit_request_field_size = 8190

# /metrics (webapp/http/metrics.py): each worker writes its numbers to files in this folder,
# the worker that answers a scrape adds up all of them.  prometheus-client reads the
# variable when the workers import it, after the fork.
_metrics_dir = _settings["PROMETHEUS_MULTIPROC_DIR"]
_metrics_dir_is_ours = not _metrics_dir
if _metrics_dir_is_ours:
    _metrics_dir = tempfile.mkdtemp(prefix="prometheus-multiproc-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir


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
    """Load the model now, and run it once, so the first request does not wait for it
    (and no two threads run a first inference at once: webapp/engines/runtime.py).  A
    worker whose model cannot be loaded -- whatever the error -- logs the reason and
    exits (MODEL_LOAD_FAILED) instead of answering errors; the master starts another and
    stops the server after MODEL_LOAD_ATTEMPTS failures in a row (child_exit).

    The first start on a machine converts the model in a child process (tens of seconds
    on a slow machine); the worker keeps telling the arbiter it is alive meanwhile, so
    WORKER_TIMEOUT does not kill it for being busy."""
    import threading

    from webapp import current

    failure = []

    def load():
        try:
            with worker.wsgi.app_context():
                current.holder().warm_up()
        except Exception as exc:  # noqa: BLE001 - whatever it is, the worker cannot serve
            failure.append(exc)

    loader = threading.Thread(target=load, name="model-warm-up", daemon=True)
    loader.start()
    while loader.is_alive():
        worker.notify()
        loader.join(timeout=1.0)
    if failure:
        reason = str(failure[0]).strip() or type(failure[0]).__name__
        worker.log.error("the model could not be loaded: %s", reason)
        _write_boot_state(f"{os.getpid()}.failed", reason)
        sys.exit(MODEL_LOAD_FAILED)
    _write_boot_state("loaded", str(os.getpid()))


# A worker that could not load its model exits with this code and leaves its reason in
# _boot_dir; the master starts another, and stops after this many failures in a row
# (a worker that loads its model in between starts the count again).
MODEL_LOAD_FAILED = 5
MODEL_LOAD_ATTEMPTS = 3
_boot_dir = tempfile.mkdtemp(prefix="gunicorn-boot-")
_load_failures = []  # the reasons, in the master, since the last successful load


def _write_boot_state(name, text):
    try:
        with open(os.path.join(_boot_dir, name), "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError:
        pass


def _read_boot_state(name):
    path = os.path.join(_boot_dir, name)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return None
    os.unlink(path)
    return text


def when_ready(server):
    server.log.info(
        "serving with %d worker(s) x %s torch thread(s), %d HTTP threads each "
        "(ENGINE=%s QUANTIZE=%s)", workers, _threads, threads, _settings["ENGINE"],
        _settings["QUANTIZE"],
    )
    for level, message in _classroom_notes:
        server.log.log(level, message)


def on_starting(server):
    """Numbers of an earlier run must not count in this one: empty the metrics folder.
    Give memory back: see _return_big_blocks_to_the_os.  And start from the engine cache
    made ahead of time, if there is one (_seed_engine_cache)."""
    os.makedirs(_metrics_dir, exist_ok=True)
    for name in os.listdir(_metrics_dir):
        if name.endswith(".db"):
            os.unlink(os.path.join(_metrics_dir, name))
    _return_big_blocks_to_the_os(server)
    _seed_engine_cache(server)


def _seed_engine_cache(server):
    """ENGINE_CACHE_SEED (the Docker image's /opt/engines, the built-in model converted at
    build time): what the engine cache lacks is copied from it before the workers start,
    so a fresh volume serves in seconds instead of converting the model first."""
    seed = _settings["ENGINE_CACHE_SEED"]
    if not seed:
        return
    from webapp.engines.artefacts import ArtefactCache, default_cache_dir

    root = _settings["ENGINE_CACHE_DIR"] or default_cache_dir()
    try:
        copied = ArtefactCache(root).seed_from(seed)
    except OSError as exc:  # a full or read-only volume: the workers convert as usual
        server.log.warning("could not copy the engine cache from %s: %s", seed, exc)
        return
    if copied:
        server.log.info("engine cache: %d file(s) copied from %s", copied, seed)


def _return_big_blocks_to_the_os(server):
    """glibc serves blocks over 128 KB with mmap and unmaps them when freed, but raises
    that threshold (up to 32 MB) each time such a block is freed; from then on Pillow's
    16 MB image blocks come from the heap and stay there.  A worker that decoded one
    50-megapixel PNG then kept ~400 MB for good (measured: RSS 737 -> 1376 MB after five
    big images; with a fixed 1 MB threshold it returns to 757 MB after each).  Set in the
    master, inherited by every worker it forks; MALLOC_MMAP_THRESHOLD_ in the
    environment wins.

    Not with ENGINE=torch: torch allocates every activation of a forward pass with
    malloc (ResNet18's are 0.8-3 MB), so with a fixed 1 MB threshold each pass mapped
    and unmapped ~60 MB: 16,000 page faults per request instead of 560, and a pass took
    several times as long in the server as outside it (bench/run.py's torch path).
    OpenVINO and ONNX Runtime allocate their buffers once, so they do not care."""
    if given("MALLOC_MMAP_THRESHOLD_") is not None:
        return
    if _settings["ENGINE"] == "torch":
        server.log.info("ENGINE=torch: malloc's mmap threshold left to glibc")
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD, fixed
    except (OSError, AttributeError):  # not glibc
        server.log.info("not glibc: malloc's mmap threshold left as it is")


def child_exit(server, worker):
    """A worker is gone (recycled after max_requests, killed, crashed): its per-worker
    gauges go with it; its counters stay in the totals.  One that could not load its
    model counts towards MODEL_LOAD_ATTEMPTS: after that many failures in a row the
    server stops, with the reason, instead of starting workers that cannot serve."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, _metrics_dir)
    if _read_boot_state("loaded") is not None:
        _load_failures.clear()
    reason = _read_boot_state(f"{worker.pid}.failed")
    if reason is None:
        return
    _load_failures.append(reason)
    if len(_load_failures) < MODEL_LOAD_ATTEMPTS:
        server.log.error("worker %s could not load the model (%d of %d attempts); starting "
                         "another: %s", worker.pid, len(_load_failures), MODEL_LOAD_ATTEMPTS,
                         reason)
        return
    from gunicorn.errors import HaltServer

    message = (f"The model could not be loaded {len(_load_failures)} times in a row, so the "
               f"server stops. The last reason: {reason}")
    server.log.error("%s", message)
    raise HaltServer(message, MODEL_LOAD_FAILED)


def on_exit(server):
    if _metrics_dir_is_ours:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
    shutil.rmtree(_boot_dir, ignore_errors=True)
