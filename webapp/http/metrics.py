"""``GET /metrics`` in the Prometheus text format (prometheus-client).

Under gunicorn every worker process keeps its own numbers; ``gunicorn.conf.py`` points
``PROMETHEUS_MULTIPROC_DIR`` at a directory where each worker writes them to files, and
whichever worker answers ``/metrics`` adds up the files of all of them (prometheus-client's
multiprocess mode), so a scrape sees the whole server, not one worker.  Without that
variable (the development server, the tests' in-process app) the numbers are the
process's own.

What is measured:

* ``http_requests_total{method, endpoint, status}`` and
  ``http_request_duration_seconds{endpoint}``: every request, by its URL rule (never
  the raw path) and its method (one of ``METHODS``, else ``OTHER``), so what clients
  send cannot blow up the number of series.
* ``classifier_stage_seconds{stage}``: where the time of a classification goes:
  ``decode`` (per image), ``preprocess`` and ``inference`` (per batch).
* ``classifier_images_rejected_total{reason}``: uploads refused, by the error code the
  client got (``unreadable_image``, ``too_many_pixels``, ``too_large``, ...).
* ``classifier_model_info{id, name, version, arch, quantization}``: 1 for the model each
  worker serves (a ``pid`` label per worker; 0 for a model it served before).
* ``classifier_uploads_in_progress`` and ``classifier_uploads_refused_total{reason}``:
  the upload slots of ``webapp/http/capacity.py``.

Importing this module creates the metrics once per process (several apps in one process,
as in the tests, share them).  Knows nothing about images or models beyond their info.
"""

from __future__ import annotations

import os
import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from webapp import config
from webapp.http import marks

disable_created_metrics()  # no *_created series: the same output in every mode

bp = Blueprint("metrics", __name__)

# Latency buckets from 1 ms to 30 s: a decode of a tiny PNG to a big batch on a slow CPU.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75,
            1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter("http_requests_total", "HTTP requests answered, by URL rule and status.",
                   ["method", "endpoint", "status"])
REQUEST_SECONDS = Histogram("http_request_duration_seconds",
                            "Time to build the response, by URL rule.", ["endpoint"],
                            buckets=_BUCKETS)
STAGE_SECONDS = Histogram("classifier_stage_seconds",
                          "Time spent per classification stage: decode (per image), "
                          "preprocess and inference (per batch).", ["stage"],
                          buckets=_BUCKETS)
REJECTED = Counter("classifier_images_rejected_total",
                   "Uploaded images refused, by the error code the client got.", ["reason"])
MODEL_INFO = Gauge("classifier_model_info",
                   "1 for the model a worker serves (0 for one it served before).",
                   ["id", "name", "version", "arch", "quantization"],
                   multiprocess_mode="liveall")
UPLOADS_IN_PROGRESS = Gauge("classifier_uploads_in_progress",
                            "Image uploads being handled now (all workers).",
                            multiprocess_mode="livesum")
UPLOADS_REFUSED = Counter("classifier_uploads_refused_total",
                          "Uploads refused before any work: no free upload slot in time "
                          "(busy) or the body arrived too slowly (timeout).", ["reason"])

_served: tuple | None = None  # the labels last set to 1 in MODEL_INFO, in this process


def multiprocess_dir() -> str | None:
    path = config.setting("PROMETHEUS_MULTIPROC_DIR")  # gunicorn.conf.py sets it
    return path if path and os.path.isdir(path) else None


def init_app(app: Flask, holder) -> None:
    """Count and time every request, and follow the model ``holder`` serves (``bp``,
    /metrics, is registered with the other blueprints)."""
    app.before_request(_start_timer)
    app.after_request(_count_response)
    holder.add_listener(model_changed)


@bp.get("/metrics")
@marks.mark(marks.NO_STORE)
def metrics_endpoint():
    path = multiprocess_dir()
    if path:
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)  # has charset


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _endpoint() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


# The methods counted by name; any other (a client may send any token as its method) is
# counted as OTHER, so the number of series stays bounded whatever clients send.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _count_response(response):
    endpoint = _endpoint()
    method = request.method if request.method in METHODS else "OTHER"
    REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
    return response


def observe_classification(decode_ms: list[float], timings_ms: dict) -> None:
    """One classification: decode times per image, preprocess/inference per batch (ms)."""
    for ms in decode_ms:
        STAGE_SECONDS.labels("decode").observe(ms / 1000)
    for stage in ("preprocess", "inference"):
        if stage in timings_ms:
            STAGE_SECONDS.labels(stage).observe(timings_ms[stage] / 1000)


def image_rejected(reason: str) -> None:
    REJECTED.labels(reason).inc()


def model_changed(classifier) -> None:
    """Called by the model holder whenever this process starts serving another model."""
    global _served
    info = classifier.info
    labels = tuple(str(info.get(key) or "") for key in
                   ("id", "name", "version", "arch", "quantization"))
    if labels == _served:
        return
    if _served is not None:
        MODEL_INFO.labels(*_served).set(0)
    MODEL_INFO.labels(*labels).set(1)
    _served = labels

