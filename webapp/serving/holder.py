"""The model one worker process serves, loaded once and swapped when the registry's active
pointer changes.  No torch and no Flask here."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

from webapp import engines
from webapp.checkpoints.loaded import ModelLoadError
from webapp.engines import EngineSettings
from webapp.engines.precision import reason
from webapp.messages import Message, MessageList
from webapp.messages import reason as message_reason
from webapp.serving.classifier import Classifier
from webapp.stores.registry import BUILTIN, Registry, RegistryError

log = logging.getLogger(__name__)


def _precision(made: dict | None) -> dict | None:
    """QUANTIZE=auto's decision in short, for the model list: the precision and engine
    served, why, and how often each faster one agreed with fp32."""
    if not made:
        return None
    return {"chosen": made.get("chosen"), "engine": made.get("engine"), "why": made.get("why"),
            "agreement": {_candidate(t): t.get("agreement") for t in made.get("tried", [])
                          if t.get("works") and t["precision"] != "fp32"}}


def _candidate(trial: dict) -> str:
    return f"{trial['engine']} {trial['precision']}" if "engine" in trial \
        else trial["precision"]


def load_classifier(config: dict, registry: Registry | None, model_id: str, *,
                    background: bool = False) -> Classifier:
    """The built-in model or a stored one, ready to serve with the app's engine settings
    (``ENGINE``, ``QUANTIZE``, ``ENGINE_CACHE_DIR``, ``CALIBRATION_DIR``,
    ``TORCH_THREADS``): its card and network from the engine cache, built by a child
    process when missing.  ``background``: an engine and precision not yet measured on
    this machine are measured by a child process while fp32 serves
    (``engines.serve``)."""
    if model_id == BUILTIN:
        source = engines.builtin_source(config)
    else:
        if registry is None:
            raise RegistryError(404, "unknown_model",
                                Message("There is no model %(id)s.", id=repr(model_id)))
        source = registry.source(model_id)
    card, engine = engines.serve(source, EngineSettings.from_config(config),
                                 background=background)
    return Classifier(card, engine, model_id)


class ModelHolder:
    """The classifier this process serves.

    Loads it once per process (after gunicorn forks), on the first call to ``get()`` or
    explicitly with ``warm_up()``, and remembers a load failure.

    With a model registry (``registry``), the holder follows the
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

    After ``warm_up()``, a model whose engine and precision are not yet measured on this
    machine (``QUANTIZE=auto``, ``ENGINE=auto``) serves in fp32 while a child process
    measures them, and the watcher swaps in the chosen engine once the decision is in
    the engine cache, as it swaps models.  Without it they are measured before the
    model serves.
    """

    def __init__(self, config: dict, registry: Registry | None = None,
                 check_interval: float = 0.1):
        self._config = config
        self._lock = threading.Lock()
        self._classifier: Classifier | None = None
        self._builtin: Classifier | None = None
        self._trial: Classifier | None = None
        self._registry = registry
        self._check_interval = check_interval
        self._next_check = 0.0
        self._stamp: object = None
        self._watcher: threading.Thread | None = None
        self._background = False  # measure engines in the background (after warm_up)
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
        """Load the model now, and start following the registry (and the engine
        trials) in the background."""
        self._background = True
        classifier = self.get()
        if self._watcher is None:
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
                if self._registry is not None:
                    self._follow_pointer()
                self._follow_trials()
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
        if model_id == BUILTIN:
            return self.builtin()
        trial = self._trial
        if trial is not None and trial.model_id == model_id:
            return self._current_name(trial)
        with self._lock:
            self._trial = self._timed_load(model_id)
            return self._trial

    def model_entries(self) -> tuple[list[dict], dict]:
        """Every model (built-in first, then the stored ones, newest first) with
        ``active`` and ``deletable`` flags, and the registry's pointer state: what the
        admin page, its API and ``flask models list`` show."""
        state = self._registry.state()
        entries = [self._builtin_entry()] + [
            {**meta, "builtin": False} for meta in self._registry.list_models()
        ]
        settings = EngineSettings.from_config(self._config)
        for entry in entries:
            entry["active"] = entry["id"] == state.active
            entry["deletable"] = not entry["builtin"] and not entry["active"]
            if settings.decides and entry.get("card"):
                entry.setdefault("precision", _precision(engines.decision(entry["card"],
                                                                          settings)))
        return entries, state.as_dict()

    def _builtin_entry(self) -> dict:
        entry = {"id": BUILTIN, "builtin": True, "uploaded": None, "created": None,
                 "metrics": {}, "sha256": None}
        try:
            loaded = self.builtin().loaded
        except ModelLoadError as exc:
            return {**entry, "name": Message("Built-in ImageNet model"), "arch": None,
                    "classes": [], "num_classes": 0, "error": exc.args[0],
                    "size_bytes": None, "version": None}
        size = None
        with contextlib.suppress(OSError):
            size = os.stat(loaded.source).st_size
        return {**entry, "name": loaded.name, "arch": loaded.arch, "classes": loaded.labels,
                "num_classes": loaded.num_classes, "input_size": loaded.input_size,
                "size_bytes": size, "version": loaded.version, "source": loaded.source_kind,
                "precision": _precision(loaded.engine_info.get("auto")) or {
                    "chosen": loaded.engine_info.get("precision")}}

    def builtin(self) -> Classifier:
        """The built-in model (loaded once, kept: it is the fallback)."""
        if self._builtin is None:
            with self._lock:
                if self._builtin is None:
                    self._builtin = self._timed_load(BUILTIN)
        return self._builtin

    # ------------------------------------------------------------------ internals

    def _timed_load(self, model_id: str) -> Classifier:
        if model_id == BUILTIN and self._builtin is not None:
            return self._builtin  # loaded once and kept: nothing to load or log
        started = time.perf_counter()
        try:
            classifier = load_classifier(self._config, self._registry, model_id,
                                         background=self._background)
        except (ModelLoadError, RegistryError):
            raise
        except Exception as exc:  # a damaged cache, a disk error: a load failure all the same
            log.exception("loading model %s failed", model_id)
            raise ModelLoadError(Message("Loading it failed: %(reason)s",
                                         reason=reason(exc))) from exc
        if model_id == BUILTIN:
            self._builtin = classifier
        self.load_seconds = time.perf_counter() - started
        loaded = classifier.loaded
        log.info(
            "model ready: %s (id %s, %s, version %s, engine %s, %s) in %.2f s, "
            "%d engine threads, pid %d",
            loaded.name, model_id, loaded.arch, loaded.version, loaded.engine_name,
            loaded.engine_info.get("precision"), self.load_seconds,
            self._config.get("TORCH_THREADS") or 1, os.getpid(),
        )
        return classifier

    def _first_load(self) -> None:
        if self._registry is None:
            self._classifier = self._load_or_record(BUILTIN)
            self._notify()
            return
        self._stamp = self._registry.pointer_stamp()
        self._next_check = time.monotonic() + self._check_interval
        state = self._registry.state()
        candidates = [state.active] + [h for h in state.history if h != state.active]
        if BUILTIN not in candidates:
            candidates.append(BUILTIN)
        failures = []
        for model_id in candidates:
            try:
                if model_id == BUILTIN:
                    self._classifier = self._load_or_record(BUILTIN)
                else:
                    self._classifier = self._timed_load(model_id)
            except (ModelLoadError, RegistryError) as exc:
                reason = getattr(exc, "message", None) or message_reason(exc)
                log.error("model %s could not be loaded: %s", model_id, reason)
                failures.append(f"{model_id}: {reason}")
                if model_id == BUILTIN:
                    raise
                continue
            break
        self._notify()
        if self._classifier.model_id != state.active:
            self.notice = Message(
                "The active model %(active)s could not be loaded (%(reason)s); serving "
                "%(serving)s (%(name)s) instead.", active=state.active, reason=failures[0],
                serving=self._classifier.model_id, name=self._classifier.loaded.name)
            log.error("%s", self.notice)
        self.notice = _joined(state.problem, self.notice)

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
        state = self._registry.state()
        wanted = state.active
        current = self._classifier
        if wanted == current.model_id:  # e.g. renamed (Registry.rename rewrites the pointer)
            self.notice = state.problem
            self._current_name(current)
            return
        try:
            if wanted == BUILTIN:
                new = self.builtin_locked()
            elif self._trial is not None and self._trial.model_id == wanted:
                new, self._trial = self._current_name(self._trial), None
            else:
                new = self._timed_load(wanted)
        except Exception as exc:  # whatever goes wrong, the current model keeps serving
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self.notice = _joined(state.problem, Message(
                "The active model %(active)s could not be loaded (%(reason)s); still serving "
                "%(serving)s (%(name)s).", active=wanted, reason=reason,
                serving=current.model_id, name=current.loaded.name))
            log.error("%s", self.notice)
            return
        self._classifier = new
        self.notice = state.problem
        self._notify()
        log.info("pid %d now serves model %s (was %s)", os.getpid(), wanted,
                 current.model_id)

    def _follow_trials(self) -> None:
        """The served model was measuring and its decision is in the engine cache now:
        load it with the chosen engine and precision, and swap (requests in flight keep
        the fp32 one).  The fallback and the admin's trial model follow when next
        loaded."""
        current = self._classifier
        settings = EngineSettings.from_config(self._config)
        builtin = self._builtin
        if builtin is not None and builtin is not current and builtin.measuring \
                and engines.decision(builtin.loaded.key, settings) is not None:
            self._builtin = None  # loaded again, decided, when next needed
        if current is None or not current.measuring:
            return
        made = engines.decision(current.loaded.key, settings)
        if made is None:
            return
        if self._builtin is current:
            self._builtin = None
        try:
            new = self._timed_load(current.model_id)
        except Exception as exc:  # the fp32 network goes on serving
            current.loaded.engine_info["auto"] = {
                **made, "state": "failed",
                "why": f"{made.get('engine')} {made.get('chosen')} was chosen but could "
                       f"not be loaded ({exc}); serving fp32"}
            log.error("%s", current.loaded.engine_info["auto"]["why"])
            if self._builtin is None and current.model_id == BUILTIN:
                self._builtin = current
            return
        if self._classifier is current:
            self._classifier = new
            self._notify()
        log.info("pid %d now serves %s on %s %s, chosen by measuring: %s", os.getpid(),
                 current.model_id, made.get("engine"), made.get("chosen"), made.get("why"))

    def _current_name(self, classifier: Classifier) -> Classifier:
        """A stored model shows the name the registry gives it now (it may have been
        renamed since it was loaded)."""
        if classifier.model_id != BUILTIN and self._registry is not None:
            with contextlib.suppress(RegistryError):
                name = self._registry.meta(classifier.model_id).get("name")
                classifier.loaded.name = name or classifier.loaded.name
        return classifier

    def builtin_locked(self) -> Classifier:
        if self._builtin is None:
            self._builtin = self._timed_load(BUILTIN)
        return self._builtin


def _joined(*notices: str | None) -> str | None:
    """Notices (each one or more whole sentences) in one text, each translated where it
    is shown, or None when there is none."""
    notices = [n for n in notices if n]
    if len(notices) > 1:
        return MessageList(notices, " ")
    return notices[0] if notices else None
