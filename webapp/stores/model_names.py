"""What a stored model is named and described by, checked before any of it is stored:
its id (made by the server), its display name (never a path), the facts kept in its
``meta.json`` as plain JSON; and the one error every model-store operation raises."""

from __future__ import annotations

import datetime as _dt
import math
import re
import unicodedata

from webapp.messages import Message

BUILTIN = "builtin"
MAX_NAME = 80
ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


class RegistryError(Exception):
    """Something the caller asked for cannot be done; ``status`` is the HTTP status."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def unknown_model(model_id) -> RegistryError:
    shown = model_id if isinstance(model_id, str) and len(model_id) < 80 else "?"
    return RegistryError(404, "unknown_model",
                         Message("There is no model %(id)s in the store.", id=repr(shown)))


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def valid_id(model_id: str) -> bool:
    return model_id == BUILTIN or bool(ID_RE.match(model_id or ""))


def clean_name(raw: str | None) -> str | None:
    """A display name, or ``RegistryError`` 400.  Names never become paths, but one that
    looks like a path (``../x``, ``a/b``) or carries control characters is refused so
    nobody is misled by it."""
    if raw is None:
        return None
    name = unicodedata.normalize("NFC", raw).strip()
    if not name:
        return None
    problem = None
    if len(name) > MAX_NAME:
        problem = Message("it is %(length)s characters long (at most %(limit)s)",
                          length=len(name), limit=MAX_NAME)
    elif any(unicodedata.category(ch).startswith("C") for ch in name):
        problem = Message("it contains control characters")
    elif "/" in name or "\\" in name or ".." in name or name.startswith("."):
        problem = Message("it looks like a file path ('/', '\\', '..' or a leading '.')")
    if problem:
        raise RegistryError(400, "bad_name", Message(
            "The model name is not accepted: %(problem)s. Names are for display only; use "
            "letters, digits, spaces and - _ ( ) + , :", problem=problem))
    return name


def jsonable(value, depth: int = 0):
    """Checkpoint metrics as plain JSON: numbers, strings, booleans, short lists and
    dicts; one-element tensors become numbers, anything else is dropped."""
    if depth > 4:
        return None
    if isinstance(value, bool | str) or value is None:
        return value[:200] if isinstance(value, str) else value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "numel") and hasattr(value, "item"):
        return jsonable(value.item(), depth) if value.numel() == 1 else None
    if isinstance(value, list | tuple):
        items = [jsonable(v, depth + 1) for v in value[:50]]
        return [v for v in items if v is not None]
    if isinstance(value, dict):
        out = {}
        for key, item in list(value.items())[:50]:
            item = jsonable(item, depth + 1)
            if isinstance(key, str) and item is not None:
                out[key[:100]] = item
        return out
    return None


def jsonable_fields(fields: dict) -> dict:
    """What the person said, as the child process takes it (JSON): a labels file's bytes
    travel as base64 (the child reads them in whatever encoding they were saved in:
    ``webapp.checkpoints.labels.decode_text``)."""
    import base64

    out = dict(fields)
    if isinstance(out.get("labels"), bytes):
        out["labels"] = {"base64": base64.b64encode(out["labels"]).decode("ascii")}
    return out
