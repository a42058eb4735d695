"""The admin's kiosk settings: the teacher panel (idle time, auto-capture, bars,
explanation, language) at ``/admin/kiosk`` and the same as JSON at ``/admin/api/kiosk``.
The settings store is ``webapp.stores.kiosk_settings``; the kiosk page reads it."""

from __future__ import annotations

from flask import flash, jsonify, redirect, render_template, request, url_for

from webapp import current
from webapp.http import uploads
from webapp.http.errors import ApiError
from webapp.i18n import _
from webapp.messages import Message, MessageList
from webapp.stores.kiosk_settings import KioskSettingsError
from webapp.views.admin import bp


def _kiosk_page(errors=None, status=200):
    settings = current.kiosk_settings()
    return render_template("admin/kiosk.html", store=settings, values=settings.load(),
                           errors=errors or {}), status


@bp.get("/kiosk")
def kiosk_settings_page():
    """The teacher settings panel: idle time, auto-capture, bars, explanation, language."""
    return _kiosk_page()


@bp.post("/kiosk")
def kiosk_settings_save():
    try:
        current.kiosk_settings().update_from_form(request.form)
    except KioskSettingsError as exc:
        flash(_("Nothing was saved: please fix the fields marked below."), "danger")
        return _kiosk_page(exc.errors, 400)
    flash(_("Kiosk settings saved. A running kiosk picks them up at its next start screen."),
          "success")
    return redirect(url_for("admin.kiosk_settings_page"))


@bp.post("/kiosk/reset")
def kiosk_settings_reset():
    current.kiosk_settings().reset()
    flash(_("Kiosk settings reset to the server's defaults."), "success")
    return redirect(url_for("admin.kiosk_settings_page"))


@bp.get("/api/kiosk")
def api_kiosk_settings():
    return jsonify(current.kiosk_settings().load().as_dict())


@bp.route("/api/kiosk", methods=["PUT", "PATCH"])
def api_kiosk_settings_update():
    """JSON with some or all of the settings; 400 naming every bad field, nothing saved."""
    changes = uploads.json_object(Message(
        'Send the settings, e.g. {"idle_seconds": 60, "bars": 3}.'))
    try:
        settings = current.kiosk_settings().update(changes)
    except KioskSettingsError as exc:
        raise ApiError(400, "bad_settings", Message(
            "Some settings are not accepted: %(fields)s", fields=MessageList(
                [Message("%(key)s: %(problem)s", key=name, problem=problem)
                 for name, problem in exc.errors.items()])), fields=exc.errors) from None
    return jsonify(settings.as_dict())
