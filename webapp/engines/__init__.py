"""Inference engines: how a model file becomes something a worker can run.

Two halves, kept apart so that a web worker never loads torch:

* **building** (``build``, torch): load and validate the file, export ONNX with a second
  output for heatmaps, calibrate int8.  Runs in a short-lived child process
  (``child.run_builder``) or in the training job runner; leaves files in the engine cache
  (``artefacts``), keyed by the sha256 of the model file and what was said about it;
* **running** (``runtime``, no torch): OpenVINO or ONNX Runtime on those files.

This package's face re-exports what the rest of webapp/ uses; each name lives in:

* ``settings``: ``EngineSettings`` (ENGINE × QUANTIZE and the settings beside them),
  ``check_combination``, ``ENGINES``, ``QUANTIZE_MODES``;
* ``sources``: ``ModelSource``, ``builtin_source``, ``checkpoint_source``;
* ``cards``: ``ensure_card`` (a model's card from the cache, built by a child when
  missing), ``int8_state``;
* ``precision``: the int8 network and ``QUANTIZE=auto``'s ``decision`` (``decision_name``);
* ``compilation``: ``open_card`` (a card's network on the configured runtime),
  ``attach``, ``cam_weight``;
* ``serving``: ``serve(source)`` → (card, engine), the precision ladder;
* ``artefacts``: ``ModelCard``, ``ArtefactCache``, ``model_key``; ``runtime``: ``Engine``.
"""

from __future__ import annotations

from webapp.engines.artefacts import ArtefactCache, ModelCard, model_key
from webapp.engines.cards import ensure_card, int8_state
from webapp.engines.compilation import attach, cam_weight, open_card
from webapp.engines.precision import decision, decision_name
from webapp.engines.runtime import Engine
from webapp.engines.serving import serve
from webapp.engines.settings import ENGINES, QUANTIZE_MODES, EngineSettings, check_combination
from webapp.engines.sources import ModelSource, builtin_source, checkpoint_source

__all__ = ["ENGINES", "QUANTIZE_MODES", "ArtefactCache", "Engine", "EngineSettings",
           "ModelCard", "ModelSource", "attach", "builtin_source", "cam_weight",
           "check_combination", "checkpoint_source", "decision", "decision_name",
           "ensure_card", "int8_state", "model_key", "open_card", "serve"]
