"""The objects one app shares between its requests, and a typed accessor for each.

``create_app`` makes them once (``install``); views, commands and the HTTP plumbing ask
for them here (``current.holder()``, ``current.registry()`` ...) instead of looking up
``current_app.extensions`` by a string of their own, so a reader (and a type checker)
sees what each one is, and a renamed key cannot break one caller quietly.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask, current_app

from webapp.serving.holder import ModelHolder
from webapp.serving.workers import WorkerReports
from webapp.stores.datasets import DatasetStore
from webapp.stores.kiosk_settings import KioskSettings, KioskSettingsStore
from webapp.stores.label_names import LabelNames
from webapp.stores.registry import Registry
from webapp.training.jobs import JobQueue

# app.extensions keys (tests and gunicorn.conf.py read "model_holder" too).
HOLDER, REGISTRY, DATASETS, JOBS, WORKERS = (
    "model_holder", "registry", "datasets", "jobs", "worker_reports")


def install(app: Flask, *, holder: ModelHolder, registry: Registry, datasets: DatasetStore,
            jobs: JobQueue, workers: WorkerReports) -> None:
    app.extensions.update({HOLDER: holder, REGISTRY: registry, DATASETS: datasets,
                           JOBS: jobs, WORKERS: workers})


def holder() -> ModelHolder:
    """The model this process serves (follows the registry's active pointer)."""
    return current_app.extensions[HOLDER]


def registry() -> Registry:
    """The model registry in ``MODEL_DIR``."""
    return current_app.extensions[REGISTRY]


def workers() -> WorkerReports:
    """Which model each process of this server serves (activate and wait)."""
    return current_app.extensions[WORKERS]


def datasets() -> DatasetStore:
    """The teach datasets in ``DATA_DIR``."""
    return current_app.extensions[DATASETS]


def jobs() -> JobQueue:
    """The training jobs in ``DATA_DIR``."""
    return current_app.extensions[JOBS]


def _settings_file() -> Path:
    return Path(current_app.config.get("KIOSK_SETTINGS_FILE")
                or Path(current_app.instance_path) / "kiosk.json")


def kiosk_settings() -> KioskSettingsStore:
    """The kiosk (and teacher) settings of the running app: defaults from its config, the
    teacher's changes from the settings file (``KIOSK_SETTINGS_FILE``, else the instance
    folder), the languages from the catalogs (``webapp.i18n``).  The file is looked at on
    every call (read again when it changed): another worker may have saved it."""
    return KioskSettingsStore(_settings_file(), KioskSettings.from_config(current_app.config),
                              current_app.extensions["languages"])


def label_names() -> LabelNames:
    """The names of the ImageNet classes per language: shipped, and the teacher's own
    (``label-names.json`` beside the kiosk settings file)."""
    return LabelNames(_settings_file().with_name("label-names.json"))
