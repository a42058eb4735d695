"""What a model's classes are called on the pages (and in ``/predict``'s ``display_label``)
in the visitor's language.  No Flask here (``webapp.current.label_names()`` builds the
store of the running app).

* **The ImageNet classes.**  A model whose 1,000 labels are ImageNet's, in ImageNet's
  order (the built-in model, an uploaded ImageNet ResNet), is recognised by its labels,
  and its classes are looked up **by class index**, never by their English name, in the
  names that ship in ``translations/imagenet/<language>.json`` (the first of a class's
  comma-separated names, after the project's ``corrections.json``; provenance and licence
  beside them).
* **A teacher's own names** for ImageNet classes (the admin page *Class names*), per
  language and class index, are kept in one small JSON file (``label-names.json`` beside
  the kiosk settings), written like them (temporary file, fsync, rename, under a lock)
  and read again when it changes; they come before the shipped names.
* **Every other model** (a Teach model, an upload with its own classes) keeps the names
  it was given: the teacher typed them in their own language.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import threading
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from babel import Locale, UnknownLocaleError

from webapp.config import PROJECT_ROOT
from webapp.durable import FileCache, locked, write_json
from webapp.messages import Message

log = logging.getLogger(__name__)

IMAGENET_DIR = PROJECT_ROOT / "translations" / "imagenet"
IMAGENET_CLASSES = 1000
# sha256 of ImageNet's 1,000 labels as torchvision names them, joined by newlines (the
# built-in model's labels; tests/stores/test_label_names.py checks it against torchvision).
IMAGENET_SHA256 = "0b0f9fee7c952f257418d62aa701f023a9da13b443a14f5c4291e5724d92967c"
FILE_FORMAT = "label-names/1"
MAX_NAME = 80


class LabelNameError(ValueError):
    """A name or class index that cannot be stored; ``status`` is the HTTP status."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, {}


_imagenet_lists: dict[int, tuple[Sequence[str], bool]] = {}
_imagenet_lock = threading.Lock()


def is_imagenet(labels: Sequence[str]) -> bool:
    """Whether ``labels`` are ImageNet's 1,000 classes in ImageNet's order (remembered
    per list: a served model asks with the same list every time)."""
    if len(labels) != IMAGENET_CLASSES or labels[0] != "tench":
        return False
    known = _imagenet_lists.get(id(labels))
    if known is not None and known[0] is labels:
        return known[1]
    digest = hashlib.sha256("\n".join(labels).encode("utf-8")).hexdigest()
    answer = digest == IMAGENET_SHA256
    with _imagenet_lock:
        if len(_imagenet_lists) > 32:
            _imagenet_lists.clear()
        _imagenet_lists[id(labels)] = (labels, answer)  # the list kept: its id stays its own
    return answer


def shipped_language(locale: str) -> str | None:
    """The file in ``translations/imagenet/`` with the names for ``locale``:
    ``zh_Hans_CN`` -> ``zh`` (Simplified Chinese), ``fr_CA`` -> ``fr``; None for English
    (the labels are English) and for languages without a file (Traditional Chinese)."""
    try:
        loc = Locale.parse(locale)
    except (UnknownLocaleError, ValueError, TypeError):
        return None
    if loc.language == "en":
        return None
    if loc.language == "zh" and (loc.script == "Hant" or (
            loc.script is None and loc.territory in ("TW", "HK", "MO"))):
        return None
    return loc.language if (IMAGENET_DIR / f"{loc.language}.json").is_file() else None


def first_name(text: str) -> str:
    """``"tabby, tabby cat"`` -> ``"tabby"``: the first of comma-separated names."""
    for part in text.replace("，", ",").split(","):
        if part.strip():
            return part.strip()
    return text.strip()


