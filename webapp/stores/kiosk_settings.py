"""The kiosk's teacher settings: what they are, their defaults, and where they are kept.
No Flask here (``webapp/views/kiosk.py`` builds a store for the running app).

* **Defaults** come from the environment (``KIOSK_IDLE_SECONDS``, ``KIOSK_BARS``, ...,
  ``DEFAULT_LANGUAGE``, see ``webapp/config.py``).
* **The language of the pages** is one of these settings: the kiosk, the upload page
  and the admin pages all speak it (``webapp.i18n``), "" meaning each visitor's browser.
* **A teacher's changes** are kept in one small JSON file (``KIOSK_SETTINGS_FILE``,
  by default ``instance/kiosk.json``) holding only what differs from the defaults.  It is
  written atomically (temporary file, fsync, rename) under a lock file, so every worker
  process and every replica sharing the folder reads either the old or the new settings,
  never half a file, and two simultaneous saves do not lose each other's changes.
* The kiosk page reads the settings on every load and again every time it goes back to
  its start screen, so a change reaches a running kiosk within one idle period.

For a settings form: ``FIELDS`` describes each setting (label, help, kind, bounds);
``store.load()`` gives the current values, ``store.update_from_form(form)`` validates and
saves what a submitted form holds (raising ``KioskSettingsError`` with a message per field),
``store.reset()`` goes back to the defaults.  ``templates/_kiosk_settings_form.html`` has a
Jinja macro that renders that form (the admin area passes its CSRF field as ``hidden``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from webapp.durable import FileCache, locked, write_json
from webapp.messages import Message, normalise

log = logging.getLogger(__name__)

FILE_FORMAT = "kiosk-settings/1"


@dataclass(frozen=True)
class Field:
    name: str  # attribute of KioskSettings and key in the JSON file / form
    setting: str  # the environment setting that gives the default
    label: str  # a Message: the form shows it in the teacher's language
    help: str
    kind: str  # int | bool | language
    low: int = 0
    high: int = 0


FIELDS: tuple[Field, ...] = (
    Field("idle_seconds", "KIOSK_IDLE_SECONDS", Message("Start over after (seconds)"),
          Message("Seconds without a touch, once the camera no longer sees what was "
                  "answered, before the kiosk clears the answer and goes back to its start "
                  "screen. 0 = never."), "int", 0, 86400),
    Field("auto_capture_seconds", "KIOSK_AUTO_CAPTURE_SECONDS",
          Message("Take a picture every (seconds)"),
          Message("The kiosk takes a picture by itself this often while the camera is "
                  "live. 0 = only when someone presses the button."), "int", 0, 3600),
    Field("bars", "KIOSK_BARS", Message("Number of answers"),
          Message("How many guesses (bars) to show."), "int", 1, 5),
    Field("explain", "KIOSK_EXPLAIN", Message("Offer \u201cHow does it see it?\u201d"),
          Message("Show the button that explains the answer with the preprocessing steps "
                  "and a heatmap."), "bool"),
    Field("live", "KIOSK_LIVE", Message("Live answers"),
          Message("The answer and its bars follow the camera while nobody presses the "
                  "button (a few small pictures a second). Off: an answer only when the "
                  "button is pressed."), "bool"),
    Field("language", "DEFAULT_LANGUAGE", Message("Language of the pages"),
          Message("The language of the kiosk, the upload page and the admin pages, class "
                  "names included, for everyone who has not chosen one with the language "
                  "switch. Each visitor's browser: the language the browser asks for."),
          "language"),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)


@dataclass(frozen=True)
class KioskSettings:
    idle_seconds: int = 60
    auto_capture_seconds: int = 0
    bars: int = 3
    explain: bool = True
    live: bool = True
    language: str = ""  # "" = each visitor's browser (Accept-Language)

    @classmethod
    def from_config(cls, config: Mapping) -> KioskSettings:
        """The defaults: the environment settings in the app's config."""
        return cls(**{f.name: config[f.setting] for f in FIELDS if f.setting in config})

    def as_dict(self) -> dict:
        return asdict(self)


