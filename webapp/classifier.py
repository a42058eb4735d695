"""The classifier one worker process serves: preprocessing + batched top-k prediction for
one loaded model, and the holder that loads it once and hands it to requests."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

import model_loader
from model_loader import LoadedModel, ModelLoadError

log = logging.getLogger(__name__)

MAX_ASPECT = 3  # longest side kept at most this many times the shortest (preprocess)


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float

    def as_dict(self) -> dict:
        return {"label": self.label, "index": self.index, "score": round(self.score, 6)}


class Classifier:
    """One model, its labels and its preprocessing.  Safe to share between threads:
    forward passes are serialised so concurrent requests do not oversubscribe the
    CPU threads torch was given."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.engine = loaded.engine
        self.labels = loaded.labels
        self._lock = threading.Lock()

    @property
    def info(self) -> dict:
        return self.loaded.describe()

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def resize_size(self) -> int:
        return self.loaded.resize_size

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """torchvision's ImageNet eval transform with this model's own sizes and
        statistics: resize the shorter side (bilinear, antialiased), centre-crop,
        scale to [0, 1], normalise.

        A very elongated image (say 30000×1) is first trimmed to 3:1 around its centre,
        which the centre crop would discard anyway, so resizing it cannot allocate
        gigabytes."""
        width, height = img.size
        short, long_ = min(width, height), max(width, height)
        if long_ > short * MAX_ASPECT:
            keep = short * MAX_ASPECT
            if width > height:
                left = (width - keep) // 2
                img = img.crop((left, 0, left + keep, height))
            else:
                top = (height - keep) // 2
                img = img.crop((0, top, width, top + keep))
        img = TF.resize(
            img, self.loaded.resize_size, InterpolationMode.BILINEAR, antialias=True
        )
        img = TF.center_crop(img, self.loaded.input_size)
        tensor = TF.pil_to_tensor(img).float().div_(255.0)
        return TF.normalize(tensor, self.loaded.mean, self.loaded.std)

    def predict(
        self, images: list[Image.Image], k: int = 3
    ) -> tuple[list[list[Prediction]], dict[str, float]]:
        """Top-``k`` predictions per image (one batched forward pass) and the time spent
        in preprocessing and inference, in milliseconds."""
        k = max(1, min(int(k), self.num_classes))
        t0 = time.perf_counter()
        batch = torch.stack([self.preprocess(img) for img in images])
        t1 = time.perf_counter()
        with self._lock, torch.inference_mode():
            logits = self.engine(batch)
        probs = torch.softmax(logits.float(), dim=1)
        scores, indices = probs.topk(k, dim=1)
        t2 = time.perf_counter()
        results = [
            [
                Prediction(self.labels[i], int(i), float(s))
                for s, i in zip(row_scores.tolist(), row_indices.tolist())
            ]
            for row_scores, row_indices in zip(scores, indices)
        ]
        return results, {"preprocess": (t1 - t0) * 1000, "inference": (t2 - t1) * 1000}


def load_builtin(config: dict) -> Classifier:
    """The built-in ImageNet model, per the app's settings."""
    loaded = model_loader.load_imagenet_model(
        config.get("MODEL_WEIGHTS") or None,
        allow_download=config.get("ALLOW_DOWNLOAD", False),
    )
    return Classifier(model_loader.quantize(
        loaded,
        config.get("QUANTIZE", "none"),
        config.get("ENGINE") or None,
        cache_dir=config.get("ENGINE_CACHE_DIR") or None,
        calibration_dir=config.get("CALIBRATION_DIR") or None,
        threads=config.get("TORCH_THREADS") or None,
    ))


class ModelHolder:
    """Loads the classifier once per process (after gunicorn forks), on the first call
    to ``get()`` or explicitly with ``warm_up()``, and remembers a load failure."""

    def __init__(self, loader: Callable[[], Classifier], threads: int):
        self._loader = loader
        self._threads = threads
        self._lock = threading.Lock()
        self._classifier: Classifier | None = None
        self.error: str | None = None
        self.load_seconds: float | None = None

    @property
    def loaded(self) -> bool:
        return self._classifier is not None

    def get(self) -> Classifier:
        classifier = self._classifier
        if classifier is not None:
            return classifier
        with self._lock:
            if self._classifier is None:
                model_loader.configure_threads(self._threads)
                started = time.perf_counter()
                try:
                    self._classifier = self._loader()
                except ModelLoadError as exc:
                    self.error = str(exc)
                    log.error("model could not be loaded: %s", exc)
                    raise
                self.error = None
                self.load_seconds = time.perf_counter() - started
                loaded = self._classifier.loaded
                log.info(
                    "model ready: %s (%s, version %s, engine %s, quantization %s) in %.1f s, "
                    "%d torch threads",
                    loaded.name, loaded.arch, loaded.version, loaded.engine_name,
                    loaded.quantization,
                    self.load_seconds, torch.get_num_threads(),
                )
            return self._classifier

    warm_up = get
