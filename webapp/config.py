"""One configuration object, every setting read from the environment.

``SETTINGS`` is the single list of what can be set; the settings table in docs/settings.md
is checked against it by the tests.  ``Config.from_env()`` turns the environment into the
dict Flask keeps in ``app.config``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names it."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={raw!r}: use 1/0, true/false, yes/no or on/off")


def _int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value}: must be between {low} and {high}")
    return value


def _float(name: str, raw: str, low: float, high: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value}: must be between {low} and {high}")
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str
    kind: str = "str"  # str | bool | int | float | path | choice
    low: float = 0
    high: float = 0
    choices: tuple[str, ...] = ()

    def parse(self, raw: str | None):
        raw = self.default if raw is None else raw
        if self.kind == "bool":
            return _bool(self.name, raw)
        if self.kind == "int":
            return _int(self.name, raw, int(self.low), int(self.high))
        if self.kind == "float":
            return _float(self.name, raw, self.low, self.high)
        if self.kind == "choice":
            value = raw.strip().lower()
            if value not in self.choices:
                raise ConfigError(
                    f"{self.name}={raw!r}: use one of {', '.join(self.choices)}"
                )
            return value
        if self.kind == "path":
            return str(Path(raw).expanduser()) if raw else ""
        return raw


SETTINGS: tuple[Setting, ...] = (
    Setting("MODEL_WEIGHTS", "", "Explicit weights file for the built-in model: a bare "
            "torchvision ResNet18 state_dict or a checkpoint (format v1). A file that does "
            "not fit is a startup error.", "path"),
    Setting("ALLOW_DOWNLOAD", "0", "Let the server download ResNet18's weights at startup "
            "when they are not cached (otherwise run `python -m model_loader download`).",
            "bool"),
    Setting("QUANTIZE", "auto", "Numeric precision: `auto` (decided per model and machine by "
            "measuring, once, cached: fp32, bf16 and int8 on each engine ENGINE allows, "
            "each built, run and compared with fp32 on the model's own validation images or "
            "the calibration photos; the fastest that agrees on INT8_MIN_AGREEMENT of them "
            "and moves the probabilities by at most PRECISION_MAX_SCORE_CHANGE wins, a "
            "reduced precision only when clearly faster than fp32; a new model is served in "
            "fp32 while a child process measures; torch: "
            "fp32), `none` (fp32), `bf16` (OpenVINO; bfloat16 where the CPU computes it, "
            "else fp32), `static` (int8 weights and activations, calibrated, always) or "
            "`dynamic` (torch's int8 for the Linear layers only).", "choice",
            choices=("auto", "none", "bf16", "dynamic", "static")),
    Setting("INT8_MIN_AGREEMENT", "0.98", "QUANTIZE=auto: the share of guard images on "
            "which a faster precision (int8, bf16) must give fp32's top-1 to be chosen.",
            "float", 0.5, 1.0),
    Setting("PRECISION_MAX_SCORE_CHANGE", "0.01", "QUANTIZE=auto: how far a faster "
            "precision (int8, bf16) may move any class's probability, compared with fp32, "
            "on any guard image, to be chosen.",
            "float", 0.0, 1.0),
    Setting("ENGINE", "auto", "What runs the model: `auto` (OpenVINO or ONNX Runtime, "
            "whichever is faster for the model on this machine, measured with QUANTIZE's "
            "precisions), `openvino`, `onnxruntime` or `torch` (docs/speed.md has the "
            "measurements).", "choice", choices=("auto", "torch", "openvino", "onnxruntime")),
    Setting("AUTO_HANDICAP_MS", "", "ENGINE=auto / QUANTIZE=auto: milliseconds added to each "
            "timed pass of some candidates, as `engine:precision=ms` pairs separated by "
            "commas (e.g. `onnxruntime:int8=3`), to steer the choice away from them (or to "
            "see that it follows the measurement); empty = none."),
    Setting("ENGINE_STREAMS", "dual", "How OpenVINO spreads a worker's threads: `dual` "
            "compiles the model twice, one stream on every thread for a request alone "
            "(lowest latency) and one single-threaded stream per thread while several are "
            "in flight (most throughput); `latency` compiles it once, one stream on every "
            "thread (less memory).", "choice", choices=("dual", "latency")),
    Setting("ENGINE_CACHE_DIR", "", "Where converted models (ONNX, int8) are kept, keyed by "
            "the weights' sha256, so a restart reuses them; empty = "
            "~/.cache/offline-classifier/engines.", "path"),
    Setting("ENGINE_CACHE_SEED", "", "A read-only engine cache to start from (the Docker "
            "image holds one, made when it was built): at server start, what ENGINE_CACHE_DIR "
            "lacks is copied from it, so a fresh volume serves in seconds; empty = none.",
            "path"),
    Setting("CALIBRATION_DIR", "", "Folder of images that static int8 quantization is "
            "calibrated on (best: photos like the ones the model will see); empty = the "
            "photos in calibration/ that ship with the project.", "path"),
    Setting("MALLOC_MMAP_THRESHOLD_", "", "glibc's own setting (bytes): blocks at least this "
            "big are mapped and returned to the system when freed. Empty = gunicorn fixes it "
            "at 1 MiB for OpenVINO and ONNX Runtime (a big image's memory goes back to the "
            "system) and leaves glibc's sliding default with ENGINE=torch."),
    Setting("PILLOW_BLOCKS_MAX", "4", "Pillow's own setting: memory blocks (up to 16 MB each) "
            "a process keeps for its next images instead of returning them to the system. "
            "Reused, they cost no page faults: a 12-megapixel JPEG decodes about a quarter "
            "faster; a worker keeps at most this many × 16 MB for it; 0 = none.",
            "int", 0, 64),
    Setting("MALLOC_ARENA_MAX", "2", "glibc malloc arenas per worker process (set with "
            "mallopt when the worker starts): fewer arenas keep a threaded worker's memory "
            "from growing; 0 = glibc's default (8 × cores).", "int", 0, 64),
    Setting("TORCH_THREADS", "0", "Engine threads per worker; 0 = 2 with OpenVINO's dual "
            "streams (the default), else the CPUs available to the process divided by the "
            "number of workers.", "int", 0, 256),
    Setting("WEB_CONCURRENCY", "0", "gunicorn worker processes; 0 = half the available "
            "CPUs, at least 2 with OpenVINO's dual streams on 2 or more CPUs (measured: "
            "docs/speed.md), else at least 1.", "int", 0, 64),
    Setting("HTTP_THREADS", "4", "Connections each gunicorn worker accepts at once "
            "(uploads are received in parallel, inference runs one batch at a time).",
            "int", 1, 64),
    Setting("MAX_UPLOAD_MB", "20", "Largest request body in megabytes (413 above it).",
            "float", 0.01, 1024),
    Setting("MAX_IMAGE_PIXELS", "50000000", "Largest image in pixels (width × height), "
            "checked from the file header before decoding (413 above it).", "int",
            1, 1_000_000_000),
    Setting("DECODE_TIMEOUT", "10", "Seconds the images of one request may take to "
            "decode, all of them together (checked as the decoder reads each file); "
            "longer: 422 too_slow_to_decode. Files built to be slow (padding, thousands of "
            "JPEG scans) are refused long before.", "float", 0.5, 600),
    Setting("DECODE_GAP", "6", "A large photo is decoded at a reduced scale (a JPEG at "
            "1/2, 1/4 or 1/8; other formats box-reduced right after decoding) only while "
            "its shorter side stays at least this many times the model's resize size. 6 "
            "keeps the answers torchvision's (a photo of up to about 12 megapixels is "
            "decoded in full); 2 decodes a 12-megapixel JPEG about 3 times faster and may "
            "move a probability by a few hundredths.", "int", 1, 16),
    Setting("MAX_IMAGES_PER_REQUEST", "16", "Most images one /predict request may carry.",
            "int", 1, 256),
    Setting("MAX_REQUEST_PIXELS", "100000000", "Most pixels the images of one request may "
            "have to decode, all of them together, counted from their headers before any "
            "is decoded (a JPEG at the reduced scale it is decoded at); more: 413 "
            "too_many_pixels.", "int", 1, 10_000_000_000),
    Setting("SECRET_KEY", "", "Key that signs session cookies (the admin login). Empty = "
            "a random key created once in MODEL_DIR/secret_key and shared by every worker "
            "and every server using that MODEL_DIR; set it when replicas do not share one."),
    Setting("MODEL_DIR", str(PROJECT_ROOT / "instance" / "models"), "The model registry: "
            "uploaded checkpoints, the active-model pointer and its history.", "path"),
    Setting("RUN_DIR", "", "Where each server process notes which model it serves (what "
            "activate's `wait` option and `flask models activate --wait` read); empty = a "
            "folder in the temporary directory named after MODEL_DIR.", "path"),
    Setting("ADMIN_TOKEN", "", "Password for /admin and bearer token for /admin/api/*. "
            "Empty = the admin area is disabled."),
    Setting("MAX_CHECKPOINT_MB", "500", "Largest checkpoint upload in megabytes (413 "
            "above it).", "float", 1, 100_000),
    Setting("ADMIN_LOGIN_LIMIT", "10 per minute", "Failed admin logins (form or bearer "
            "token) allowed per client address and worker process before 429."),
    Setting("HOST", "127.0.0.1", "Address to listen on (0.0.0.0 for every interface); "
            "with CLASSROOM=1 and HOST unset, 0.0.0.0."),
    Setting("CLASSROOM", "0", "Classroom network mode: listen on the network and serve "
            "HTTPS with a certificate of a local certificate authority made at the first "
            "start (and again when the machine's addresses change) in MODEL_DIR/tls, so "
            "phones get their cameras; the kiosk and admin pages show the address as a QR "
            "code.", "bool"),
    Setting("PORT", "5000", "Port to listen on.", "int", 1, 65535),
    Setting("GUNICORN_BIND", "", "gunicorn only: the address gunicorn listens on, as its "
            "--bind takes it (`unix:/run/classifier.sock`, `[::]:8000`); empty = HOST:PORT."),
    Setting("LOG_LEVEL", "info", "Logging level: debug, info, warning or error.", "choice",
            choices=("debug", "info", "warning", "error")),
    Setting("TORCH_HOME", "", "torch's own setting: the torchvision weights cache is "
            "$TORCH_HOME/hub/checkpoints; empty = $XDG_CACHE_HOME/torch.", "path"),
    Setting("XDG_CACHE_HOME", "", "The freedesktop cache folder: without ENGINE_CACHE_DIR "
            "or TORCH_HOME, the engine cache and torch's weights cache are under it; empty "
            "= ~/.cache.", "path"),
    Setting("ONEDNN_MAX_CPU_ISA", "", "oneDNN's own setting, which OpenVINO and torch follow: "
            "the newest CPU instructions they may use (e.g. AVX2, to behave as on a common PC "
            "without AVX-512 or AMX). Set, ENGINE=auto tries only OpenVINO (ONNX Runtime "
            "ignores the cap). Empty = every instruction the CPU has."),
    Setting("KIOSK_IDLE_SECONDS", "60", "Kiosk: seconds without a touch, once the camera "
            "no longer sees what was answered, before it goes back to its start screen; "
            "0 = never.", "int", 0, 86400),
    Setting("KIOSK_AUTO_CAPTURE_SECONDS", "0", "Kiosk: take a picture by itself every N "
            "seconds while the camera is live; 0 = only when the button is pressed.",
            "int", 0, 3600),
    Setting("KIOSK_BARS", "3", "Kiosk: how many answers (bars) to show.", "int", 1, 5),
    Setting("KIOSK_EXPLAIN", "1", "Kiosk: offer the \"How does it see it?\" view.", "bool"),
    Setting("KIOSK_LIVE", "1", "Kiosk: live mode, the bars follow the camera (small frames "
            "to /predict, one at a time); 0 = only on the button.", "bool"),
    Setting("DEFAULT_LANGUAGE", "", "Language of every page, class name and API message "
            "for everyone (a locale with a catalog in translations/, e.g. zh_CN), until a "
            "teacher changes it in the admin's kiosk settings; empty = each browser's "
            "Accept-Language. A visitor's own choice on the page still wins."),
    Setting("KIOSK_LANGUAGE", "", "Retired (the kiosk's label language): taken as "
            "DEFAULT_LANGUAGE when that is empty, with a warning in the log."),
    Setting("KIOSK_SETTINGS_FILE", "", "JSON file keeping the teacher's kiosk settings "
            "(they override the KIOSK_* defaults); empty = instance/kiosk.json.", "path"),
    Setting("DATA_DIR", str(PROJECT_ROOT / "instance" / "datasets"), "Teach it live: the "
            "datasets (one folder per dataset, one folder per class, JPEG files) and the "
            "training jobs' state. Never holds /predict traffic.", "path"),
    Setting("JOB_THREADS", "0", "Torch threads of each background training process (it "
            "also runs at nice 10); 0 = half the available CPUs shared by JOB_SLOTS (at "
            "least 1), so serving keeps the rest.", "int", 0, 256),
    Setting("JOB_SLOTS", "0", "How many Teach training jobs run at once (more wait in a "
            "queue that tells each group when its turn comes); 0 = 1 below 4 CPUs, else 2.",
            "int", 0, 16),
    Setting("JOB_RUNNER", "spawn", "Who starts the training process: `spawn` = the server, "
            "when a job is queued (one machine, docker compose); `external` = never the "
            "server: a long-running `python -m webapp.jobs watch` of its own trains the "
            "queued jobs (the Kubernetes runner Deployment, so no serving pod ever trains).",
            "choice", choices=("spawn", "external")),
    Setting("MAX_DATASET_IMAGES", "2000", "Most images one dataset may hold (captures, "
            "uploads and zip imports).", "int", 10, 1_000_000),
    Setting("MAX_DATASET_MB", "200", "Largest dataset zip import in megabytes (413 above "
            "it).", "float", 1, 100_000),
    Setting("MAX_CONCURRENT_UPLOADS", "2", "Image uploads one worker handles at once "
            "(bounds its memory); more wait up to UPLOAD_QUEUE_SECONDS, then get 503.",
            "int", 1, 256),
    Setting("UPLOAD_QUEUE_SECONDS", "10", "How long an upload waits for a free slot "
            "before the answer is 503 server_busy with Retry-After.", "float", 0, 600),
    Setting("REQUEST_TIMEOUT", "30", "Seconds a client has to send a request from its "
            "first byte, plus a second for every 16 KB of body it sends (a slow link keeps "
            "its time, a client dripping bytes does not); also the longest an upload may "
            "stall. 408 after that.",
            "float", 1, 3600),
    Setting("HEADER_TIMEOUT", "10", "Seconds a client has to send a request's line and "
            "headers, from its connection (or its first byte on a kept-alive one); bytes "
            "trickled meanwhile do not extend it. A connection that sent nothing is closed, "
            "one that sent part of a request gets 408.", "float", 1, 3600),
    Setting("MAX_CONNECTIONS_PER_CLIENT", "64", "Connections one client address may hold "
            "open in each worker. At that share a new one takes the place of the "
            "address's oldest idle kept-alive connection; when none is idle it is "
            "answered 503 and closed (over TLS, just closed). 0 = no limit. Not "
            "applied behind a reverse proxy (TRUSTED_PROXIES > 0): every connection "
            "comes from the proxy there, which limits its clients itself.", "int", 0, 100_000),
    Setting("MAX_REQUESTS", "10000", "gunicorn restarts a worker after this many requests "
            "(plus a random jitter), so a slow leak cannot grow forever; 0 = never.",
            "int", 0, 100_000_000),
    Setting("MAX_REQUESTS_JITTER", "1000", "Random extra requests (0..N) per worker before "
            "its restart, so workers do not restart together.", "int", 0, 100_000_000),
    Setting("WORKER_TIMEOUT", "60", "gunicorn kills and replaces a worker that has not "
            "reported alive for this many seconds.", "int", 5, 3600),
    Setting("TRUSTED_PROXIES", "0", "Reverse proxies in front of the server (nginx = 1): "
            "the client address is taken from X-Forwarded-For that many hops back. 0 = "
            "ignore it (clients could forge it).", "int", 0, 5),
    Setting("KIOSK_FRAME_ANCESTORS", "", "Sites allowed to show /kiosk in a frame (CSP "
            "frame-ancestors sources, e.g. 'self' https://signage.example); empty = none. "
            "No other page can be framed."),
    Setting("PROMETHEUS_MULTIPROC_DIR", "", "Where gunicorn workers keep their metrics "
            "for /metrics to add up; empty = a fresh temporary folder per server start.",
            "path"),
)


_BY_NAME = {s.name: s for s in SETTINGS}


def given(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The raw value of the setting ``name`` (a name of the table: ``KeyError`` for any
    other), or None when it is not set."""
    _BY_NAME[name]  # noqa: B018 - only the table's settings are read
    return (os.environ if environ is None else environ).get(name)


