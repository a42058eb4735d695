"""The first run: no ``ADMIN_TOKEN`` and no password yet.  Opened from the server machine
itself (loopback), the admin area asks the teacher to choose a password
(``/admin/setup``, kept hashed by ``webapp.stores.admin_password``); from anywhere else it
refuses and says how to get in.

Why a password chosen at the machine, and not a token printed at startup: a printed token
scrolls away in the server's log (or hides in ``journalctl`` and ``docker logs``), changes
at every start and has to be copied by hand, while a teacher remembers a password of
their own; being at the machine is the proof of being its owner.

"From the server machine itself" is strict, because a proxy on the same machine makes
every visitor's connection come from 127.0.0.1: the connection's own peer (before
``TRUSTED_PROXIES`` rewrites it) and the client address after it must both be loopback,
the request must name a loopback host (``127.0.0.1``, ``localhost``, ``[::1]``: a page
reached through a proxy or a rebound DNS name does not), and it must carry no forwarding
header at all (``X-Forwarded-For``, ``Forwarded``, ``X-Real-IP``).
"""

from __future__ import annotations

import ipaddress
import logging

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import PasswordField
from wtforms.validators import DataRequired, EqualTo, Length

from webapp import current
from webapp.http.errors import error_json
from webapp.i18n import _, _l
from webapp.stores import admin_password
from webapp.views.admin import bp, is_api

log = logging.getLogger(__name__)

FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Forwarded-Host")


class SetupForm(FlaskForm):
    password = PasswordField(_l("New admin password"), validators=[
        DataRequired(message=_l("Type a password.")),
        Length(min=admin_password.MIN_LENGTH, max=1024,
               message=_l("Use at least 8 characters (and at most 1024)."))])
    confirm = PasswordField(_l("The same password again"), validators=[
        DataRequired(message=_l("Type the password a second time.")),
        EqualTo("password", message=_l("The two passwords differ."))])


def password_hash() -> str:
    return admin_password.read_hash(current.registry().root)


def is_local() -> bool:
    """A browser on the server machine itself, straight to this server (see above)."""
    environ = request.environ
    peer = environ.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR",
                                                           environ.get("REMOTE_ADDR"))
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    return (_loopback(peer) and _loopback(request.remote_addr)
            and (host == "localhost" or _loopback(host.strip("[]")))
            and not any(name in request.headers for name in FORWARDING_HEADERS))


def _loopback(value: str | None) -> bool:
    try:
        address = ipaddress.ip_address((value or "").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def local_admin_url() -> str:
    """The admin page as the teacher opens it on the server machine."""
    scheme = "https" if current_app.config.get("CLASSROOM") else "http"
    return f"{scheme}://127.0.0.1:{current_app.config['PORT']}{url_for('admin.index')}"


def hint() -> str:
    return _("No admin password has been chosen yet. On the computer that runs the server, "
             "open %(url)s to choose one, or start the server with ADMIN_TOKEN set.",
             url=local_admin_url())


def first_run():
    """The admin guard's answer while there is neither a token nor a password."""
    if admin_password.damaged(current.registry().root):
        log.error("%s cannot be read: the admin area stays shut",
                  admin_password.path(current.registry().root))
        message = _("The admin password file cannot be read. On the computer that runs the "
                    "server, delete admin_password.json in the model folder (MODEL_DIR) and "
                    "choose a password again, or start the server with ADMIN_TOKEN set.")
        if is_api():
            return error_json(403, "admin_disabled", message)
        return render_template("admin/disabled.html", hint=message), 403
    local = is_local()
    if local and request.endpoint == "admin.setup":
        return None
    if is_api():
        return error_json(403, "admin_disabled", hint())
    if local and request.method == "GET":
        return redirect(url_for("admin.setup"))
    return render_template("admin/disabled.html", hint=hint()), 403


@bp.route("/setup", methods=["GET", "POST"])
def setup():
    """Choose the admin password (reached only through ``first_run``: on the server
    machine, with nothing set; afterwards the guard sends everyone to the login)."""
    if password_hash() or current_app.config.get("ADMIN_TOKEN"):
        return redirect(url_for("admin.login"))
    form = SetupForm()
    if request.method == "GET":
        return render_template("admin/setup.html", form=form)
    if not form.validate_on_submit():
        return render_template("admin/setup.html", form=form), 400
    if not admin_password.create(current.registry().root, form.password.data):
        flash(_("A password was chosen a moment ago, in another window. Log in with it."),
              "warning")
        return redirect(url_for("admin.login"))
    log.info("admin password chosen from this machine (%s)",
                admin_password.path(current.registry().root))
    flash(_("Password saved. Log in with it."), "success")
    return redirect(url_for("admin.login"))
