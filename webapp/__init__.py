"""The Flask application factory.  ``create_app()`` is cheap: it reads the settings, makes
the objects the app shares (``webapp.current``) and registers the blueprints and
extensions -- all of it here, in the order it happens.  The model is loaded once per
process, after gunicorn forks (``gunicorn.conf.py`` warms it up before the worker takes
requests), from the engine cache: a web worker never imports torch (``webapp.engines``).

Where things live: ``views/`` (the blueprints: api, ui, kiosk, admin/...), ``http/``
(errors, request bodies, upload slots, security headers, metrics, the access log, the
gunicorn worker), ``stores/`` (durable files, the model registry, the Teach datasets, the
kiosk settings), ``checkpoints/`` (reading model files), ``serving/`` and ``engines/`` (the
model a process serves, and running it), ``training/`` (the fine-tuning recipe and the job
queue), and the commands ``finetune`` and ``jobs``.  docs/architecture.md has the map."""

from __future__ import annotations

import logging
import os
import sys

from flask import Flask

from webapp.config import PROJECT_ROOT, Config, available_cpus

# No telemetry, in any process of the product (the server, its builder children, the
# training runner, the commands: each imports this package before OpenVINO or ONNX
# Runtime, and the processes they start inherit the environment); docs/operating.md#no-
# telemetry.  `import openvino` loads OpenVINO's model converter, which reports usage to
# Google Analytics and writes a client id and counters to ~/intel/ unless a consent file
# in the home folder says no; without the openvino_telemetry package it uses its own
# do-nothing stub, so that package cannot be imported here.  ONNX Runtime's telemetry
# (a device id in ~/.cache/Microsoft/DeveloperTools) is off with its own switch.
sys.modules["openvino_telemetry"] = None
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

__all__ = ["create_app"]


# One long function on purpose: every object, extension and blueprint is wired here, in
# one place a newcomer reads top to bottom (no init_app that attaches more behind it).
def create_app(test_config: dict | None = None) -> Flask:
    """The application: every shared object, extension and blueprint is wired here, in
    one place a newcomer reads top to bottom (hence its length: each step is a few lines
    with the reason beside it; splitting it would hide the order they depend on)."""
    app = Flask(
        __name__,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    app.config.from_mapping(Config.from_env())
    if test_config:
        app.config.from_mapping(test_config)
    config = app.config
    _configure_logging(config["LOG_LEVEL"])

    from flask_bootstrap import Bootstrap5
    from flask_wtf.csrf import CSRFProtect
    from threadpoolctl import threadpool_limits

    # The app's modules are imported when an app is built, not with this package: every
    # process imports the package (gunicorn's master, the builder and trials children,
    # the training runner), and only the server's workers and the flask commands build one.
    from webapp import current, i18n
    from webapp.engines import EngineSettings
    from webapp.http import capacity, errors, metrics, security, timings, uploads
    from webapp.serving.holder import ModelHolder
    from webapp.serving.workers import WorkerReports, run_dir
    from webapp.stores.datasets import DatasetStore
    from webapp.stores.registry import STALE_TMP_SECONDS, Registry
    from webapp.training.jobs import JobQueue, plan_jobs
    from webapp.views import admin, api, classroom, kiosk, openapi, ui, v2
    from webapp.views.admin import (  # noqa: F401 - their routes
        auth,
        cli,
        downloads,
        kiosk_settings,
        labels,
        models,
        teach,
    )

    # The shared objects: the model registry (MODEL_DIR), the model this process serves
    # (it follows the registry's active pointer), the teach datasets and training jobs
    # (DATA_DIR).
    registry = Registry(config["MODEL_DIR"], EngineSettings.from_config(config))
    holder = ModelHolder(config, registry)
    # Each process notes the model it serves, for activate's "wait" option.
    workers = WorkerReports(run_dir(config))
    holder.add_listener(lambda classifier: workers.report(classifier.model_id))
    slots, threads = plan_jobs(config["JOB_SLOTS"], config["JOB_THREADS"], available_cpus())
    jobs = JobQueue(config["DATA_DIR"], threads=threads, slots=slots,
                    spawn=config["JOB_RUNNER"] == "spawn")
    datasets = DatasetStore(config["DATA_DIR"], max_images=config["MAX_DATASET_IMAGES"],
                            max_pixels=config["MAX_IMAGE_PIXELS"],
                            decode_seconds=config["DECODE_TIMEOUT"])
    current.install(app, holder=holder, registry=registry, datasets=datasets, jobs=jobs,
                    workers=workers)
    # NumPy's BLAS (OpenBLAS) runs its small matrix products -- the open-set score of every
    # answer -- on a thread per core, and those threads spin after each call, taking the
    # cores the engine's own threads need: ENGINE=torch answered in 62-81 ms in the worker
    # with it, 27-36 ms without (24-27 ms for the bare model).  One BLAS thread per process.
    threadpool_limits(limits=1, user_api="blas")
    jobs.recover()  # fail jobs whose training process is gone, restart waiting ones
    # What writes cut short by a crash left behind (uploads, pointer and key files, cache
    # entries being built, dataset captures), once it is hours old: a young one may be
    # another process's write in progress.
    registry.sweep()
    datasets.sweep()
    registry.engine.cache.sweep(STALE_TMP_SECONDS)

    # The admin session: its key (kept in MODEL_DIR so every worker and replica shares
    # it), CSRF on the admin area only, the login limit (webapp.views.admin.auth).
    auth.configure_session_key(app, registry)
    config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)  # the admin guard checks
    config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # valid as long as the session
    if config.get("SESSION_COOKIE_SAMESITE") is None:
        config["SESSION_COOKIE_SAMESITE"] = "Lax"
    CSRFProtect(app)
    app.extensions["admin_login_limit"] = auth.login_limiter(config)

    # The interface's language (gettext catalogs, webapp.i18n): which one a request gets
    # (a DEFAULT_LANGUAGE without a catalog stops startup), the switch's cookie, the
    # pages' script messages; JSON answers as UTF-8.
    i18n.init_app(app)

    # Requests: bodies (views mark big-file routes with @uploads.spooled), the stages of
    # timings_ms, errors as JSON or pages, request counts and timings, upload slots (views
    # mark image uploads with @capacity.upload_slot) and the body timeout, security
    # headers and ProxyFix.
    uploads.init_app(app)
    timings.init_app(app)
    errors.register(app)
    metrics.init_app(app, holder)
    capacity.init_app(app)
    security.init_app(app)
    Bootstrap5(app)

    # The blueprints.  The admin area is one blueprint whose routes live in several
    # modules (auth, models, kiosk_settings: importing them above added their routes;
    # teach nests its own blueprint in it, behind the same guard, errors and context).
    for blueprint in (api.bp, v2.bp, openapi.bp, ui.bp, kiosk.bp, admin.bp, metrics.bp,
                      classroom.bp):
        app.register_blueprint(blueprint)
    app.cli.add_command(cli.models_cli)  # flask models ...
    app.cli.add_command(cli.finetune_command)  # flask finetune ... (python -m webapp.finetune)
    return app


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("webapp").setLevel(level.upper())
