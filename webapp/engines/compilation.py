"""A model card's network compiled on the configured runtime (``open_card``: fp32, bf16
or int8, on OpenVINO or ONNX Runtime; no torch), and what the engine's feature output is
used for beside the answer (``attach``: the head weight heatmaps need, the "I'm not
sure" criterion)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from webapp import scores
from webapp.engines.artefacts import ArtefactCache, ModelCard
from webapp.engines.calibration import int8_name
from webapp.engines.runtime import Engine, open_engine
from webapp.engines.settings import EngineSettings


def open_card(card: ModelCard, settings: EngineSettings, precision: str
              ) -> tuple[ModelCard, Engine]:
    """Compile ``card``'s network (``precision``: fp32, bf16 or int8) on the configured
    runtime: the card as served (engine info filled in) and the engine."""
    cache = settings.cache
    started = time.perf_counter()
    if precision == "int8":
        name = int8_name(card.key, settings.calibration_dir or None)
    else:
        name = card.onnx
    runtime = "onnxruntime" if settings.engine == "torch" else settings.engine
    # One compilation at a time: OpenVINO writes its compiled network into the cache's
    # openvino/ folder without a lock, and a worker that read the file while another was
    # writing it failed to open the network (workers starting together); runtime._compile
    # holds a lock on that folder for every compilation (the background one too).
    engine = open_engine(cache.path(name), runtime, settings.threads, precision, settings.dual,
                         blobs=str(cache.path("openvino")), input_size=card.input_size)
    if card.kind == "onnx":
        _adapt_upload(engine, card)
    engine.info = {"engine": settings.engine, "quantization": settings.quantize,
                   "precision": engine.precision, "artefact": name, **engine.info,
                   "compile_seconds": round(time.perf_counter() - started, 3)}
    if precision == "int8":
        engine.info["calibration"] = f"photos in {settings.calibration_dir or 'calibration/'}"
    attach(engine, card, cache)
    card = replace(card, quantization=settings.quantize, engine_name=settings.engine,
                   engine_info=engine.info)
    return card, engine


def _adapt_upload(engine: Engine, card: ModelCard) -> None:
    """An uploaded ONNX model as the server expects a network: one image at a time when
    its batch is fixed, and logits from a softmax output (their log: the server's softmax
    then gives the model's own scores)."""
    run = engine.run
    if card.batch == 1:
        def one_by_one(batch):
            rows = [run(batch[i:i + 1])[0] for i in range(len(batch))]
            return np.concatenate(rows), None

        engine.run = one_by_one
    if card.outputs == "probabilities":
        scores = engine.run

        def logits(batch):
            return np.log(np.maximum(scores(batch)[0].astype(np.float32), 1e-30)), None

        engine.run = logits


def attach(engine: Engine, card: ModelCard, cache: ArtefactCache) -> None:
    """What the engine's feature output is used for beside the answer, read from the
    cache: the head weight heatmaps need, and the "I'm not sure" criterion."""
    engine.cam_weight = cam_weight(card, cache)
    engine.openset = scores.load(card, cache)


def cam_weight(card: ModelCard, cache: ArtefactCache):
    """The head weight heatmaps are computed with (``None`` without one)."""
    if not card.cam:
        return None
    import numpy as np

    with np.load(cache.path(card.cam["head"])) as head:
        return head["weight"]