def setting(name: str, environ: Mapping[str, str] | None = None):
    """The setting ``name`` read from the environment now and checked as the server
    checks it (``ConfigError`` when out of range): for code that runs without the app
    (builder and training children, command lines, gunicorn.conf.py) and for settings
    another process sets while this one runs (``PROMETHEUS_MULTIPROC_DIR``)."""
    return _BY_NAME[name].parse(given(name, environ))


def choices(name: str) -> tuple[str, ...]:
    """The values the setting ``name`` takes (a ``choice`` setting of the table)."""
    return _BY_NAME[name].choices


def combination_problem(engine: str, quantize: str) -> str | None:
    """Why ``ENGINE`` and ``QUANTIZE`` cannot go together, or None (the one rule: the
    server's settings and an engine asked for in code are both checked with it)."""
    if quantize == "dynamic" and engine != "torch":
        return (f"QUANTIZE=dynamic is torch's dynamic quantization and needs ENGINE=torch; "
                f"with ENGINE={engine} use QUANTIZE=static (int8) or none (fp32)")
    if quantize == "bf16" and engine not in ("openvino", "auto"):
        return (f"QUANTIZE=bf16 needs ENGINE=openvino; with ENGINE={engine} use "
                "QUANTIZE=none (fp32) or static (int8)"
                + (" or dynamic (torch's int8)" if engine == "torch" else ""))
    return None


