"""The checkpoint store: fine-tuned models on disk, which one is active, and its history.

Layout under ``MODEL_DIR``::

    models/<id>/checkpoint.pt   the file as uploaded (read with weights_only=True), or
    models/<id>/model.safetensors  ... a safetensors file, or
    models/<id>/model.onnx      ... an ONNX model (served as it is, without torch)
    models/<id>/meta.json       kind, file, name, arch, classes, input_size, mean, std,
                                size, sha256, uploaded, metrics, what was found where
    models/<id>/report.json     optional (REPORT_FILES): the training report and its PNGs,
    models/<id>/confusion.png   for models trained on this server (teach-live jobs)
    active.json                 {"active": "<id>", "history": [...], "redo": [...],
                                 "changed": "..."}
    active.last-good.json       the same, as last written whole: used when active.json
                                is damaged (by hand, by a disk), which ``state`` says
    tmp/                        uploads and half-built models; never listed
    .lock                       serialises writers (flock), readers never wait for it
    secret_key                  the session key when SECRET_KEY is not set (webapp.views.admin)

Crash safety: a model is built in ``tmp/<id>.staging/`` (checkpoint and meta.json both
fsynced) and appears with one ``rename`` of that directory into ``models/``; the active
pointer is written to a temp file, fsynced and ``os.replace``d.  A crash at any point
leaves either the old state or the new one, plus garbage in ``tmp/`` that the next writer
sweeps away.  Readers only look at ``models/*/meta.json`` and ``active.json``.

``builtin`` is the built-in ImageNet model (``imagenet_weights_file``): always
present, never deleted, active when nothing else is.  IDs are made here, never taken from
a user; names are for display only.  Knows nothing about Flask.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from webapp import durable, engines
from webapp.checkpoints.architectures import supported_archs
from webapp.checkpoints.files import sha256_file
from webapp.checkpoints.loaded import ModelLoadError
from webapp.durable import fsync_dir, locked, write_json
from webapp.engines import EngineSettings, ModelSource
from webapp.engines.artefacts import EngineCacheError
from webapp.messages import Message
from webapp.stores.model_names import (  # noqa: F401 - RegistryError, unknown_model: the store's API
    BUILTIN,
    ID_RE,
    RegistryError,
    clean_name,
    jsonable,
    jsonable_fields,
    now_iso,
    unknown_model,
    valid_id,
)

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILES = {"pytorch": CHECKPOINT_FILE, "safetensors": "model.safetensors",
               "onnx": "model.onnx"}  # the stored file's name, by kind
ONNX_BUNDLE = "model.zip"  # an ONNX model with its external data file(s)
META_FILE = "meta.json"
POINTER_FILE = "active.json"
LAST_GOOD_FILE = "active.last-good.json"
REPORT_FILES = ("report.json", "confusion.png", "curves.png")  # optional, beside a model
MAX_HISTORY = 50
STALE_TMP_SECONDS = 6 * 3600  # a temp file this old belongs to no live upload
MIN_SECRET_KEY = 32  # characters of a kept session key (32 bytes of entropy make 64 hex)


@dataclass(frozen=True)
class State:
    """The contents of ``active.json``."""

    active: str = BUILTIN
    history: tuple[str, ...] = ()  # most recent first; what rollback returns to
    changed: str | None = None
    redo: tuple[str, ...] = ()  # models rolled back from, most recent first; what redo
    # returns to.  Activating a model starts a new line of history and forgets them.
    problem: str | None = None  # active.json was damaged: why (this is the last good one)

    def as_dict(self) -> dict:
        return {"active": self.active, "history": list(self.history),
                "redo": list(self.redo), "changed": self.changed}


class Registry:
    """The store under ``root`` (``MODEL_DIR``).  Safe to use from several threads and
    processes at once: writers take an exclusive ``flock``; readers never block."""

    def __init__(self, root: str | os.PathLike, engine: EngineSettings | None = None):
        self.root = Path(root)
        self.engine = engine or EngineSettings()  # how a new model is checked and converted
        self.models_dir = self.root / "models"
        self.tmp_dir = self.root / "tmp"
        self.pointer = self.root / POINTER_FILE

    # ------------------------------------------------------------------ reading

    def pointer_stamp(self) -> tuple | None:
        """Changes whenever the active pointer is replaced (one ``stat``, no read)."""
        try:
            st = os.stat(self.pointer)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def state(self) -> State:
        """The active pointer.  When ``active.json`` is damaged (cannot be read, is not
        JSON, names no model), the last one written whole (``active.last-good.json``) with
        ``problem`` saying what is wrong, or the built-in model when that is gone too;
        the next activation, rollback or redo writes a whole pointer again."""
        try:
            return _parse_state(self.pointer.read_text("utf-8"))
        except FileNotFoundError:
            if not self.last_good.exists():
                return State()
            why = Message("it is missing")
        except (OSError, ValueError) as exc:
            why = str(exc) or type(exc).__name__
        try:
            state = _parse_state(self.last_good.read_text("utf-8"))
        except (OSError, ValueError):
            log.error("%s is damaged (%s) and there is no earlier copy; treating the "
                      "built-in model as active", self.pointer, why)
            return State(problem=Message(
                "%(file)s is damaged (%(reason)s) and no earlier copy was kept, so the "
                "built-in model is treated as active.", file=POINTER_FILE, reason=why))
        log.error("%s is damaged (%s); using the copy written last (%s active)",
                  self.pointer, why, state.active)
        return replace(state, problem=Message(
            "%(file)s is damaged (%(reason)s); the model it named when it was last written "
            "whole (%(model)s) is treated as active. Activating a model repairs it.",
            file=POINTER_FILE, reason=why, model=state.active))

    @property
    def last_good(self) -> Path:
        return self.root / LAST_GOOD_FILE

    def ids(self) -> list[str]:
        """Stored model ids, newest first (ids start with their upload time)."""
        try:
            names = os.listdir(self.models_dir)
        except FileNotFoundError:
            return []
        return sorted(
            (n for n in names if ID_RE.match(n) and (self.models_dir / n / META_FILE).is_file()),
            reverse=True,
        )

    def exists(self, model_id: str) -> bool:
        return model_id == BUILTIN or (
            ID_RE.match(model_id or "") is not None
            and (self.models_dir / model_id / META_FILE).is_file()
        )

    def meta(self, model_id: str) -> dict:
        """The stored metadata of a model; ``RegistryError`` 404 for an unknown id (an id
        that is not of our own making never reaches the filesystem)."""
        if not isinstance(model_id, str) or not ID_RE.match(model_id):
            raise self._unknown(model_id)
        try:
            meta = json.loads((self.models_dir / model_id / META_FILE).read_text("utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            raise self._unknown(model_id) from None
        except (OSError, ValueError) as exc:
            raise RegistryError(500, "store_damaged", f"{model_id}: meta.json: {exc}") from None
        meta["id"] = model_id
        return meta

    def list_models(self) -> list[dict]:
        """Every stored model's metadata (``builtin`` is not included), newest first."""
        out = []
        for model_id in self.ids():
            try:
                out.append(self.meta(model_id))
            except RegistryError as exc:  # deleted meanwhile, or damaged by hand
                log.warning("skipping %s: %s", model_id, exc.message)
        return out

    def checkpoint_path(self, model_id: str) -> Path:
        meta = self.meta(model_id)  # validates the id
        return self.models_dir / model_id / _file_of(meta)

    def report_file(self, model_id: str, filename: str) -> Path:
        """A file stored beside a model by ``add(extras=...)`` (report JSON, PNGs);
        ``RegistryError`` 404 when the model has none of that name."""
        meta = self.meta(model_id)
        if filename not in REPORT_FILES or filename not in meta.get("report_files", []):
            raise RegistryError(404, "no_report", Message(
                "Model %(model)s has no %(file)s (only models trained on this server carry a "
                "report).", model=model_id, file=repr(filename)))
        return self.models_dir / model_id / filename

    def source(self, model_id: str) -> ModelSource:
        """The stored model's file and the facts stored when it was added (the class names
        given with the upload, say): what the engines serve, from their cache (the card
        made when it was added) or converted again by a child process.  The file must
        still be the one stored (its sha256), or ``ModelLoadError``."""
        meta = self.meta(model_id)
        path = self.models_dir / model_id / _file_of(meta)
        try:
            intact = sha256_file(path) == meta.get("sha256")
        except OSError as exc:
            raise ModelLoadError(Message("its checkpoint cannot be read (%(error)s)",
                                         error=exc.strerror)) from None
        if not intact:  # the store was damaged: never serve what it no longer holds
            raise ModelLoadError(Message("its checkpoint file is not the one that was stored "
                                         "(damaged on disk); upload it again"))
        facts = {key: meta.get(key) for key in ("arch", "classes", "input_size", "mean", "std")}
        found = meta.get("found") or {}
        facts["ema"] = bool(found.get("ema"))  # the weights it was stored with
        if "GELU" in str(found.get("head", "")):
            facts["activation"] = "gelu"
        return engines.checkpoint_source(path, meta.get("sha256"), given=facts,
                                         label=f"model {model_id}", name=meta.get("name"),
                                         key=meta.get("card"))

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        with locked(self.root / ".lock"):
            yield

    def temp_path(self, prefix: str = "upload-") -> Path:
        """A fresh name inside ``tmp/`` (same filesystem as ``models/``, so a finished
        upload is moved into place without copying); open it with mode ``"xb"``."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self.tmp_dir / f"{prefix}{secrets.token_hex(8)}"

    def add(
        self,
        source: str | os.PathLike,
        *,
        name: str | None = None,
        fields: dict | None = None,
        move: bool = False,
        original_filename: str | None = None,
        extras: dict[str, str | os.PathLike] | None = None,
        trained_from: dict | None = None,
        untrusted: bool = True,
    ) -> dict:
        """Validate a model file and store it; returns its metadata.

        ``fields`` is what the person said about the file: ``load_checkpoint``'s ``arch``,
        ``classes`` (the field's text or a list), ``labels`` (a labels file's contents),
        ``input_size``, ``mean`` and ``std``; what was used is stored in the metadata, so
        the model loads the same way later.

        ``move=True`` takes ownership of ``source`` (an upload already in ``tmp/``) and
        renames it into place; otherwise the file is copied first.  Nothing is stored
        unless the file loads with ``weights_only=True``, fits its architecture exactly
        and a probe inference gives finite scores (``RegistryError`` 422 says what is
        wrong).  Identical files are stored once (409 names the existing model).

        ``extras`` are files stored beside the checkpoint (``REPORT_FILES``: the training
        report and its PNGs, e.g. from a teach-live job), ``trained_from`` a small dict
        kept in the metadata (which dataset and job made the model).  ``untrusted``
        (default) opens the file under memory and time caps; the training runner's own
        models are trusted."""
        name = clean_name(name)
        extras = dict(extras or {})
        unknown = sorted(set(extras) - set(REPORT_FILES))
        if unknown:
            raise ValueError(f"extras must be among {REPORT_FILES}, not {unknown}")
        fields = {k: v for k, v in (fields or {}).items() if v not in (None, "")}
        _check_arch(fields)
        upload = Path(source) if move else self._copy_in(Path(source))
        try:
            label = Message("The checkpoint %(name)s", name=repr(original_filename)) \
                if original_filename else Message("The checkpoint")
            meta = self._described(upload, name, fields, label, untrusted)
            if extras:
                meta["report_files"] = sorted(extras)
            if trained_from:
                meta["trained_from"] = jsonable(trained_from)
            self._publish(upload, meta, extras)
            log.info("stored model %s (%s: %s, %d bytes)", meta["id"], meta["name"],
                     meta["summary"], meta["size_bytes"])
            return meta
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(upload)

    def _copy_in(self, source: Path) -> Path:
        """A copy of ``source`` in ``tmp/``, on disk before it is read."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        upload = self.temp_path("copy-")
        durable.copy_file(source, upload)
        return upload

    def _described(self, upload: Path, name: str | None, fields: dict, label: str,
                   untrusted: bool) -> dict:
        """The file validated and converted for serving (in a child process, under memory
        and time caps), and the metadata to store with it; ``RegistryError`` 422 says
        why a file is refused."""
        size = upload.stat().st_size
        sha256 = sha256_file(upload)
        try:
            loaded = engines.ensure_card(engines.checkpoint_source(
                upload, sha256, given=jsonable_fields(fields), label=label,
                untrusted=untrusted, name=name), self.engine, int8=self.engine.builds_int8,
                # An upload is stored once it is validated and converted (fp32); the
                # precision trials of QUANTIZE=auto run when a worker first serves it.
                decide=self.engine.decides and not untrusted)
        except EngineCacheError as exc:  # the cache, not the file: say which store failed
            message = Message("%(problem)s Nothing was stored.", problem=exc.message)
            if exc.full:
                raise RegistryError(507, "store_full", message) from None
            raise RegistryError(503, "store_read_only", message) from None
        except ModelLoadError as exc:
            raise RegistryError(422, "invalid_checkpoint", exc.args[0]) from None
        described = loaded.metadata()
        return {
            "id": self._new_id(),
            **described,
            "name": name or loaded.name,
            "file": ONNX_BUNDLE if loaded.found.get("external_data") else
            MODEL_FILES[loaded.kind],
            "summary": loaded.summary,
            "found": jsonable(described["found"]) or {},
            "size_bytes": size,
            "sha256": sha256,
            "version": sha256[:12],
            "uploaded": now_iso(),
            "created": loaded.created,
            "metrics": jsonable(loaded.metrics) or {},
            "card": loaded.key,  # the engine cache entry made from it just now
            "explain": loaded.cam_unavailable,  # why there is no heatmap, if not
        }

    def _publish(self, upload: Path, meta: dict, extras: dict) -> None:
        """Make the model appear, whole or not at all: its folder is filled in ``tmp/``
        (file, extras, meta.json, all fsynced) and renamed into ``models/``.  A file
        already stored is refused (409 names it)."""
        staging = None
        try:
            with self._locked():
                self.sweep()
                for other in self.list_models():
                    if other.get("sha256") == meta["sha256"]:
                        raise RegistryError(409, "duplicate", Message(
                            "This checkpoint is already stored as %(id)s (%(name)s).",
                            id=other["id"], name=repr(other.get("name"))))
                staging = self.tmp_dir / f"{meta['id']}.staging"
                staging.mkdir()
                os.replace(upload, staging / meta["file"])
                for extra_name, extra_path in extras.items():
                    durable.copy_file(extra_path, staging / extra_name)
                write_json(staging / META_FILE, meta)
                fsync_dir(staging)
                os.rename(staging, self.models_dir / meta["id"])  # the model appears here
                staging = None
                fsync_dir(self.models_dir)
                fsync_dir(self.tmp_dir)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)

    def _new_id(self) -> str:
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
        return f"{stamp}-{secrets.token_hex(3)}"

    def _write_state(self, state: State) -> None:
        write_json(self.pointer, state.as_dict())
        write_json(self.last_good, state.as_dict())

    def activate(self, model_id: str) -> State:
        """Make ``model_id`` the active model; the one it replaces goes on the history."""
        with self._locked():
            if model_id != BUILTIN:
                self.meta(model_id)  # 404 for an unknown id
            current = self.state()
            if current.active == model_id:
                return current
            history = (current.active, *[h for h in current.history if h != current.active])
            state = State(model_id, history[:MAX_HISTORY], now_iso())
            self._write_state(state)
        log.info("activated model %s (was %s)", model_id, current.active)
        return state

    def rollback(self) -> State:
        """Return to the model that was active before the current one (skipping models
        deleted since).  409 when there is nothing to return to; redo() undoes it."""
        with self._locked():
            current = self.state()
            history = self._existing(current.history)
            if not history:
                raise RegistryError(
                    409, "no_history", Message("There is no earlier model to roll back to.")
                )
            redo = (current.active, *[r for r in current.redo if r != current.active])
            state = State(history[0], tuple(history[1:]), now_iso(), redo[:MAX_HISTORY])
            self._write_state(state)
        log.info("rolled back from model %s to %s", current.active, state.active)
        return state

    def redo(self) -> State:
        """Undo the last rollback: return to the model it left (skipping models deleted
        since).  409 when no rollback is there to undo; activating a model forgets them."""
        with self._locked():
            current = self.state()
            ahead = self._existing(current.redo)
            if not ahead:
                raise RegistryError(409, "no_redo", Message("There is no rollback to redo."))
            history = (current.active, *[h for h in current.history if h != current.active])
            state = State(ahead[0], history[:MAX_HISTORY], now_iso(), tuple(ahead[1:]))
            self._write_state(state)
        log.info("redo: from model %s to %s", current.active, state.active)
        return state

    def _existing(self, ids) -> list[str]:
        """``ids`` without the models deleted since (rollback and redo skip those)."""
        return [model_id for model_id in ids if self.exists(model_id)]

    def rename(self, model_id: str, name: str | None) -> dict:
        """Give a stored model a new display name; returns its metadata.  meta.json is
        replaced atomically; when the model is active, the pointer is rewritten too (same
        content, new file), so every worker notices and shows the new name."""
        if model_id == BUILTIN:
            raise RegistryError(409, "not_renamable",
                                Message("The built-in model keeps its name."))
        name = clean_name(name)
        if name is None:
            raise RegistryError(400, "bad_name", Message("Give the model a name (it is empty)."))
        with self._locked():
            meta = self.meta(model_id)
            old = meta.get("name")
            meta["name"] = name
            write_json(self.models_dir / model_id / META_FILE, meta)
            state = self.state()
            if state.active == model_id:
                self._write_state(state)
        log.info("renamed model %s from %r to %r", model_id, old, name)
        return meta

    def delete(self, model_id: str) -> None:
        """Remove an inactive model (409 for the active one and for ``builtin``)."""
        if model_id == BUILTIN:
            raise RegistryError(409, "not_deletable",
                                Message("The built-in model cannot be deleted."))
        with self._locked():
            self.meta(model_id)
            if self.state().active == model_id:
                raise RegistryError(
                    409, "model_active", Message("This model is active; activate another one "
                                                 "(or roll back) before deleting it."),
                )
            # Disappear atomically, then remove the files at leisure.
            trash = self.tmp_dir / f"{model_id}.deleted-{secrets.token_hex(4)}"
            os.rename(self.models_dir / model_id, trash)
            fsync_dir(self.models_dir)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("deleted model %s", model_id)

    def sweep(self, older_than: float = STALE_TMP_SECONDS) -> int:
        """Remove leftovers of interrupted uploads from ``tmp/``, and of interrupted
        pointer and key writes beside ``active.json`` (only old ones: a young file may be
        an upload in progress in another process).  Run by every writer and at start-up."""
        return durable.sweep(self.tmp_dir, older_than) + durable.sweep(
            self.root, older_than, durable.is_temp_name)

    def secret_key(self) -> str:
        """A random key kept in ``MODEL_DIR/secret_key``, made once: every worker and
        every server sharing this directory signs sessions with the same key.  A key
        shorter than ``MIN_SECRET_KEY`` characters (an empty file, one written by hand)
        is replaced by a new one, under the writers' lock, so every worker ends up with
        the same new key."""
        path = self.root / "secret_key"
        key = _read_key(path)
        if len(key) >= MIN_SECRET_KEY:
            return key
        self.root.mkdir(parents=True, exist_ok=True)
        with locked(self.root / ".lock"):
            key = _read_key(path)  # another worker may have replaced it meanwhile
            if len(key) >= MIN_SECRET_KEY:
                return key
            if path.exists():
                log.warning("%s holds a key of %d characters (at least %d are needed); "
                            "replacing it with a new random key (admins log in again)",
                            path, len(key), MIN_SECRET_KEY)
            durable.write_text(path, secrets.token_hex(32) + "\n", mode=0o600)
            return _read_key(path)

    @staticmethod
    def _unknown(model_id) -> RegistryError:
        return unknown_model(model_id)


