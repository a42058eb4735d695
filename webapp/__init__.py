"""The Flask application factory.  ``create_app()`` is cheap: it reads the settings and
registers the blueprints.  The model is loaded once per process, after gunicorn forks
(``gunicorn.conf.py`` warms it up before the worker takes requests)."""

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

    import model_loader  # every model this app serves runs on the configured engine
    from webapp import api, errors, ui
    from webapp.classifier import ModelHolder, load_builtin
    from webapp.kiosk import bp as kiosk_bp

    model_loader.configure_engine(app.config["ENGINE"], app.config["ENGINE_CACHE_DIR"],
                                  app.config["CALIBRATION_DIR"])

    app.extensions["model_holder"] = ModelHolder(
        lambda: load_builtin(app.config), threads=app.config["TORCH_THREADS"]
    )
    errors.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(ui.bp)
    app.register_blueprint(kiosk_bp)

    from webapp import finetune

    finetune.register_cli(app)  # flask --app app finetune DATA_DIR --out model.pt

    from webapp import admin

    admin.init_app(app)  # model registry (MODEL_DIR), /admin, `flask models ...`

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
