"""Sentences for people that can be translated where they are shown.

Code far from any request (a store, the image decoder, a builder child process) cannot
know which language the person reading its message speaks.  It raises its message as a
``Message``: an ordinary ``str`` holding the English sentence (logs, the command line and
every existing ``str`` use read it as before) that also keeps its gettext ``msgid`` and
parameters.  The web layer shows it with ``webapp.i18n.translate`` in the request's
language; a child process hands it over as JSON (``to_json`` / ``from_json``).

``pybabel extract`` finds ``Message("...")`` like ``_("...")`` (the keyword is in the
Makefile's ``i18n-extract``), so these sentences are in the catalogs with every other one.
No Flask, no Babel here: any layer may import it.
"""

from __future__ import annotations

from collections.abc import Mapping


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
        if isinstance(data, Mapping) and isinstance(data.get("msgid"), str):
            params = data.get("params") if isinstance(data.get("params"), Mapping) else {}
            params = {k: cls.from_json(v) if isinstance(v, Mapping) else v
                      for k, v in params.items()}
            try:
                return cls(data["msgid"], **params)
            except (KeyError, TypeError, ValueError):
                return str(data["msgid"])
        return str(data)


def _rebuild(msgid: str, params: dict) -> Message:
    return Message(msgid, **params)


def _plain(value):
    """Parameters as JSON keeps them: numbers, strings, messages (translated where they
    are shown, like the sentence around them), anything else as its text."""
    if isinstance(value, Message):
        return value.to_json()
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
