"""A model's card from the engine cache, built when it is missing (``ensure_card``).

Building needs torch, which a web worker never loads: it runs in a short-lived child
process (``child.run_builder``: ``python -m webapp.engines.build``, and an upload under
memory and time caps), or right here in a process that has torch already (the training
job runner, ``ENGINE=torch``).  It leaves files in the engine cache (``artefacts``), keyed
by the sha256 of the model file and what was said about it: the model card and its ONNX
network, and when asked the int8 network (``int8_state``) and ``QUANTIZE=auto``'s
decision (``precision.decision``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time
from dataclasses import replace

from webapp.engines import child, precision
from webapp.engines.artefacts import ModelCard
from webapp.engines.calibration import int8_name
from webapp.engines.settings import EngineSettings
from webapp.engines.sources import ModelSource
from webapp.messages import to_json

log = logging.getLogger(__name__)


_build_lock = threading.Lock()  # one build at a time per process (each is a torch child)


def ensure_card(source: ModelSource, settings: EngineSettings, *,
                int8: bool = False, decide: bool = False) -> ModelCard:
    """The model card of ``source`` from the cache, built by a child process when missing
    or damaged (under the cache entry's lock: workers starting together build it once).
    ``int8``: the int8 network too, or the reason it cannot be built (``int8_state``);
    that is never the card's failure."""
    cache = settings.cache
    key = source.key

    def done(card) -> bool:
        return card is not None and (not int8 or int8_state(card, settings)[0] != "missing") \
            and (not decide or precision.decision(card.key, settings) is not None)

    version = source.sha256[:12]
    card = cache.read_card(key, version)
    if not done(card):
        with _build_lock, cache.lock(cache.card_name(key)):
            card = cache.read_card(key, version)
            if not done(card):
                card = _run_build(source, settings, cache, key, int8, decide)
    return _named(card, source)


def int8_state(card: ModelCard, settings: EngineSettings) -> tuple[str, str]:
    """(``ready`` | ``failed`` | ``missing``, the entry's name or why it failed)."""
    cache = settings.cache
    name = int8_name(card.key, settings.calibration_dir or None)
    if cache.valid(name):
        return "ready", name
    if cache.valid(f"{name}.error"):
        return "failed", cache.path(f"{name}.error").read_text("utf-8").strip()
    return "missing", name


def _named(card: ModelCard, source: ModelSource) -> ModelCard:
    """The card as this source shows it: the same weights may be stored under another
    name, and a stored upload no longer lives where it was converted."""
    card = replace(card, name=source.name) if source.name else card
    return replace(card, source=source.file) if source.kind == "checkpoint" else card


def _run_build(source, settings, cache, key, int8, decide=False) -> ModelCard:
    if "torch" in sys.modules and not source.untrusted:
        return _build_here(source, settings, cache, key, int8, decide)
    started = time.perf_counter()
    common = ["--key", key, "--cache", str(cache.root)]
    if int8:
        common.append("--int8")
        if settings.calibration_dir:
            common += ["--calibration-dir", settings.calibration_dir]
    if decide:
        common += ["--decide", json.dumps(dataclasses.asdict(settings))]
        if settings.calibration_dir and "--calibration-dir" not in common:
            common += ["--calibration-dir", settings.calibration_dir]
    timeout = child.BUILD_TIMEOUT
    what = None
    given = None  # on the child's stdin
    if source.kind == "builtin":
        args = ["builtin", *common]
        if source.weights:
            args += ["--weights", source.weights]
    else:
        # What was said about the file goes on the child's stdin: a labels file may be
        # larger than one command-line argument may be (128 KB on Linux).
        args = ["checkpoint", source.file, "--given", "-", "--sha256", source.sha256, *common]
        given = json.dumps(source.given)
        if source.label:
            args += ["--label", json.dumps(to_json(source.label), ensure_ascii=False)]
            what = source.label
        if source.untrusted:
            memory_mb, timeout = child.upload_limits(os.path.getsize(source.file))
            args += ["--memory-mb", str(memory_mb)]
    answer = child.run_builder(args, timeout=timeout, what=what, stdin=given)
    card = ModelCard.from_json(answer["card"])
    log.info("built %s for serving in %.1f s (a child process; cached as %s)", card.name,
             time.perf_counter() - started, key)
    return card


def _build_here(source, settings, cache, key, int8, decide=False) -> ModelCard:
    """In a process that has torch already (the training runner, ``ENGINE=torch``), a
    trusted model is built right here instead of in a child."""
    from webapp.engines import build, torch_engine  # torch: only a process with torch builds here

    card = cache.read_card(key, source.sha256[:12])
    if card is None:
        card = build.build_card(torch_engine.load_module(source), key, cache, lock=False)
    if int8:
        precision.int8_or_reason(card, cache, settings.calibration_dir or None)
    if decide and precision.decision(card.key, settings) is None:
        precision.decide(card, cache, settings)
    return card
