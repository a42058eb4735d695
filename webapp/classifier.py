"""The classifier one worker process serves: preprocessing + batched top-k prediction for
one loaded model, and the holder that loads it once and hands it to requests."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

import model_loader
from model_loader import LoadedModel, ModelLoadError, preprocess_array
from webapp.registry import RegistryError

log = logging.getLogger(__name__)

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

    def __init__(self, loaded: LoadedModel, model_id: str = "builtin"):
        self.loaded = loaded
        self.engine = loaded.engine
        self.labels = loaded.labels
        self.model_id = model_id  # "builtin" or the id in the model registry
        self._lock = threading.Lock()

    @property
    def info(self) -> dict:
        return {"id": self.model_id, **self.loaded.describe()}

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def resize_size(self) -> int:
        return self.loaded.resize_size

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """torchvision's ImageNet eval transform with this model's own sizes and
        statistics: resize the shorter side (bilinear, antialiased), centre-crop,
        scale to [0, 1], normalise.  A (3, size, size) float tensor."""
        return torch.from_numpy(self._preprocess_array(img))

    def _preprocess_array(self, img: Image.Image) -> np.ndarray:
        loaded = self.loaded
        return preprocess_array(img, loaded.resize_size, loaded.input_size,
                                loaded.mean, loaded.std)

    def predict(
        self, images: list[Image.Image], k: int = 3
    ) -> tuple[list[list[Prediction]], dict[str, float]]:
        """Top-``k`` predictions per image (one batched forward pass) and the time spent
        in preprocessing and inference, in milliseconds."""
        k = max(1, min(int(k), self.num_classes))
        t0 = time.perf_counter()
        batch = torch.from_numpy(np.stack([self._preprocess_array(img) for img in images]))
        t1 = time.perf_counter()
        with self._lock, torch.inference_mode():
            logits = self.engine(batch)
        # Softmax and top-k in NumPy too (see _preprocess_array), in float64.
        logits = logits.float().numpy().astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        indices = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        t2 = time.perf_counter()
        results = [
            [Prediction(self.labels[i], int(i), float(row[i])) for i in row_indices]
            for row, row_indices in zip(probs, indices)
        ]
        return results, {"preprocess": (t1 - t0) * 1000, "inference": (t2 - t1) * 1000}


def prepare(config: dict, loaded: model_loader.LoadedModel, model_id: str = "builtin"):
    """A loaded model made ready to serve with the app's engine settings (``ENGINE``,
    ``QUANTIZE``, ``ENGINE_CACHE_DIR``, ``CALIBRATION_DIR``, ``TORCH_THREADS``)."""
    return Classifier(model_loader.quantize(
        loaded,
        config.get("QUANTIZE", "none"),
        config.get("ENGINE") or None,
        cache_dir=config.get("ENGINE_CACHE_DIR") or None,
        calibration_dir=config.get("CALIBRATION_DIR") or None,
        threads=config.get("TORCH_THREADS") or None,
    ), model_id)


def load_builtin(config: dict) -> Classifier:
    """The built-in ImageNet model, per the app's settings."""
    loaded = model_loader.load_imagenet_model(
        config.get("MODEL_WEIGHTS") or None,
        allow_download=config.get("ALLOW_DOWNLOAD", False),
    )
    return prepare(config, loaded)


def load_registered(config: dict, registry, model_id: str) -> Classifier:
    """A model from the registry, prepared exactly like the built-in one."""
    return prepare(config, registry.load(model_id), model_id)


