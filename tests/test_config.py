"""Settings come from the environment, are validated, and are all documented."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT
from webapp.config import (
    SETTINGS,
    Config,
    ConfigError,
    available_cpus,
    dual_streams,
    plan_concurrency,
)


def test_defaults():
    config = Config.from_env({})
    # The engine and the precision are decided per model and machine, by measuring.
    assert (config["ENGINE"], config["QUANTIZE"]) == ("auto", "auto")
    assert config["INT8_MIN_AGREEMENT"] == 0.98
    assert config["MALLOC_ARENA_MAX"] == 2
    assert config["MAX_CONTENT_LENGTH"] == 20 * 1024 * 1024
    assert config["MAX_IMAGE_PIXELS"] == 50_000_000
    assert config["BOOTSTRAP_SERVE_LOCAL"] is True
    assert config["TORCH_THREADS"] >= 1
    assert len(config["SECRET_KEY"]) >= 32


def test_values_are_read_and_converted():
    config = Config.from_env({"MAX_UPLOAD_MB": "2.5", "ALLOW_DOWNLOAD": "yes",
                              "QUANTIZE": "NONE", "TORCH_THREADS": "3"})
    assert config["MAX_CONTENT_LENGTH"] == int(2.5 * 1024 * 1024)
    assert config["ALLOW_DOWNLOAD"] is True
    assert config["QUANTIZE"] == "none"
    assert config["TORCH_THREADS"] == 3


@pytest.mark.parametrize("env, words", [
    ({"QUANTIZE": "turbo"}, "QUANTIZE='turbo': use one of auto, none, bf16, dynamic, static"),
    ({"QUANTIZE": "bf16", "ENGINE": "torch"}, "QUANTIZE=bf16 needs ENGINE=openvino"),
    ({"ENGINE": "tensorrt"},
     "ENGINE='tensorrt': use one of auto, torch, openvino, onnxruntime"),
    ({"ENGINE": "auto", "QUANTIZE": "dynamic"}, "needs ENGINE=torch"),
    ({"QUANTIZE": "dynamic"}, "QUANTIZE=dynamic is torch's dynamic quantization and needs "
                              "ENGINE=torch"),
    ({"MALLOC_ARENA_MAX": "-1"}, "MALLOC_ARENA_MAX=-1: must be between 0 and 64"),
    ({"MAX_UPLOAD_MB": "lots"}, "MAX_UPLOAD_MB='lots': expected a number"),
    ({"PORT": "70000"}, "PORT=70000: must be between 1 and 65535"),
    ({"ALLOW_DOWNLOAD": "maybe"}, "ALLOW_DOWNLOAD='maybe'"),
])
def test_bad_values_name_the_setting(env, words):
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    assert words in str(info.value)


@pytest.mark.parametrize("cpus, workers, threads, expected", [
    (1, 0, 0, (1, 1)), (2, 0, 0, (1, 2)), (8, 0, 0, (4, 2)), (2, 2, 0, (2, 1)),
    (4, 0, 1, (2, 1)), (16, 3, 0, (3, 5)), (2, 3, 2, (3, 2)),  # explicit values win
])
def test_workers_times_threads_fit_the_cpus(cpus, workers, threads, expected):
    assert plan_concurrency(workers, threads, cpus=cpus) == expected
    if not (workers and threads):
        w, t = expected
        assert w * t <= cpus


@pytest.mark.parametrize("cpus, workers, threads, expected", [
    (1, 0, 0, (1, 1)), (2, 0, 0, (2, 2)), (4, 0, 0, (2, 2)), (8, 0, 0, (4, 2)),
    (2, 1, 0, (1, 2)), (2, 3, 1, (3, 1)),  # explicit values win
])
def test_dual_streams_get_two_workers_of_two_threads(cpus, workers, threads, expected):
    """OpenVINO's dual streams (the default): a second worker on 2 CPUs, as measured."""
    assert plan_concurrency(workers, threads, cpus=cpus, dual=True) == expected


def test_the_default_settings_plan_dual_streams_and_other_engines_do_not():
    assert dual_streams(Config.from_env({}))
    assert not dual_streams(Config.from_env({"ENGINE_STREAMS": "latency"}))
    assert not dual_streams(Config.from_env({"ENGINE": "onnxruntime"}))
    assert Config.from_env({"WEB_CONCURRENCY": "2", "TORCH_THREADS": "0"})["TORCH_THREADS"] \
        >= (2 if available_cpus() >= 2 else 1)


@pytest.mark.parametrize("engine", ["auto", "openvino", "onnxruntime", "torch"])
def test_auto_precision_is_left_to_the_engine(engine):
    """QUANTIZE=auto is decided per model by measuring (tests/engines/test_engines.py), never from
    the engine's name or the CPU's flags."""
    assert Config.from_env({"ENGINE": engine})["QUANTIZE"] == "auto"
    assert Config.from_env({"ENGINE": engine, "QUANTIZE": "static"})["QUANTIZE"] == "static"


def test_every_setting_is_documented_in_docs_settings():
    """docs/settings.md has a table row for every setting (a mention elsewhere on the page
    is not enough), and no row for a setting that does not exist."""
    page = (ROOT / "docs" / "settings.md").read_text("utf-8")
    rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", page, flags=re.MULTILINE))
    names = {s.name for s in SETTINGS}
    assert not names - rows, f"docs/settings.md has no row for: {sorted(names - rows)}"
    assert not rows - names, f"docs/settings.md documents unknown settings: {sorted(rows - names)}"
