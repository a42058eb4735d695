"""Serving a model in this process: ``serve(source)`` → (the card as served, the engine).

The precision ladder: the engine and precision the settings ask for (``ENGINE``,
``QUANTIZE``), or for ``auto`` the ones measured for this model on this machine
(``precision.decide``, in the background in a server's worker: ``trials``); a precision
that does not build or open steps down to fp32 on the same engine, and
``engine_info["fallback"]`` says why.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from webapp.checkpoints.loaded import ModelLoadError
from webapp.engines.artefacts import ModelCard
from webapp.engines.cards import ensure_card, int8_state
from webapp.engines.compilation import attach, open_card
from webapp.engines.precision import decision, reason
from webapp.engines.runtime import Engine
from webapp.engines.settings import EngineSettings, check_combination
from webapp.engines.sources import ModelSource

log = logging.getLogger(__name__)


def serve(source: ModelSource, settings: EngineSettings, *, background: bool = False,
          ) -> tuple[ModelCard, Engine]:
    """The card and the engine that serve ``source`` in this process.

    A precision the engine cannot give steps down *inside* the engine: int8 that cannot
    be built (no calibration photos, a quantizer error) and bf16 that does not compile
    are served in fp32 by the same engine, and ``engine_info["fallback"]`` says why.

    ``background`` (a server's worker): a model whose engine and precision are not
    decided on this machine yet is served in fp32 at once while a child process
    measures them (``trials``); otherwise they are measured first."""
    check_combination(settings.engine, settings.quantize)
    if settings.engine == "torch":
        from webapp.engines import torch_engine  # torch: only ENGINE=torch loads it

        card = ensure_card(source, settings)
        if card.kind == "onnx":  # nothing for torch to run: ONNX Runtime runs it
            card, engine = open_card(card, settings, "fp32")
            engine.info["fallback"] = ("ENGINE=torch cannot run an ONNX model: ONNX Runtime "
                                       "runs it")
            return card, engine
        card, engine = torch_engine.serve(card, source, settings)
        attach(engine, card, settings.cache)
        return card, engine
    if settings.decides:
        return _serve_decided(source, settings, background)
    return _serve_fixed(source, settings)


def _serve_fixed(source: ModelSource, settings: EngineSettings) -> tuple[ModelCard, Engine]:
    """One engine, one precision, as the settings say."""
    card = ensure_card(source, settings, int8=settings.builds_int8)
    fallback = None
    if settings.builds_int8:
        state, detail = int8_state(card, settings)
        try:
            if state != "ready":
                raise ModelLoadError(detail)
            return open_card(card, settings, "int8")
        except Exception as exc:  # noqa: BLE001 - any failure: serve fp32 and say why
            fallback = f"QUANTIZE=static failed: {reason(exc)}"
            log.warning("%s for %s; serving fp32", fallback, card.name)
    precision = "bf16" if settings.quantize == "bf16" else "fp32"
    try:
        card, engine = open_card(card, settings, precision)
    except Exception as exc:  # noqa: BLE001
        if precision == "fp32":
            raise
        fallback = f"QUANTIZE={settings.quantize} failed: {reason(exc)}"
        log.warning("%s for %s; serving fp32", fallback, card.name)
        card, engine = open_card(card, settings, "fp32")
    if fallback:
        engine.info["fallback"] = fallback
    return card, engine


def _serve_decided(source: ModelSource, settings: EngineSettings, background: bool
                   ) -> tuple[ModelCard, Engine]:
    """QUANTIZE=auto / ENGINE=auto: the engine and precision measured for this model on
    this machine (once, cached); fp32 if the chosen one does not open here after all.
    Not measured yet and ``background``: fp32 now (``_provisional``), the trials in a
    child process."""
    card = ensure_card(source, settings, int8=settings.builds_int8, decide=not background)
    made = decision(card.key, settings)
    if made is None:
        return _provisional(source, card, settings)
    engine_name = made.get("engine") or (
        "openvino" if settings.engine == "auto" else settings.engine)
    chosen = replace(settings, engine=engine_name)
    try:
        card, engine = open_card(card, chosen, made["chosen"])
    except Exception as exc:  # noqa: BLE001
        log.warning("QUANTIZE=auto chose %s %s for %s but it does not open (%s); serving "
                    "fp32", engine_name, made["chosen"], card.name, reason(exc))
        card, engine = open_card(card, chosen, "fp32")
        engine.info["fallback"] = f"{made['chosen']} did not open: {reason(exc)}"
    engine.info["auto"] = made
    return _as_asked(card, engine, settings)


def _provisional(source: ModelSource, card: ModelCard, settings: EngineSettings
                 ) -> tuple[ModelCard, Engine]:
    """While the trials run: the engine asked for (OpenVINO for ``auto``) in the precision
    asked for (fp32 for ``auto``); ``engine.info["auto"]`` says so, and says ``failed``
    and why if the trials fail."""
    # trials is the trials child's entry point (python -m webapp.engines.trials): imported
    # with the package, it would be in sys.modules before runpy runs it as __main__
    from webapp.engines import trials

    fixed = replace(settings, engine="openvino" if settings.engine == "auto"
                    else settings.engine,
                    quantize="none" if settings.quantize == "auto" else settings.quantize)
    card, engine = _serve_fixed(source, fixed)
    serving = f"{engine.info['engine']} {engine.precision}"
    engine.info["auto"] = {"state": "measuring", "serving": serving,
                           "why": f"measuring the engines and precisions on this machine; "
                                  f"serving {serving} until then"}
    trials.start(card, settings, engine.info["auto"])
    return _as_asked(card, engine, settings)


def _as_asked(card: ModelCard, engine: Engine, settings: EngineSettings
              ) -> tuple[ModelCard, Engine]:
    """The card and engine info say the settings (QUANTIZE=auto), beside what runs."""
    engine.info["quantization"] = settings.quantize
    return replace(card, quantization=settings.quantize, engine_info=engine.info), engine
