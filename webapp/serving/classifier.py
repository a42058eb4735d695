"""The classifier one worker process serves: a model card (labels, preprocessing) and the
engine that runs its network, with batched top-k prediction in NumPy, and whether each
picture is unlike anything the model knows (``webapp.scores``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from webapp.checkpoints.preprocess import preprocess_array
from webapp.engines import runtime
from webapp.engines.artefacts import ModelCard
from webapp.engines.runtime import Engine
from webapp.scores import softmax
from webapp.serving.stopwatch import Stopwatch

# The stages of one answer, in order (ms): see ``Classifier.answer``.
ANSWER_STAGES = ("preprocess", "engine_wait", "inference", "postprocess")


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float

    def as_dict(self, names: Sequence[str] | None = None) -> dict:
        """For the API: ``label`` is the model's own (stable) name of the class,
        ``display_label`` what the page shows, ``names[index]`` (e.g. in the visitor's
        language: ``webapp.stores.label_names``), else the label."""
        return {"label": self.label,
                "display_label": names[self.index] if names else self.label,
                "index": self.index, "score": round(self.score, 6)}


class Classifier:
    """One model, its labels and its preprocessing.  Safe to share between threads (the
    engine decides how concurrent passes share its CPU threads)."""

    def __init__(self, card: ModelCard, engine: Engine, model_id: str = "builtin"):
        self.loaded = card  # named like LoadedModel: views describe either
        self.engine = engine
        self.labels = card.labels
        self.model_id = model_id  # "builtin" or the id in the model registry

    @property
    def info(self) -> dict:
        return {"id": self.model_id, **self.loaded.describe()}

    @property
    def measuring(self) -> bool:
        """Served in fp32 while a child process measures the engines and precisions
        (``webapp.engines.trials``); the holder swaps in the chosen one."""
        auto = self.loaded.engine_info.get("auto") or {}
        return auto.get("state") == "measuring"

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def resize_size(self) -> int:
        return self.loaded.resize_size

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """torchvision's ImageNet eval transform with this model's own sizes and
        statistics (``webapp.checkpoints.preprocess``): a (3, size, size) float32 array."""
        card = self.loaded
        return preprocess_array(img, card.resize_size, card.input_size, card.mean, card.std)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, feature map or None) for a preprocessed batch."""
        return self.engine(batch)

    def features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Like ``run``, but always with the feature map when the model has one (an engine
        whose network has none computes it in a second pass)."""
        if self.engine.features_run is None:
            return self.run(batch)
        return self.engine.features_run(batch)

    @property
    def openset(self):
        """The model's "I'm not sure" criterion (``openset.OpenSet``), or None."""
        return getattr(self.engine, "openset", None)

    def predict(
        self, images: list[Image.Image], k: int = 3
    ) -> tuple[list[list[Prediction]], dict[str, float]]:
        """Top-``k`` predictions per image (one batched forward pass) and the time spent
        in each stage, in milliseconds (``answer``)."""
        results, _, timings = self.answer(images, k)
        return results, timings

    def answer(
        self, images: list[Image.Image], k: int = 3, watch: Stopwatch | None = None
    ) -> tuple[list[list[Prediction]], list[bool], dict[str, float]]:
        """``predict``, and per image whether it is unknown: unlike anything the model
        was taught, by its criterion (always False for a model without one).  The
        timings (ms) are ``preprocess`` and those of ``answer_batch``; ``watch``: the
        request's stopwatch, whose laps they become."""
        watch = Stopwatch() if watch is None else watch
        before = dict(watch.ms)
        batch = np.stack([self.preprocess(img) for img in images])
        watch.lap("preprocess")
        results, unknown, _ = self.answer_batch(batch, k, watch)
        return results, unknown, {stage: ms - before.get(stage, 0.0)
                                  for stage, ms in watch.ms.items()
                                  if stage in ANSWER_STAGES}

    def answer_batch(
        self, batch: np.ndarray, k: int = 3, watch: Stopwatch | None = None
    ) -> tuple[list[list[Prediction]], list[bool], dict[str, float]]:
        """``answer`` for a batch already preprocessed: float32 (N, 3, size, size).  The
        timings (ms): ``engine_wait`` (for another request's pass in this process),
        ``inference`` (the engine's pass alone) and ``postprocess`` (scores, top-k, the
        open-set criterion)."""
        watch = Stopwatch() if watch is None else watch
        before = dict(watch.ms)
        k = max(1, min(int(k), self.num_classes))
        logits, features = self.run(batch)
        watch.lap("inference")
        watch.move(runtime.waited_ms(), "inference", "engine_wait")
        unknown = [False] * len(batch)
        if self.openset is not None:
            if features is None:  # an engine that computes the map in a second pass
                _, features = self.features(batch)
            if features is not None:
                unknown = [bool(u) for u in self.openset.unknown(features)]
        probs = softmax(logits)
        indices = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        results = [
            [Prediction(self.labels[i], int(i), float(row[i])) for i in row_indices]
            for row, row_indices in zip(probs, indices)
        ]
        watch.lap("postprocess")
        return results, unknown, {stage: watch.ms[stage] - before.get(stage, 0.0)
                                  for stage in ("engine_wait", "inference", "postprocess")}
