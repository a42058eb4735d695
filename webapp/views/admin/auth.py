"""Who may come into the admin area: the guard every admin request goes through (see
``webapp.views.admin``), the login form, logging out, and what ``create_app`` sets up for
them (the session key, the login limiter)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from pathlib import Path
from urllib.parse import urlsplit

from flask import (
    Flask,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf import FlaskForm
from limits import parse as parse_limit
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from wtforms import PasswordField
from wtforms.validators import DataRequired

from webapp import current, durable
from webapp.config import ConfigError
from webapp.http.errors import error_json
from webapp.i18n import _, _l, translate
from webapp.messages import Message
from webapp.stores import admin_password
from webapp.stores.registry import Registry
from webapp.views.admin import bp, is_api, setup

log = logging.getLogger(__name__)

SESSION_HOURS = 12
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class LoginForm(FlaskForm):
    token = PasswordField(_l("Admin token"), validators=[DataRequired()])

# --------------------------------------------------------------------------- setup


def configure_session_key(app: Flask, registry: Registry) -> None:
    """Sessions must verify in every worker and replica: without SECRET_KEY, use the key
    kept in MODEL_DIR (created once), so a login survives a restart too."""
    if app.config["SECRET_KEY"] != app.config.get("SECRET_KEY_GENERATED"):
        if len(str(app.config["SECRET_KEY"])) < 32:
            log.warning("SECRET_KEY is only %d characters long; use at least 32 random "
                        "characters", len(str(app.config["SECRET_KEY"])))
        return  # set by the environment or the caller
    try:
        app.config["SECRET_KEY"] = registry.secret_key()
    except OSError as exc:
        token = app.config.get("ADMIN_TOKEN")
        if token:
            app.config["SECRET_KEY"] = hmac.new(
                token.encode(), b"webapp session key", hashlib.sha256
            ).hexdigest()
        log.warning("cannot keep a session key in %s (%s); %s", registry.root, exc,
                    "deriving it from ADMIN_TOKEN" if token else "sessions are per process")


def login_limiter(config) -> tuple[MovingWindowRateLimiter, object]:
    """Failed logins and wrong bearer tokens per client address (in memory, per worker),
    at most ``ADMIN_LOGIN_LIMIT``; also warns about a short ``ADMIN_TOKEN``."""
    try:
        limit = parse_limit(config["ADMIN_LOGIN_LIMIT"])
    except ValueError:
        raise ConfigError(
            f"ADMIN_LOGIN_LIMIT={config['ADMIN_LOGIN_LIMIT']!r}: use e.g. '10 per "
            "minute' or '5/minute;50/hour'"
        ) from None
    token = config.get("ADMIN_TOKEN") or ""
    if token and len(token) < 16:
        log.warning("ADMIN_TOKEN is only %d characters long; use at least 16 random "
                    "characters", len(token))
    return MovingWindowRateLimiter(MemoryStorage()), limit


# --------------------------------------------------------------------------- auth


def _token() -> str:
    return current_app.config.get("ADMIN_TOKEN") or ""


def _password_hash() -> str:
    """The password chosen at the server machine (``setup``), when there is no token:
    ADMIN_TOKEN wins."""
    return "" if _token() else setup.password_hash()


def _token_matches(given: str) -> bool:
    if not _token():
        return admin_password.matches(_password_hash(), given)
    return hmac.compare_digest(given.encode("utf-8"), _token().encode("utf-8"))


def _fingerprint(generation: str) -> str:
    """Binds a session to the current ADMIN_TOKEN and session ``generation``: changing the
    token or logging out logs everyone out."""
    key = str(current_app.config["SECRET_KEY"]).encode()
    bound = f"{_token() or _password_hash()}\0{generation}".encode()
    return hmac.new(key, bound, hashlib.sha256).hexdigest()[:32]


def _sessions_file() -> Path:
    return current.registry().root / "sessions.json"


def _session_generation() -> str | None:
    """The current session generation, or None when ``sessions.json`` is missing or
    damaged: then no session is valid (a deleted or garbled file must not bring back the
    sessions a logout ended) until a login starts a new generation."""
    try:
        generation = json.loads(_sessions_file().read_text("utf-8"))["generation"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return generation if isinstance(generation, str) and len(generation) >= 16 else None


def _end_every_session() -> str:
    """A new generation: every session cookie issued so far stops being valid.  (There
    is one admin token, so one admin identity: its sessions end together.)"""
    current.registry().root.mkdir(parents=True, exist_ok=True)
    generation = secrets.token_hex(16)
    durable.write_json(_sessions_file(), {"generation": generation,
                                          "since": int(time.time())})
    return generation


def _generation_for_login() -> str:
    """The generation a new login is bound to: the current one, or a new one when there
    is none readable (under the store's lock, so logins in several workers at once agree
    on one)."""
    generation = _session_generation()
    if generation is not None:
        return generation
    root = current.registry().root
    root.mkdir(parents=True, exist_ok=True)
    with durable.locked(root / ".lock"):
        return _session_generation() or _end_every_session()


def _session_ok() -> bool:
    fingerprint = session.get("admin")
    since = session.get("admin_since")
    generation = _session_generation()
    return (
        generation is not None
        and isinstance(fingerprint, str)
        and isinstance(since, int | float)
        and hmac.compare_digest(fingerprint, _fingerprint(generation))
        and 0 <= time.time() - since < SESSION_HOURS * 3600
    )


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _client_key() -> str:
    return request.remote_addr or "unknown"


def _too_many_failures() -> int | None:
    """Seconds until the next attempt is allowed, if this client is over the limit."""
    limiter, limit = current_app.extensions["admin_login_limit"]
    if limiter.test(limit, "admin-login", _client_key()):
        return None
    reset = limiter.get_window_stats(limit, "admin-login", _client_key()).reset_time
    return max(1, int(reset - time.time()) + 1)


def _count_failure() -> None:
    limiter, limit = current_app.extensions["admin_login_limit"]
    limiter.hit(limit, "admin-login", _client_key())
    log.warning("failed admin authentication from %s", _client_key())


def _rate_limited(retry_after: int):
    message = Message("Too many failed attempts; try again in %(seconds)s s.",
                      seconds=retry_after)
    if is_api():
        response = error_json(429, "too_many_attempts", message)
    else:
        response = render_template("admin/login.html", form=LoginForm(),
                                   error=translate(message)), 429
    response = current_app.make_response(response)
    response.headers["Retry-After"] = str(retry_after)
    return response


@bp.before_request
def _guard():
    if not _token() and not _password_hash():
        return setup.first_run()  # the set-password page on this machine, else 403
    if request.endpoint == "admin.login":
        return None
    bearer = _bearer() if is_api() else None
    if bearer is not None:
        retry = _too_many_failures()
        if retry:
            return _rate_limited(retry)
        if _token_matches(bearer):
            g.admin_via = "token"
            return None
        _count_failure()
        response = current_app.make_response(
            error_json(401, "bad_token", Message("The bearer token is not the admin token."))
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="admin"'
        return response
    if _session_ok():
        g.admin_via = "session"
        if request.method not in SAFE_METHODS:
            current_app.extensions["csrf"].protect()  # CSRFError (400) without a token
        return None
    if is_api():
        response = current_app.make_response(error_json(401, "unauthorized", Message(
            "Send the admin token as 'Authorization: Bearer <ADMIN_TOKEN>', or log in at "
            "/admin/login.")))
        response.headers["WWW-Authenticate"] = 'Bearer realm="admin"'
        return response
    target = request.full_path.rstrip("?") if request.method == "GET" else url_for("admin.index")
    return redirect(url_for("admin.login", next=target))


def _safe_next(target: str | None) -> str:
    """Only a path inside the admin area (no open redirect to another site)."""
    if target and not any(ord(c) < 32 or ord(c) == 127 for c in target):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and parts.path.startswith("/admin/") \
                and not target.startswith("//"):
            return target.rstrip("?")
    return url_for("admin.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    if request.method == "GET":
        if _session_ok():
            return redirect(url_for("admin.index"))
        return render_template("admin/login.html", form=form)
    retry = _too_many_failures()
    if retry:
        return _rate_limited(retry)
    if not form.validate_on_submit():  # CSRF token or field missing: not a guess
        errors = "; ".join(str(e) for errs in form.errors.values() for e in errs)
        return render_template("admin/login.html", form=form, error=_(
            "The form was not accepted: %(errors)s", errors=errors)), 400
    if not _token_matches(form.token.data):
        _count_failure()
        return render_template("admin/login.html", form=LoginForm(formdata=None),
                               error=(_("That is not the admin token.") if _token()
                                      else _("That is not the admin password."))), 401
    try:
        generation = _generation_for_login()
    except OSError as exc:
        log.error("cannot start an admin session generation in %s: %s",
                  current.registry().root, exc)
        return render_template("admin/login.html", form=LoginForm(formdata=None), error=_(
            "Logging in needs to write to the model store (MODEL_DIR), which cannot be "
            "written right now (%(reason)s). The admin API still works with the admin "
            "token or password as a bearer token.", reason=exc.strerror or str(exc))), 503
    session.clear()
    session["admin"] = _fingerprint(generation)
    session["admin_since"] = int(time.time())
    log.info("admin logged in from %s", _client_key())
    return redirect(_safe_next(request.args.get("next")))


@bp.post("/logout")
def logout():
    """Ends this session and every copy of it (and the admin's other sessions).  When
    that cannot be saved, this browser's cookie goes, and the page says that copies of it
    are still valid and what ends them."""
    try:
        _end_every_session()
    except OSError as exc:
        log.error("could not end the admin sessions in %s: %s", current.registry().root, exc)
        session.clear()
        return render_template("admin/login.html", form=LoginForm(formdata=None), error=_(
            "Logging out could not be saved: the model store (MODEL_DIR) cannot be written "
            "(%(reason)s). This browser is logged out, but copies of its session stay valid "
            "for up to %(hours)s hours. Make MODEL_DIR writable and log in and out again, "
            "or change ADMIN_TOKEN and restart the server, to end them.",
            reason=exc.strerror or str(exc), hours=SESSION_HOURS)), 503
    session.clear()
    flash(_("Logged out."), "info")
    return redirect(url_for("admin.login"))


@bp.context_processor
def _template_context():
    return {"logged_in": g.get("admin_via") == "session",
            "password_login": not _token()}