@functools.lru_cache(maxsize=16)
def shipped_names(language: str) -> tuple[str, ...] | None:
    """The 1,000 class names of ``translations/imagenet/<language>.json`` (the first of
    each class's names, after ``corrections.json``), by class index; None without a
    complete file."""
    path = IMAGENET_DIR / f"{language}.json"
    try:
        data = json.loads(path.read_text("utf-8"))
        fixes = json.loads((IMAGENET_DIR / "corrections.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("no ImageNet class names for %s: %s", language, exc)
        return None
    fixes = fixes.get(language, {}) if isinstance(fixes, dict) else {}
    names = []
    for index in range(IMAGENET_CLASSES):
        raw = fixes.get(str(index)) or data.get(str(index))
        if not isinstance(raw, str) or not first_name(raw):
            log.warning("%s: class %d has no name; the file is not used", path, index)
            return None
        names.append(first_name(raw))
    return tuple(names)


def _shipped(labels: Sequence[str], language: str) -> Sequence[str]:
    """The ImageNet class names shipped for ``language``, else ``labels`` (English, or a
    language without a complete file)."""
    code = shipped_language(language)  # None: the labels are the names (English)
    return (shipped_names(code) if code else None) or labels


def check_name(raw) -> str:
    """A teacher's name for a class: text, 1 to 80 characters, no control characters."""
    name = " ".join(unicodedata.normalize("NFC", raw).split()) if isinstance(raw, str) else ""
    if not name:
        raise LabelNameError(400, "bad_label_name", Message(
            "Type the name the class should have (it is empty)."))
    if len(name) > MAX_NAME:
        raise LabelNameError(400, "bad_label_name", Message(
            "The name is %(length)s characters long; at most %(limit)s.",
            length=len(name), limit=MAX_NAME))
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise LabelNameError(400, "bad_label_name", Message(
            "The name contains control characters."))
    return name


def check_index(raw) -> int:
    try:
        index = int(raw)
    except (TypeError, ValueError):
        index = -1
    if isinstance(raw, bool) or not 0 <= index < IMAGENET_CLASSES:
        raise LabelNameError(404, "unknown_class", Message(
            "There is no ImageNet class %(index)s (they are numbered 0 to 999).",
            index=str(raw)[:20]))
    return index


class LabelNames:
    """The names of ImageNet classes per language: shipped, and the teacher's own in the
    file at ``path``."""

    _cache = FileCache()  # every answer looks at the file

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------------ reading

    def edits(self) -> dict[str, dict[int, str]]:
        """language -> {class index: the teacher's name} (a damaged file is logged and
        read as empty: a mistake never takes a page down)."""
        return self._cache.get(self.path, self._read, empty={})

    def _read(self) -> dict[str, dict[int, str]]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
            names = data["names"]
            return {str(lang): {check_index(i): check_name(n) for i, n in items.items()}
                    for lang, items in names.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring the class names file %s: %s", self.path, exc)
            return {}

    def names(self, labels: Sequence[str], language: str) -> Sequence[str]:
        """What each of a model's classes is called in ``language`` (a locale code such as
        ``zh_Hans_CN``), by class index: ImageNet's classes from the teacher's names, the
        shipped ones, else the labels; any other model's labels as they are."""
        if not is_imagenet(labels):
            return labels
        shipped = _shipped(labels, language)
        own = self.edits().get(language)
        if not own:
            return shipped
        names = list(shipped)
        for index, name in own.items():
            names[index] = name
        return names

    def table(self, labels: Sequence[str], language: str) -> list[dict]:
        """Every ImageNet class for the admin page: index, label, the shipped name, the
        teacher's name (or None) and the name shown."""
        shipped = _shipped(labels, language)
        own = self.edits().get(language, {})
        return [{"index": i, "label": label, "shipped": shipped[i], "own": own.get(i),
                 "name": own.get(i) or shipped[i]} for i, label in enumerate(labels)]

    # ------------------------------------------------------------------ writing

    def set_name(self, language: str, index, name) -> dict[int, str]:
        """Store the teacher's ``name`` for class ``index`` in ``language``; an empty or
        None name goes back to the shipped one.  The language's names after the change."""
        index = check_index(index)
        name = None if name is None or (isinstance(name, str) and not name.strip()) \
            else check_name(name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with locked(self.path.with_name(self.path.name + ".lock")):
            edits = {lang: dict(items) for lang, items in (
                self._read() if self.path.exists() else {}).items()}
            own = edits.setdefault(language, {})
            if name is None:
                own.pop(index, None)
            else:
                own[index] = name
            edits = {lang: items for lang, items in edits.items() if items}
            write_json(self.path, {
                "format": FILE_FORMAT,
                "names": {lang: {str(i): n for i, n in sorted(items.items())}
                          for lang, items in sorted(edits.items())},
                "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            }, sort_keys=True)
        return dict(edits.get(language, {}))
