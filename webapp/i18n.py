"""The interface's language: gettext catalogs through Flask-Babel, for templates, Python
messages and the pages' JavaScript alike.

* **Catalogs** live in ``translations/<locale>/LC_MESSAGES/messages.po`` (compiled ``.mo``
  beside each, kept in the repository); ``make i18n-extract``, ``i18n-update`` and
  ``i18n-compile`` run ``pybabel`` (docs/translating.md).  English is the source language:
  it needs no catalog.  A language is offered when its compiled catalog exists.
* **Which language a request gets**, first that applies: ``?lang=<code>`` (the switch on
  the pages; remembered in a cookie), that cookie, the language the teacher fixed (the
  admin's settings, kept with the kiosk settings; ``DEFAULT_LANGUAGE`` until a teacher
  changes it), the browser's ``Accept-Language``, English.
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
import logging
from pathlib import Path
from urllib.parse import urlencode

from babel import Locale, UnknownLocaleError
from babel.messages.extract import extract_from_file
from flask import Flask, current_app, request, url_for
from flask_babel import Babel, get_locale, get_translations, gettext, lazy_gettext, ngettext

from webapp import current
from webapp.config import PROJECT_ROOT, ConfigError
from webapp.messages import normalise, render

__all__ = ["_", "_l", "current_language", "gettext", "init_app", "js_messages", "languages",
           "lazy_gettext", "ngettext", "translate"]

_ = gettext
_l = lazy_gettext

ENGLISH = "en"
COOKIE = "lang"
CATALOGS = PROJECT_ROOT / "translations"
JS_DIR = PROJECT_ROOT / "static" / "js"
# What the scripts call: _(message, params) and ngettext(singular, plural, n, params).
JS_KEYWORDS = {"_": None, "ngettext": (1, 2)}

log = logging.getLogger(__name__)


def init_app(app: Flask) -> None:
    app.config.setdefault("BABEL_TRANSLATION_DIRECTORIES", str(CATALOGS))
    app.config.setdefault("BABEL_DEFAULT_LOCALE", ENGLISH)
    Babel(app, locale_selector=select_locale)
    catalogs = Path(app.config["BABEL_TRANSLATION_DIRECTORIES"])
    app.extensions["languages"] = find_languages(catalogs)
    check_default_language(app)

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
                "current_language": current_language(), "js_messages": js_messages,
                "switch_url": switch_url}

    # Also for the macros templates import (they see no context): messages raised as
    # ``Message``, the lang attribute, lists of names.
    app.jinja_env.globals.update(translate=translate, bcp47=bcp47,
                                 list_separator=list_separator)
    app.jinja_env.filters["join_names"] = join_names

    app.json.ensure_ascii = False  # Chinese labels as UTF-8, readable with curl


def check_default_language(app: Flask) -> None:
    """Startup check: the language the owner fixed must have a catalog.  The retired
    ``KIOSK_LANGUAGE`` (the kiosk's label language, when labels were translated by a file
    of their own) still works as ``DEFAULT_LANGUAGE`` when that is not set: the labels
    now follow the language of the page."""
    config = app.config
    setting = "DEFAULT_LANGUAGE"
    if not config.get("DEFAULT_LANGUAGE") and config.get("KIOSK_LANGUAGE"):
        setting = "KIOSK_LANGUAGE"
        config["DEFAULT_LANGUAGE"] = config["KIOSK_LANGUAGE"]
        log.warning("KIOSK_LANGUAGE is retired: every page (class names included) now "
                    "speaks one language; use DEFAULT_LANGUAGE=%s instead",
                    config["KIOSK_LANGUAGE"])
    fixed = config.get("DEFAULT_LANGUAGE", "")
    available = app.extensions["languages"]
    if fixed and normalise(fixed, available) is None:
        raise ConfigError(f"{setting}={fixed!r}: no catalog for it (available: "
                          f"{', '.join(available)}); docs/translating.md says how to add "
                          "a language")


def find_languages(directory: Path) -> dict[str, str]:
    """Locale code -> its own name ("English", "中文") for English and every compiled
    catalog in ``directory`` (with the script or country when two share a language)."""
    codes = [ENGLISH]
    for mo in sorted(directory.glob("*/LC_MESSAGES/messages.mo")):
        try:
            Locale.parse(mo.parent.parent.name)
        except (UnknownLocaleError, ValueError):
            continue
        codes.append(mo.parent.parent.name)
    primaries = [Locale.parse(code).language for code in codes]
    found = {}
    for code, primary in zip(codes, primaries):
        locale = Locale.parse(code)
        name = (locale.get_language_name(code) if primaries.count(primary) == 1
                else locale.get_display_name(code)) or code
        found[code] = name[:1].upper() + name[1:]
    return found


def languages() -> dict[str, str]:
    return current_app.extensions["languages"]


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
    """The language the teacher fixed for everyone (the admin's settings, by default
    ``DEFAULT_LANGUAGE``), or "" (each browser's own)."""
    try:
        return current.kiosk_settings().load().language
    except OSError as exc:
        log.warning("cannot read the teacher settings: %s", exc)
        return current_app.config.get("DEFAULT_LANGUAGE", "")


def current_language() -> str:
    """The request's locale code ("en", "zh_Hans_CN")."""
    return str(get_locale() or ENGLISH)


def bcp47(code: str) -> str:
    """A locale code as HTML's ``lang`` attribute writes it: "zh-Hans-CN", not "zh_Hans_CN"."""
    return code.replace("_", "-")


def html_lang() -> str:
    """The ``lang`` attribute of the page."""
    return bcp47(current_language())


def list_separator() -> str:
    """What separates the items of a list in the request's language: ", " or "、"."""
    try:
        pattern = get_locale().list_patterns["standard"]["middle"]
    except (AttributeError, KeyError, TypeError):
        return ", "
    return pattern.replace("{0}", "").replace("{1}", "") or ", "


def join_names(items) -> str:
    """Names as one list in the request's language: "pen, cup" / "笔、杯子"."""
    return list_separator().join(str(item) for item in items)


def switch_url(code: str) -> str:
    """This page in language ``code`` (the language switch): the same address with
    ``?lang=``, or the home page of its area (its blueprint's ``index``, else the site's)
    after a form was posted."""
    if request.method != "GET":
        home = f"{request.blueprints[-1]}.index" if request.blueprints else ""
        return (url_for(home) if home in current_app.view_functions else "/") \
            + f"?{COOKIE}={code}"
    args = {k: v for k, v in request.args.items(multi=False) if k != COOKIE}
    return request.path + "?" + urlencode({**args, COOKIE: code})


def translate(text) -> str:
    """Any message in the request's language: a ``Message`` by its msgid and parameters,
    a lazy string as it evaluates, a plain string through the catalog (unchanged when the
    catalog does not know it)."""
    if isinstance(text, str):
        return render(text, gettext)
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
    if current_language() == ENGLISH:
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
