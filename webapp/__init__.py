"""The Flask application factory.  ``create_app()`` is cheap: it reads the settings and
registers the blueprints.  The model is loaded once per process, after gunicorn forks
(``gunicorn.conf.py`` warms it up before the worker takes requests), from the engine
cache: a web worker never imports torch (``webapp.engines``)."""

from __future__ import annotations

import logging

from flask import Flask

from webapp import uploads
from webapp.config import PROJECT_ROOT, Config

__all__ = ["create_app"]


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(
        __name__,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    app.config.from_mapping(Config.from_env())
    if test_config:
        app.config.from_mapping(test_config)
    _configure_logging(app.config["LOG_LEVEL"])
    uploads.init_app(app)

    from flask_bootstrap import Bootstrap5

    Bootstrap5(app)

    from webapp import admin, api, cli, errors, ui
    from webapp.engines import EngineSettings
    from webapp.kiosk import bp as kiosk_bp
    from webapp.registry import Registry
    from webapp.serving.holder import ModelHolder

    # The shared objects: the model registry (MODEL_DIR) and the model this process serves,
    # which follows the registry's active pointer.
    registry = app.extensions["registry"] = Registry(
        app.config["MODEL_DIR"], EngineSettings.from_config(app.config))
    app.extensions["model_holder"] = ModelHolder(app.config, registry)
    errors.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(ui.bp)
    app.register_blueprint(kiosk_bp)
    admin.init_app(app)  # /admin (with the Teach pages), its session key, CSRF, login limit
    cli.init_app(app)  # flask models ..., flask finetune ...

    from webapp import capacity, metrics, security

    metrics.init_app(app)  # /metrics, request counts and timings, model info
    capacity.init_app(app)  # upload slots per worker, body timeout
    security.init_app(app)  # security headers on every response, ProxyFix
    return app


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("webapp").setLevel(level.upper())
    logging.getLogger("model_loader").setLevel(level.upper())
