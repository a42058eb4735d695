"""The interface's language: gettext catalogs through Flask-Babel, for templates, Python
messages and the pages' JavaScript alike.

* **Catalogs** live in ``translations/<locale>/LC_MESSAGES/messages.po`` (compiled ``.mo``
  beside each, kept in the repository); ``make i18n-extract``, ``i18n-update`` and
  ``i18n-compile`` run ``pybabel`` (docs/translating.md).  English is the source language:
  it needs no catalog.  A language is offered when its compiled catalog exists.
* **Which language a request gets**, first that applies: ``?lang=<code>`` (the switch on
  the public pages; remembered in a cookie), that cookie, the language the teacher fixed
  (``DEFAULT_LANGUAGE``), the browser's ``Accept-Language``, English.
* **Python**: ``_`` / ``gettext`` in views, ``lazy_gettext`` (``_l``) for module-level
  text, and ``webapp.messages.Message`` for sentences raised far from a request;
  ``translate()`` shows any of them in the request's language.
* **JavaScript** calls ``_("Starting over in {n} s…", {n: 4})`` and ``ngettext(...)``
  (``static/js/i18n.js``).  ``pybabel`` extracts those calls from ``static/js/`` into the
  same catalogs, and every page carries the translations its scripts need as JSON
  (``js_messages``, the ``data-messages`` attribute of ``<html>``), so there is no
  second dictionary to keep.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.messages.extract import extract_from_file
from flask import Flask, current_app, request
from flask_babel import Babel, get_locale, get_translations, gettext, lazy_gettext, ngettext

from webapp.config import PROJECT_ROOT, ConfigError
from webapp.messages import Message

__all__ = ["_", "_l", "gettext", "init_app", "js_messages", "languages", "lazy_gettext",
           "ngettext", "translate"]

_ = gettext
_l = lazy_gettext

ENGLISH = "en"
COOKIE = "lang"
CATALOGS = PROJECT_ROOT / "translations"
JS_DIR = PROJECT_ROOT / "static" / "js"
# What the scripts call: _(message, params) and ngettext(singular, plural, n, params).
JS_KEYWORDS = {"_": None, "ngettext": (1, 2)}


def init_app(app: Flask) -> None:
    app.config.setdefault("BABEL_TRANSLATION_DIRECTORIES", str(CATALOGS))
    app.config.setdefault("BABEL_DEFAULT_LOCALE", ENGLISH)
    Babel(app, locale_selector=select_locale)
    catalogs = Path(app.config["BABEL_TRANSLATION_DIRECTORIES"])
    app.extensions["languages"] = find_languages(catalogs)
    fixed = app.config.get("DEFAULT_LANGUAGE", "")
    if fixed and normalise(fixed, app.extensions["languages"]) is None:
        raise ConfigError(f"DEFAULT_LANGUAGE={fixed!r}: no catalog for it (available: "
                          f"{', '.join(app.extensions['languages'])})")

    @app.after_request
    def _remember_choice(response):
        chosen = normalise(request.args.get(COOKIE, ""), languages())
        if chosen:
            response.set_cookie(COOKIE, chosen, max_age=365 * 24 * 3600, samesite="Lax",
                                httponly=True)
        return response

    @app.context_processor
    def _page_language():
        return {"html_lang": html_lang(), "languages": languages(),
                "current_language": str(get_locale() or ENGLISH), "js_messages": js_messages}

    app.json.ensure_ascii = False  # Chinese labels as UTF-8, readable with curl


def find_languages(directory: Path) -> dict[str, str]:
    """Locale code -> its own name ("English", "中文 (中国)") for English and every
    compiled catalog in ``directory``."""
    found = {ENGLISH: "English"}
    for mo in sorted(directory.glob("*/LC_MESSAGES/messages.mo")):
        code = mo.parent.parent.name
        try:
            found[code] = Locale.parse(code).get_display_name(code) or code
        except (UnknownLocaleError, ValueError):
            continue
    return found


def languages() -> dict[str, str]:
    return current_app.extensions["languages"]


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


def select_locale() -> str:
    available = languages()
    for wish in (request.args.get(COOKIE), request.cookies.get(COOKIE),
                 fixed_language()):
        chosen = normalise(wish or "", available)
        if chosen:
            return chosen
    for wish, _quality in request.accept_languages:
        chosen = normalise(wish, available)
        if chosen:
            return chosen
    return ENGLISH


def fixed_language() -> str:
    """The language the server's owner fixed for everyone (``DEFAULT_LANGUAGE``), or ""."""
    return current_app.config.get("DEFAULT_LANGUAGE", "")


def html_lang() -> str:
    """The ``lang`` attribute of the page: BCP 47 ("zh-CN"), not the locale's "zh_CN"."""
    return str(get_locale() or ENGLISH).replace("_", "-")


def translate(text) -> str:
    """Any message in the request's language: a ``Message`` by its msgid and parameters,
    a lazy string as it evaluates, a plain string through the catalog (unchanged when the
    catalog does not know it)."""
    if isinstance(text, Message):
        params = {k: translate(v) if isinstance(v, Message) else v
                  for k, v in text.params.items()}
        return gettext(text.msgid, **params) if params else gettext(text.msgid)
    if isinstance(text, str) and text:
        return gettext(text)
    return str(text)


@functools.lru_cache(maxsize=1)
def js_msgids() -> tuple:
    """Every message the scripts in ``static/js/`` ask ``_``/``ngettext`` for (what
    ``pybabel extract`` finds there too)."""
    found = []
    for path in sorted(JS_DIR.glob("*.js")):
        for _lineno, message, _comments, _context in extract_from_file(
                "javascript", str(path), keywords=JS_KEYWORDS):
            found.append(message)
    return tuple(dict.fromkeys(found))


def js_messages() -> str:
    """The translations of the scripts' messages in the request's language, as JSON for
    the page's ``data-messages`` attribute (English: empty, the scripts' own text is
    English).  A plural message maps to the list of its forms."""
    if str(get_locale() or ENGLISH) == ENGLISH:
        return "{}"
    table = {}
    catalog = get_translations()
    for message in js_msgids():
        if isinstance(message, tuple):  # the singular's and the plural's forms
            table[message[0]] = [catalog.ungettext(message[0], message[1], n) for n in (1, 2)]
        else:
            translated = gettext(message)
            if translated != message:
                table[message] = translated
    return json.dumps(table, ensure_ascii=False, sort_keys=True)  # escaped by Jinja
