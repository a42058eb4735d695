"""The kiosk: a full-screen teaching page at ``/kiosk`` (camera, one big button, big bars,
"How does it see it?"), its settings as JSON for the page, and ``flask kiosk`` commands.

The page itself only calls ``/predict`` and ``/explain``; what it shows is shaped by the
teacher settings (``webapp/stores/kiosk_settings.py``), read from disk on every page load
and every time the page goes back to its start screen.
"""

from __future__ import annotations

import click
from flask import Blueprint, jsonify, render_template

from webapp import current
from webapp.http import marks
from webapp.i18n import _l, translate
from webapp.serving.explain import EXPLANATION_TEMPLATE
from webapp.stores.kiosk_settings import FIELDS, KioskSettingsError

bp = Blueprint("kiosk", __name__, url_prefix="/kiosk", cli_group="kiosk")

# Plain-language confidence, from the top score (the kiosk's page gets them, in its
# language, with its settings: static/js/kiosk.js).
CONFIDENCE_WORDS = ((0.70, _l("very sure")), (0.40, _l("fairly sure")),
                    (0.15, _l("not sure")), (0.0, _l("just a guess")))


# The kiosk settings of the running app (what the admin's settings panel saves too).
store = current.kiosk_settings


def page_settings() -> dict:
    """Everything the kiosk page needs: the settings and the words it shows, in the
    request's language (the class names come with every answer: ``display_label``)."""
    return {
        **store().load().as_dict(),
        "confidence_words": [[low, str(words)] for low, words in CONFIDENCE_WORDS],
        "explanation_template": translate(EXPLANATION_TEMPLATE),
    }


@bp.get("")
@marks.mark(marks.FRAMEABLE, marks.CAMERA, marks.NO_STORE)
def page():
    return render_template("kiosk.html", kiosk=page_settings())


@bp.get("/settings.json")
@marks.mark(marks.FRAMEABLE, marks.CAMERA, marks.NO_STORE)
def settings_json():
    return jsonify(page_settings())


# --------------------------------------------------------------------------- command line
# flask --app app kiosk show | set idle_seconds=30 bars=5 language=zh_CN | reset | languages


@bp.cli.command("show")
def show_command():
    """Print the kiosk settings in force and where they come from."""
    kiosk = store()
    settings, overrides = kiosk.load(), kiosk.overrides()
    click.echo(f"settings file: {kiosk.path}")
    for fld in FIELDS:
        source = "settings file" if fld.name in overrides else f"default ({fld.setting})"
        click.echo(f"{fld.name:22} {getattr(settings, fld.name)!s:8} {source}")


@bp.cli.command("set")
@click.argument("assignments", nargs=-1, required=True, metavar="NAME=VALUE...")
def set_command(assignments):
    """Change kiosk settings, e.g. `flask kiosk set idle_seconds=30 language=zh_CN`."""
    changes = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.UsageError(f"{item!r}: write NAME=VALUE")
        changes[name.strip()] = value
    try:
        store().update(changes)
    except KioskSettingsError as exc:
        for name, message in exc.errors.items():
            click.echo(f"error: {name}: {message}", err=True)
        raise SystemExit(1) from None
    show_command.callback()


@bp.cli.command("reset")
def reset_command():
    """Forget the teacher's changes: the KIOSK_* environment defaults apply again."""
    store().reset()
    show_command.callback()


@bp.cli.command("languages")
def languages_command():
    """List the languages the pages can speak (those with a catalog)."""
    for code, name in store().languages().items():
        click.echo(f"{code:12} {name}")