class KioskSettingsError(ValueError):
    """Invalid settings; ``errors`` maps each bad field to a message for a person."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def parse_value(fld: Field, raw: object, languages: Mapping[str, str]):
    """A value from a form (a string) or from JSON (typed) -> the field's type; raises
    ValueError with a message for a person.  ``languages``: the locale codes with a
    catalog (a language is one of them, as people write it: "zh-CN", "zh"; or "")."""
    if fld.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(Message("choose yes or no"))
    if fld.kind == "int":
        if isinstance(raw, bool):
            raise ValueError(Message("enter a whole number"))
        try:
            value = int(str(raw).strip()) if not isinstance(raw, int) else raw
        except ValueError:
            raise ValueError(Message("enter a whole number")) from None
        if not fld.low <= value <= fld.high:
            raise ValueError(Message("must be from %(low)s to %(high)s", low=fld.low,
                                     high=fld.high))
        return value
    if fld.kind == "language":
        code = str(raw).strip()
        if not code:
            return ""
        found = normalise(code, languages)
        if found is None:
            raise ValueError(Message("no catalog for the language %(code)s; available: "
                                     "%(available)s", code=repr(code[:20]),
                                     available=", ".join(languages)))
        return found
    raise AssertionError(fld.kind)  # pragma: no cover


def validate(changes: Mapping[str, object], languages: Mapping[str, str]) -> dict:
    """Parse every known key of ``changes``; unknown keys are an error too."""
    values, errors = {}, {}
    by_name = {f.name: f for f in FIELDS}
    for key, raw in changes.items():
        fld = by_name.get(key)
        if fld is None:
            errors[key] = Message("unknown setting (known: %(known)s)",
                                  known=", ".join(FIELD_NAMES))
            continue
        try:
            values[key] = parse_value(fld, raw, languages)
        except ValueError as exc:
            errors[key] = exc.args[0]
    if errors:
        raise KioskSettingsError(errors)
    return values


class KioskSettingsStore:
    """The effective kiosk settings: ``defaults`` overlaid with the file at ``path``.
    ``languages``: locale code -> name of every language with a catalog."""

    fields = FIELDS
    _cache = FileCache()  # the file is looked at on every request

    def __init__(self, path: str | Path, defaults: KioskSettings, languages: Mapping[str, str]):
        self.path = Path(path)
        self._languages = dict(languages)
        if defaults.language:  # DEFAULT_LANGUAGE as people write it ("zh_CN") -> "zh_Hans_CN"
            with contextlib.suppress(ValueError):
                defaults = replace(defaults, language=parse_value(
                    FIELDS[FIELD_NAMES.index("language")], defaults.language, languages))
        self.defaults = defaults

    def overrides(self) -> dict:
        """What the file sets (valid entries only; a bad entry is logged and ignored, so
        a hand-edited mistake never takes the kiosk down).  Read again only when the
        file changed: every request asks which language the teacher fixed."""
        return dict(self._cache.get(self.path, self._read, empty={},
                                    key=tuple(self._languages)))

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("ignoring the kiosk settings file %s: %s", self.path, exc)
            return {}
        values = data.get("settings") if isinstance(data, dict) else None
        if not isinstance(values, dict):
            log.warning("ignoring the kiosk settings file %s: no \"settings\" object", self.path)
            return {}
        good = {}
        for key, raw in values.items():
            try:
                good.update(validate({key: raw}, self._languages))
            except KioskSettingsError as exc:
                log.warning("kiosk settings file %s: ignoring %s", self.path, exc)
        return good

    def load(self) -> KioskSettings:
        settings = replace(self.defaults, **self.overrides())
        return settings

    def update(self, changes: Mapping[str, object]) -> KioskSettings:
        """Validate ``changes`` (all or some fields), merge them into the file, save."""
        values = validate(changes, self._languages)
        with self._locked():
            current = self._read()
            current.update(values)
            # Keep only what differs from the defaults: a later change of the environment
            # default then applies to every field the teacher never changed.
            stored = {k: v for k, v in current.items() if getattr(self.defaults, k) != v}
            write_json(self.path, {
                "format": FILE_FORMAT,
                "settings": stored,
                "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            }, sort_keys=True)
        return self.load()

    def update_from_form(self, form: Mapping[str, str]) -> KioskSettings:
        """A submitted settings form: an unticked checkbox is absent, which means no."""
        changes = {f.name: form[f.name] for f in FIELDS if f.name in form}
        for fld in FIELDS:
            if fld.kind == "bool" and fld.name not in form:
                changes[fld.name] = False
        return self.update(changes)

    def reset(self) -> KioskSettings:
        """Forget every change: the environment defaults apply again."""
        with self._locked(), contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return self.load()

    def languages(self) -> dict[str, str]:
        """Locale code -> name of every language the pages can speak."""
        return dict(self._languages)

    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return locked(self.path.with_name(self.path.name + ".lock"))


__all__ = ["FIELDS", "Field", "KioskSettings", "KioskSettingsError", "KioskSettingsStore",
           "validate"]
