"""Classroom network mode's part of the pages (``webapp/classroom.py``): the certificate
authority a phone or a PC may install once (``/classroom/ca.crt``), and what the kiosk and
admin pages show so others can join -- the address as a QR code and the line on the
certificate (``classroom_invitation()`` in templates, ``templates/_classroom.html``)."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, request, send_file

from webapp import classroom

bp = Blueprint("classroom", __name__, url_prefix="/classroom")


@bp.get("/ca.crt")
def ca_certificate():
    """The local CA's certificate (public; its key never leaves the server).  A phone
    that installs it trusts this server without a warning."""
    if not current_app.config.get("CLASSROOM"):
        abort(404)
    path = classroom.tls_folder(current_app.config) / "ca.crt"
    if not path.is_file():
        abort(404)
    return send_file(path, mimetype="application/x-x509-ca-cert", as_attachment=True,
                     download_name="classroom-ca.crt", max_age=0)


@bp.app_context_processor
def _invitation():
    def classroom_invitation():
        return classroom.invitation(current_app.config, request.host)

    return {"classroom_invitation": classroom_invitation}