def available_cpus() -> int:
    """CPUs this process may use: affinity mask and cgroup v2/v1 quota, whichever is less."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, int(quota)))
    return max(1, count)


def _cgroup_cpu_quota() -> float | None:
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text("utf-8").split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text("utf-8"))
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text("utf-8"))
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def plan_concurrency(workers: int = 0, threads: int = 0, cpus: int | None = None, *,
                     dual: bool = False):
    """(workers, engine threads per worker); 0 means "choose", explicit values are
    respected as given.

    Two threads per forward pass halve a request's latency (ResNet18 bf16 on OpenVINO:
    7.5 -> 3.9 ms).  Without ``dual``: workers = half the CPUs (at least 1), threads =
    CPUs // workers, so workers x threads never exceeds the CPUs.

    With ``dual`` (OpenVINO's two compilations, ``ENGINE_STREAMS=dual``, the default) and
    2 CPUs or more: at least two workers of two threads.  Measured on 2 cores
    (bench/concurrency.py, two quiet runs, docs/speed.md): 2 workers x 2 threads kept a
    photo alone within 6 % of 1 x 2's latency and gave the most 8-client throughput
    (1.04-1.12x 1 x 2's, above 2 x 1's), where 1 worker x 2 threads fell 4-12 % short
    of 2 x 1.  The second worker decodes and preprocesses (Python) while the first
    runs the network; a request alone still gets both cores."""
    cpus = cpus or available_cpus()
    if dual and cpus >= 2:
        workers = workers or max(2, cpus // 2)
        return workers, threads or max(2, cpus // workers)
    workers = workers or max(1, cpus // 2)
    threads = threads or max(1, cpus // workers)
    return workers, threads


def dual_streams(values: dict) -> bool:
    """Whether the engine compiles a model twice (``plan_concurrency``'s ``dual``)."""
    return values["ENGINE"] in ("openvino", "auto") and values["ENGINE_STREAMS"] == "dual"


# Settings that are no longer read, and what replaced them: set, they stop the server
# with this message rather than being silently ignored.
RETIRED = {
    "TRANSLATIONS_DIR": "TRANSLATIONS_DIR is no longer read: class names are no longer "
    "translated by label files keyed by their English name. The built-in model's classes "
    "ship in several languages (translations/imagenet/), a teacher corrects one on the "
    "admin page \"Class names\", and the language of the pages is DEFAULT_LANGUAGE or "
    "the admin's settings (docs/translating.md). Remove TRANSLATIONS_DIR.",
}


class Config:
    """Builds the Flask config dict from the environment (or a given mapping)."""

    @staticmethod
    def from_env(environ: dict | None = None) -> dict:
        environ = os.environ if environ is None else environ
        for name, message in RETIRED.items():
            if environ.get(name):
                raise ConfigError(message)
        values = {}
        for setting in SETTINGS:
            values[setting.name] = setting.parse(environ.get(setting.name))
        # Torch threads for this process: with 0, the CPUs shared among the workers.
        _, values["TORCH_THREADS"] = plan_concurrency(
            values["WEB_CONCURRENCY"] or 1, values["TORCH_THREADS"], dual=dual_streams(values)
        )
        problem = combination_problem(values["ENGINE"], values["QUANTIZE"])
        if problem:
            raise ConfigError(problem)
        if values["CLASSROOM"] and not environ.get("HOST"):
            values["HOST"] = "0.0.0.0"  # phones on the classroom network must reach it
        values["MAX_CONTENT_LENGTH"] = int(values["MAX_UPLOAD_MB"] * 1024 * 1024)
        values["BOOTSTRAP_SERVE_LOCAL"] = True  # kiosks are offline: no CDN
        if not values["SECRET_KEY"]:
            # Replaced by the key kept in MODEL_DIR when the app starts (webapp.views.admin).
            values["SECRET_KEY"] = values["SECRET_KEY_GENERATED"] = os.urandom(32).hex()
        return values
