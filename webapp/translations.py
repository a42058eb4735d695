"""Label translations: one JSON file per language in a folder (``TRANSLATIONS_DIR``,
by default ``translations/`` in the project)::

    translations/de.json
    {"name": "Deutsch", "labels": {"tabby": "Tigerkatze", "espresso": "Espresso"}}

``name`` is shown when choosing a language; ``labels`` maps a model's label (as
``/predict`` answers it) to what the kiosk shows.  A label without an entry is shown as it
is, so a file may translate only the classes a class or museum uses.  English ships as
``en.json`` with no entries (the labels are English already).  Adding a language means
adding a file: nothing else changes.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

CODE_RE = re.compile(r"^[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?$")  # en, de, pt-BR, zh_Hant
ENGLISH = "en"


class TranslationError(ValueError):
    """A translation file is missing or malformed; the message names the file."""


class Translations:
    """The translation files in one folder, each read once and re-read when it changes."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._cache: dict[str, tuple[float, str, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def path(self, code: str) -> Path:
        if not CODE_RE.match(code or ""):
            raise TranslationError(
                f"{code!r} is not a language code (use e.g. 'en', 'de' or 'pt-BR')"
            )
        return self.directory / f"{code}.json"

    def languages(self) -> dict[str, str]:
        """Code -> language name of every readable file, English always included."""
        found = {ENGLISH: "English"}
        if self.directory.is_dir():
            for file in sorted(self.directory.glob("*.json")):
                if not CODE_RE.match(file.stem):
                    continue
                try:
                    found[file.stem] = self._read(file.stem)[0]
                except TranslationError:
                    continue  # a broken file is not offered
        return found

    def exists(self, code: str) -> bool:
        return code == ENGLISH or (CODE_RE.match(code or "") is not None
                                   and self.path(code).is_file())

    def labels(self, code: str) -> dict[str, str]:
        """label -> translated label (empty for English without a file)."""
        if code == ENGLISH and not self.path(code).is_file():
            return {}
        return dict(self._read(code)[1])

    def name(self, code: str) -> str:
        if code == ENGLISH and not self.path(code).is_file():
            return "English"
        return self._read(code)[0]

    def _read(self, code: str) -> tuple[str, dict[str, str]]:
        path = self.path(code)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            raise TranslationError(f"no translation file {path}") from None
        with self._lock:
            cached = self._cache.get(code)
            if cached and cached[0] == mtime:
                return cached[1], cached[2]
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TranslationError(f"{path}: not a readable JSON file ({exc})") from None
        labels = data.get("labels") if isinstance(data, dict) else None
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in labels.items()
        ):
            raise TranslationError(
                f'{path}: expected {{"name": "...", "labels": {{"label": "translation"}}}}'
            )
        name = data.get("name") if isinstance(data.get("name"), str) else code
        with self._lock:
            self._cache[code] = (mtime, name, labels)
        return name, labels