def _file_of(meta: dict) -> str:
    """The model file's name in its folder (models stored before safetensors and ONNX
    uploads have no "file": theirs is checkpoint.pt)."""
    name = meta.get("file", CHECKPOINT_FILE)
    return name if name in (*MODEL_FILES.values(), ONNX_BUNDLE) else CHECKPOINT_FILE


def _check_arch(fields: dict) -> None:
    arch = str(fields.get("arch") or "").strip() or None
    if arch not in (None, "auto", "onnx") and arch not in supported_archs():
        raise RegistryError(
            400, "bad_arch", Message(
                "Architecture %(arch)s is not supported; use one of: %(supported)s",
                arch=repr(arch),
                supported=", ".join(["auto", *sorted(supported_archs())])))


def _parse_state(text: str) -> State:
    """``active.json``'s contents; ``ValueError`` when they are not a pointer."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    active = data.get("active")
    if not isinstance(active, str) or not valid_id(active):
        raise ValueError(f"no model id in 'active': {str(active)[:40]!r}")

    def ids(key):  # a list of model ids; older files have no "redo"
        items = data.get(key)
        items = items if isinstance(items, list) else []
        return tuple(h for h in items if isinstance(h, str) and valid_id(h))

    changed = data.get("changed")
    return State(active, ids("history"), changed if isinstance(changed, str) else None,
                 ids("redo"))


def _read_key(path: Path) -> str:
    try:
        return path.read_text("utf-8").strip()
    except FileNotFoundError:
        return ""
    except ValueError:  # not text: replaced like a short one
        return ""