class ModelHolder:
    """The classifier this process serves.

    Loads it once per process (after gunicorn forks), on the first call to ``get()`` or
    explicitly with ``warm_up()``, and remembers a load failure.

    With a model registry attached (``use_registry``), the holder follows the
    registry's active pointer: every ``check_interval`` seconds it ``stat``s the pointer
    file, and when it changed, it loads the newly active model and swaps the reference.
    After ``warm_up()`` a watcher thread does this, so an idle worker switches too and
    no request waits for a load; without it (tests, a lazily started app) ``get()`` does
    it, in the one thread that noticed.  Requests in flight keep the ``Classifier`` they
    got; other threads keep getting the current one while the new one loads, so a swap
    never fails a request.  If the active model cannot be loaded, the current one (at
    startup: the previous one in the history, else the built-in one) goes on serving,
    and ``notice`` says so.  ``warm_up()`` must run after gunicorn forks (no preload):
    threads do not survive a fork.
    """

    def __init__(self, loader: Callable[[], Classifier], threads: int):
        self._loader = loader  # the built-in model
        self._threads = threads
        self._lock = threading.Lock()
        self._classifier: Classifier | None = None
        self._builtin: Classifier | None = None
        self._trial: Classifier | None = None
        self._registry = None
        self._load_registered: Callable[[str], Classifier] | None = None
        self._check_interval = 0.25
        self._next_check = 0.0
        self._stamp: object = None
        self._watcher: threading.Thread | None = None
        self.error: str | None = None
        self.notice: str | None = None  # why the active model is not the one served
        self.load_seconds: float | None = None
        self._listeners: list[Callable[[Classifier], None]] = []

    def add_listener(self, callback: Callable[[Classifier], None]) -> None:
        """``callback(classifier)`` each time this process starts serving a model (the
        first load and every swap), e.g. to update the metrics."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            try:
                callback(self._classifier)
            except Exception:  # a listener never breaks serving
                log.exception("model listener failed")

    def use_registry(
        self, registry, load: Callable[[str], Classifier], check_interval: float = 0.25
    ) -> None:
        self._registry = registry
        self._load_registered = load
        self._check_interval = check_interval

    @property
    def loaded(self) -> bool:
        return self._classifier is not None

    @property
    def registry(self):
        return self._registry

    def get(self) -> Classifier:
        classifier = self._classifier
        if classifier is not None and (
            self._registry is None or time.monotonic() < self._next_check
        ):
            return classifier
        if classifier is None:
            with self._lock:  # the first load: every request waits for it
                if self._classifier is None:
                    self._first_load()
                return self._classifier
        # Time to look at the pointer.  One thread does it; the others go on serving.
        if not self._lock.acquire(blocking=False):
            return classifier
        try:
            self._next_check = time.monotonic() + self._check_interval
            self._follow_pointer()
            return self._classifier
        finally:
            self._lock.release()

    def warm_up(self) -> Classifier:
        """Load the model now, and start following the registry in the background."""
        classifier = self.get()
        if self._registry is not None and self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch, name="model-registry-watcher", daemon=True
            )
            self._watcher.start()
        return classifier

    def _watch(self) -> None:
        while True:
            time.sleep(self._check_interval)
            if not self._lock.acquire(blocking=False):
                continue  # a request thread is checking or loading right now
            try:
                self._next_check = time.monotonic() + self._check_interval
                self._follow_pointer()
            except Exception:  # never let the watcher die; say why and go on
                log.exception("following the model registry failed")
            finally:
                self._lock.release()

    def classifier_for(self, model_id: str) -> Classifier:
        """Any stored model, without activating it ("try an image" in the admin page):
        the active one, the built-in one, or the last one tried (one is kept)."""
        current = self.get()
        if model_id == current.model_id:
            return current
        if model_id == "builtin":
            return self.builtin()
        trial = self._trial
        if trial is not None and trial.model_id == model_id:
            return self._current_name(trial)
        with self._lock:
            self._trial = self._timed_load(model_id)
            return self._trial

    def builtin(self) -> Classifier:
        """The built-in model (loaded once, kept: it is the fallback)."""
        if self._builtin is None:
            with self._lock:
                if self._builtin is None:
                    self._builtin = self._timed_load("builtin")
        return self._builtin

    # ------------------------------------------------------------------ internals

    def _timed_load(self, model_id: str) -> Classifier:
        if model_id == "builtin" and self._builtin is not None:
            return self._builtin  # loaded once and kept: nothing to load or log
        started = time.perf_counter()
        if model_id == "builtin":
            classifier = self._builtin = self._loader()
        else:
            classifier = self._load_registered(model_id)
        self.load_seconds = time.perf_counter() - started
        loaded = classifier.loaded
        log.info(
            "model ready: %s (id %s, %s, version %s, engine %s, quantization %s) in %.1f s, "
            "%d torch threads, pid %d",
            loaded.name, model_id, loaded.arch, loaded.version, loaded.engine_name,
            loaded.quantization, self.load_seconds, torch.get_num_threads(), os.getpid(),
        )
        return classifier

    def _first_load(self) -> None:
        model_loader.configure_threads(self._threads)
        if self._registry is None:
            self._classifier = self._load_or_record("builtin")
            self._notify()
            return
        self._stamp = self._registry.pointer_stamp()
        self._next_check = time.monotonic() + self._check_interval
        state = self._registry.state()
        candidates = [state.active] + [h for h in state.history if h != state.active]
        if "builtin" not in candidates:
            candidates.append("builtin")
        failures = []
        for model_id in candidates:
            try:
                if model_id == "builtin":
                    self._classifier = self._load_or_record("builtin")
                else:
                    self._classifier = self._timed_load(model_id)
            except (ModelLoadError, RegistryError) as exc:
                reason = getattr(exc, "message", None) or str(exc)
                log.error("model %s could not be loaded: %s", model_id, reason)
                failures.append(f"{model_id}: {reason}")
                if model_id == "builtin":
                    raise
                continue
            break
        self._notify()
        if self._classifier.model_id != state.active:
            self.notice = (
                f"The active model {state.active} could not be loaded ({failures[0]}); "
                f"serving {self._classifier.model_id} ({self._classifier.loaded.name}) "
                "instead."
            )
            log.error("%s", self.notice)

    def _load_or_record(self, model_id: str) -> Classifier:
        try:
            classifier = self._timed_load(model_id)
        except ModelLoadError as exc:
            self.error = str(exc)
            log.error("model could not be loaded: %s", exc)
            raise
        self.error = None
        return classifier

    def _follow_pointer(self) -> None:
        stamp = self._registry.pointer_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        wanted = self._registry.state().active
        current = self._classifier
        if wanted == current.model_id:  # e.g. renamed (Registry.rename rewrites the pointer)
            self.notice = None
            self._current_name(current)
            return
        try:
            if wanted == "builtin":
                new = self.builtin_locked()
            elif self._trial is not None and self._trial.model_id == wanted:
                new, self._trial = self._current_name(self._trial), None
            else:
                new = self._timed_load(wanted)
        except Exception as exc:  # whatever goes wrong, the current model keeps serving
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self.notice = (
                f"The active model {wanted} could not be loaded ({reason}); still serving "
                f"{current.model_id} ({current.loaded.name})."
            )
            log.error("%s", self.notice)
            return
        self._classifier = new
        self.notice = None
        self._notify()
        log.info("pid %d now serves model %s (was %s)", os.getpid(), wanted,
                 current.model_id)

    def _current_name(self, classifier: Classifier) -> Classifier:
        """A stored model shows the name the registry gives it now (it may have been
        renamed since it was loaded)."""
        if classifier.model_id != "builtin" and self._registry is not None:
            with contextlib.suppress(RegistryError):
                name = self._registry.meta(classifier.model_id).get("name")
                classifier.loaded.name = name or classifier.loaded.name
        return classifier

    def builtin_locked(self) -> Classifier:
        if self._builtin is None:
            self._builtin = self._timed_load("builtin")
        return self._builtin
