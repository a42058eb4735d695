"""Sentences for people that can be translated where they are shown.

Code far from any request (a store, the image decoder, a builder child process) cannot
know which language the person reading its message speaks.  It raises its message as a
``Message``: an ordinary ``str`` holding the English sentence (logs, the command line and
every existing ``str`` use read it as before) that also keeps its gettext ``msgid`` and
parameters.  The web layer shows it with ``webapp.i18n.translate`` in the request's
language; a child process hands it over as JSON (``to_json`` / ``from_json``).

``pybabel extract`` finds ``Message("...")`` like ``_("...")`` (the keyword is in the
Makefile's ``i18n-extract``), so these sentences are in the catalogs with every other one.
``render`` shows one through any catalog; ``catalog_gettext`` is a language's catalog
outside a request (the training process draws its report in the teacher's language);
``normalise`` reads a language code as people write it.
No Flask here: any layer may import it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

from webapp.config import PROJECT_ROOT


class Message(str):
    """``Message("The file is %(size)s MB.", size=3)`` -> "The file is 3 MB."."""

    msgid: str
    params: dict

    def __new__(cls, msgid: str, **params) -> Message:
        self = super().__new__(cls, msgid % params if params else msgid)
        self.msgid = msgid
        self.params = params
        return self

    def __reduce__(self):  # pickles (multiprocessing) keep the msgid and parameters
        return (_rebuild, (self.msgid, self.params))

    def to_json(self) -> dict:
        return {"msgid": self.msgid, "params": {k: _plain(v) for k, v in self.params.items()}}

    @classmethod
    def from_json(cls, data: object) -> str:
        """A message sent as ``to_json`` (or a plain string) -> ``Message`` (or ``str``)."""
        if isinstance(data, Mapping) and isinstance(data.get("parts"), list):
            return MessageList([cls.from_json(part) for part in data["parts"]],
                               cls.from_json(data.get("separator", "; ")))
        if isinstance(data, Mapping) and isinstance(data.get("msgid"), str):
            params = data.get("params") if isinstance(data.get("params"), Mapping) else {}
            params = {k: cls.from_json(v) if isinstance(v, Mapping) else v
                      for k, v in params.items()}
            try:
                return cls(data["msgid"], **params)
            except (KeyError, TypeError, ValueError):
                return str(data["msgid"])
        return str(data)


class MessageList(Message):
    """Several messages shown one after the other (one per bad field, say), each in the
    reader's language: ``MessageList([Message(...), Message(...)], "; ")``.  The
    separator may be a ``Message`` too (``Message(", ")``: "，" in Chinese)."""

    parts: list
    separator: str

    def __new__(cls, parts, separator: str = "; ") -> MessageList:
        parts = list(parts)
        self = str.__new__(cls, separator.join(str(part) for part in parts))
        self.msgid, self.params = "", {}
        self.parts, self.separator = parts, separator
        return self

    def __reduce__(self):
        return (MessageList, (self.parts, self.separator))

    def to_json(self) -> dict:
        return {"parts": [_plain(part) for part in self.parts],
                "separator": _plain(self.separator)}


def reason(exc: BaseException) -> str:
    """What an exception says: its ``Message`` when it was raised with one (so it is shown
    in the reader's language), else its text."""
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, Message) else str(exc)


def to_json(text):
    """What a message is as JSON (another process reads it back with
    ``Message.from_json``): a ``Message`` as its msgid and parameters, anything else as
    it is (a plain string, None)."""
    return text.to_json() if isinstance(text, Message) else text


def from_json(data):
    """``to_json``'s value back: a ``Message``, a plain string, or None."""
    return None if data is None else Message.from_json(data)


def _rebuild(msgid: str, params: dict) -> Message:
    return Message(msgid, **params)


def _plain(value):
    """Parameters as JSON keeps them: numbers, strings, messages (translated where they
    are shown, like the sentence around them), anything else as its text."""
    if isinstance(value, Message):
        return value.to_json()
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def render(text, gettext: Callable[[str], str]) -> str:
    """``text`` through ``gettext`` (msgid -> translation): a ``Message`` by its msgid with
    its parameters filled in (messages among them rendered too), a ``MessageList`` part by
    part, a plain string as the catalog has it (unchanged when it does not)."""
    if isinstance(text, MessageList):
        separator = render(text.separator, gettext) if isinstance(text.separator, Message) \
            else text.separator
        return separator.join(render(part, gettext) for part in text.parts)
    if isinstance(text, Message):
        params = {k: render(v, gettext) if isinstance(v, Message) else v
                  for k, v in text.params.items()}
        translated = gettext(text.msgid)
        try:
            return translated % params if params else translated
        except (KeyError, TypeError, ValueError):  # a translation that lost a parameter
            return str(text)
    if isinstance(text, str) and text:
        return gettext(text)
    return str(text)


@functools.lru_cache(maxsize=8)
def catalog_gettext(locale: str | None) -> Callable[[str], str]:
    """The ``gettext`` of ``locale``'s catalog in ``translations/`` (English: none)."""
    if not locale or locale == "en":
        return str
    from babel.support import Translations  # only where a catalog is read

    return Translations.load(str(PROJECT_ROOT / "translations"), [locale]).gettext


def normalise(code: str, available: Iterable[str]) -> str | None:
    """A code as people write it ("zh-CN", "zh_cn", "zh") -> the available locale it
    means, or None."""
    code = (code or "").strip().replace("-", "_")
    if not code:
        return None
    by_lower = {c.lower(): c for c in available}
    if code.lower() in by_lower:
        return by_lower[code.lower()]
    primary = code.split("_")[0].lower()
    return next((c for c in available if c.split("_")[0].lower() == primary), None)
