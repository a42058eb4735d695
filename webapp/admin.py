"""The admin area: ``/admin`` (login form, model table, upload, activate, roll back,
delete, try an image) and ``/admin/api/*`` (the same over HTTP with
``Authorization: Bearer $ADMIN_TOKEN``).  The store itself is ``webapp.registry``.

Security, in order of the checks every admin request goes through:

* ``ADMIN_TOKEN`` unset: the whole area answers 403 with a page saying how to enable it.
* API requests with a bearer token: compared with ``hmac.compare_digest``; no cookie is
  involved, so no CSRF token is needed.
* Everything else needs the session cookie set by the login form (signed with
  ``SECRET_KEY``, bound to the current ``ADMIN_TOKEN`` and to the session generation
  kept in ``MODEL_DIR/sessions.json``, valid for ``SESSION_HOURS``; logging out starts a
  new generation, so a copy of any admin's cookie is worthless from then on, in every
  worker and replica; ``Secure`` and HSTS over HTTPS: ``webapp.security``),
  and every state-changing request carries a CSRF token (Flask-WTF): in the form, or in
  the ``X-CSRFToken`` header for the page's own XHR calls.  Without a session: pages
  redirect to the login form, the API answers 401.
* Failed logins and wrong bearer tokens are counted per client address (``limits``,
  in memory, per worker process); over ``ADMIN_LOGIN_LIMIT`` the answer is 429.

Checkpoint uploads are streamed to a temp file inside ``MODEL_DIR`` (never held in
memory), limited by ``MAX_CHECKPOINT_MB`` instead of ``MAX_UPLOAD_MB``.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from pathlib import Path
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, CSRFProtect
from limits import parse as parse_limit
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from werkzeug.exceptions import RequestEntityTooLarge
from wtforms import PasswordField
from wtforms.validators import DataRequired

from model_loader import ModelLoadError, supported_archs
from webapp import api, durable, kiosk, uploads
from webapp.config import ConfigError
from webapp.errors import ApiError, error_json, too_large
from webapp.kiosk_settings import KioskSettingsError
from webapp.registry import BUILTIN, Registry, RegistryError, unknown_model
from webapp.serving import imaging

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/admin")

SESSION_HOURS = 12
UPLOAD_PATHS = ("/admin/api/models", "/admin/models")  # POST bodies spooled to MODEL_DIR
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
ENABLE_HINT = (
    "Set the ADMIN_TOKEN environment variable to a long random secret and restart the "
    "server, e.g. ADMIN_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(24))')."
)


class LoginForm(FlaskForm):
    token = PasswordField("Admin token", validators=[DataRequired()])


# --------------------------------------------------------------------------- setup


def init_app(app: Flask) -> None:
    """Register the admin area (and the Teach pages nested in it): the session key, CSRF,
    the login limiter and the spooled checkpoint uploads."""
    registry = app.extensions["registry"]
    _configure_secret_key(app, registry)

    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)  # only the admin area checks
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # valid as long as the session
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.extensions.get("csrf") or CSRFProtect(app)

    try:
        limit = parse_limit(app.config["ADMIN_LOGIN_LIMIT"])
    except ValueError:
        raise ConfigError(
            f"ADMIN_LOGIN_LIMIT={app.config['ADMIN_LOGIN_LIMIT']!r}: use e.g. '10 per "
            "minute' or '5/minute;50/hour'"
        ) from None
    app.extensions["admin_login_limit"] = (MovingWindowRateLimiter(MemoryStorage()), limit)

    uploads.spool(app, uploads.SpooledRoute(  # checkpoints: to MODEL_DIR/tmp
        UPLOAD_PATHS, "MAX_CHECKPOINT_MB",
        lambda: current_app.extensions["registry"].temp_path("upload-")))
    token = app.config.get("ADMIN_TOKEN") or ""
    if token and len(token) < 16:
        log.warning("ADMIN_TOKEN is only %d characters long; use at least 16 random "
                    "characters", len(token))

    from webapp import teach

    teach.init_app(app)  # teach it live: datasets and training jobs in DATA_DIR
    app.register_blueprint(bp)


def _configure_secret_key(app: Flask, registry: Registry) -> None:
    """Sessions must verify in every worker and replica: without SECRET_KEY, use the key
    kept in MODEL_DIR (created once), so a login survives a restart too."""
    if app.config["SECRET_KEY"] != app.config.get("SECRET_KEY_GENERATED"):
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


def registry() -> Registry:
    return current_app.extensions["registry"]


# --------------------------------------------------------------------------- auth


def _token() -> str:
    return current_app.config.get("ADMIN_TOKEN") or ""


def _token_matches(given: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), _token().encode("utf-8"))


def _fingerprint() -> str:
    """Binds a session to the current ADMIN_TOKEN and session generation: changing the
    token or logging out logs everyone out."""
    key = str(current_app.config["SECRET_KEY"]).encode()
    bound = f"{_token()}\0{_session_generation()}".encode()
    return hmac.new(key, bound, hashlib.sha256).hexdigest()[:32]


def _sessions_file() -> Path:
    return registry().root / "sessions.json"


def _session_generation() -> str:
    """The current session generation ("" before the first logout)."""
    try:
        return str(json.loads(_sessions_file().read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _end_every_session() -> None:
    """A new generation: every session cookie issued so far stops being valid.  (There
    is one admin token, so one admin identity: its sessions end together.)"""
    registry().root.mkdir(parents=True, exist_ok=True)
    durable.write_json(_sessions_file(), {"generation": secrets.token_hex(16),
                                          "since": int(time.time())})


def _session_ok() -> bool:
    fingerprint = session.get("admin")
    since = session.get("admin_since")
    return (
        isinstance(fingerprint, str)
        and isinstance(since, int | float)
        and hmac.compare_digest(fingerprint, _fingerprint())
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


def _is_api() -> bool:
    return request.path.startswith("/admin/api/")


def _rate_limited(retry_after: int):
    message = f"Too many failed attempts; try again in {retry_after} s."
    if _is_api():
        response = error_json(429, "too_many_attempts", message)
    else:
        response = render_template("admin/login.html", form=LoginForm(), error=message), 429
    response = current_app.make_response(response)
    response.headers["Retry-After"] = str(retry_after)
    return response


@bp.before_request
def _guard():
    if not _token():
        if _is_api():
            return error_json(403, "admin_disabled", "The admin area is disabled. "
                              + ENABLE_HINT)
        return render_template("admin/disabled.html", hint=ENABLE_HINT), 403
    if request.endpoint == "admin.login":
        return None
    bearer = _bearer() if _is_api() else None
    if bearer is not None:
        retry = _too_many_failures()
        if retry:
            return _rate_limited(retry)
        if _token_matches(bearer):
            g.admin_via = "token"
            return None
        _count_failure()
        response = current_app.make_response(
            error_json(401, "bad_token", "The bearer token is not the admin token.")
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="admin"'
        return response
    if _session_ok():
        g.admin_via = "session"
        if request.method not in SAFE_METHODS:
            current_app.extensions["csrf"].protect()  # CSRFError (400) without a token
        return None
    if _is_api():
        response = current_app.make_response(error_json(
            401, "unauthorized",
            "Send the admin token as 'Authorization: Bearer <ADMIN_TOKEN>', or log in at "
            "/admin/login.",
        ))
        response.headers["WWW-Authenticate"] = 'Bearer realm="admin"'
        return response
    target = request.full_path.rstrip("?") if request.method == "GET" else url_for("admin.index")
    return redirect(url_for("admin.login", next=target))


def _safe_next(target: str | None) -> str:
    """Only a path inside the admin area (no open redirect to another site)."""
    if target:
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
        errors = "; ".join(e for errs in form.errors.values() for e in errs)
        return render_template("admin/login.html", form=form,
                               error=f"The form was not accepted: {errors}"), 400
    if not _token_matches(form.token.data):
        _count_failure()
        return render_template("admin/login.html", form=LoginForm(formdata=None),
                               error="That is not the admin token."), 401
    session.clear()
    session["admin"] = _fingerprint()
    session["admin_since"] = int(time.time())
    log.info("admin logged in from %s", _client_key())
    return redirect(_safe_next(request.args.get("next")))


@bp.post("/logout")
def logout():
    """Ends this session and every copy of it (and the admin's other sessions)."""
    try:
        _end_every_session()
    except OSError as exc:  # a read-only store: this browser's cookie goes at least
        log.warning("could not end the admin sessions in %s: %s", registry().root, exc)
    session.clear()
    flash("Logged out.", "info")
    return redirect(url_for("admin.login"))


# --------------------------------------------------------------------------- errors


@bp.errorhandler(CSRFError)
def _csrf_error(exc: CSRFError):
    message = (f"{exc.description} The form has expired or did not come from this site: "
               "reload the admin page and try again.")
    if _is_api():
        return error_json(400, "csrf_failed", message)
    return render_template("error.html", status=400, message=message), 400


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(exc):
    if request.spooled_route is not None:
        limit = current_app.config["MAX_CHECKPOINT_MB"]
        return too_large(f"The checkpoint is larger than the {limit:g} MB limit "
                         "(MAX_CHECKPOINT_MB).", image=False)
    limit = current_app.config["MAX_UPLOAD_MB"]  # "try an image" keeps the image limit
    return too_large(f"The upload is larger than the {limit:g} MB limit (MAX_UPLOAD_MB).")


# Errors of the disk under MODEL_DIR, in words (never the path: messages reach clients).
_STORE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_STORE_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


@bp.errorhandler(OSError)
def _storage_error(exc: OSError):
    """The model store cannot be written (disk full, read-only, no permission): say so;
    nothing half-written stays behind (uploads are removed in teardown, the registry
    builds models in staging), and serving goes on with the current model."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _STORE_FULL:
        status, code = 507, "store_full"
        message = (f"The model store (MODEL_DIR) has no room for this ({reason}); nothing "
                   "was stored. Delete models you no longer need, or give the store more "
                   "space, and try again.")
    elif exc.errno in _STORE_READ_ONLY:
        status, code = 503, "store_read_only"
        message = (f"The model store (MODEL_DIR) cannot be written ({reason}); nothing "
                   "was changed. The current model goes on serving.")
    else:
        log.exception("unexpected error on %s %s", request.method, request.path)
        status, code = 500, "internal_error"
        message = "Something went wrong on the server."
    if status != 500:
        log.error("model store: %s %s failed: %s", request.method, request.path, exc)
    if _is_api():
        return error_json(status, code, message)
    return render_template("error.html", status=status, message=message), status


@bp.errorhandler(RegistryError)
def _registry_error(exc: RegistryError):
    if _is_api():
        return error_json(exc.status, exc.code, exc.message)
    return render_template("error.html", status=exc.status, message=exc.message), exc.status


# --------------------------------------------------------------------------- model table


def model_entries() -> tuple[list[dict], dict]:
    return api.holder().model_entries()


# How a checkpoint's metrics read in the model table: (label, kind), kind "percent" for
# fractions 0..1.  Keys not listed are shown with their name in words.
METRIC_LABELS = {
    "val_accuracy": ("Validation accuracy", "percent"),
    "test_accuracy": ("Accuracy on unseen test pictures", "percent"),
    "accuracy": ("Accuracy", "percent"),
    "macro_f1": ("Macro F1", "number"),
    "val_loss": ("Validation loss", "number"),
    "evaluated_on": ("Evaluated on", "text"),
    "best_epoch": ("Best epoch", "number"),
    "epochs_run": ("Epochs run", "number"),
    "epochs": ("Epochs", "number"),
    "train_images": ("Training pictures", "number"),
    "strategy": ("What trained", "text"),
    "backbone": ("Started from", "text"),
    "pretrained": ("ImageNet weights to start", "yes/no"),
    "image_size": ("Image size", "pixels"),
}
MAIN_METRICS = ("val_accuracy", "test_accuracy", "accuracy")  # shown first, in bold


def readable_metrics(metrics: dict | None) -> list[dict]:
    """A checkpoint's metrics as ``[{"key", "label", "text", "main"}]`` for people:
    accuracies in per cent, the rest with three significant digits, booleans as yes/no;
    the accuracies first.  Nested values (lists, dicts) are left out."""
    rows = []
    for key, value in (metrics or {}).items():
        if value is None or isinstance(value, list | dict):
            continue
        label, kind = METRIC_LABELS.get(key, (key.replace("_", " ").capitalize(), "number"))
        if isinstance(value, bool) or kind == "yes/no":
            text = "yes" if value else "no"
        elif not isinstance(value, int | float):
            text = str(value)
        elif kind == "percent" and 0 <= value <= 1:
            text = f"{value * 100:.1f}%"
        elif kind == "pixels":
            text = f"{value:g} px"
        else:
            text = f"{value:.3g}" if isinstance(value, float) else str(value)
        rows.append({"key": key, "label": label, "text": text, "main": key in MAIN_METRICS})
    return sorted(rows, key=lambda row: not row["main"])


def _serving() -> dict:
    holder = api.holder()
    classifier = holder.get()
    # notice: the active model could not be loaded; model_notice: about the model served
    # (the bundled fallback, an unverified file).  The public pages show neither.
    return {**classifier.info, "pid": os.getpid(), "notice": holder.notice,
            "model_notice": classifier.loaded.notice}


def _store_upload() -> dict:
    """The uploaded checkpoint (already on disk in MODEL_DIR/tmp), validated and stored."""
    upload = request.files.get("checkpoint") or request.files.get("file")
    if upload is None:
        raise RegistryError(400, "no_checkpoint", "No checkpoint received. Send it as a "
                            "multipart form field named 'checkpoint'.")
    stream = upload.stream
    path = Path(getattr(stream, "name", "") or "")
    if not path.name.startswith("upload-"):  # not spooled (cannot happen on our routes)
        raise RegistryError(400, "no_checkpoint", "The checkpoint was not received as a file.")
    stream.flush()
    os.fsync(stream.fileno())
    stream.close()
    if path.stat().st_size == 0:
        raise RegistryError(400, "empty_file", "The uploaded checkpoint is empty (0 bytes).")
    fields = {key: request.form.get(key) for key in MODEL_FIELDS}
    meta = registry().add(path, name=request.form.get("name"),
                          fields={**fields, "labels": _labels_file()}, move=True,
                          original_filename=Path(upload.filename or "").name[:100] or None)
    if request.form.get("activate") in ("1", "on", "true", "yes"):
        registry().activate(meta["id"])
        meta["activated"] = True
    return meta


MAX_LABELS_BYTES = 1 << 20  # a labels file of 1 MB holds ~50,000 names
# Form fields sent with a model file, as model_loader.load_checkpoint takes them.
MODEL_FIELDS = ("arch", "classes", "input_size", "mean", "std")


def _labels_file() -> bytes | None:
    """The contents of the optional ``labels`` file sent with a checkpoint (a file
    part, or a text field: ``curl -F 'labels=<labels.txt'``)."""
    upload = request.files.get("labels")
    if upload is not None and upload.filename:
        data = upload.stream.read(MAX_LABELS_BYTES + 1)
    else:
        data = (request.form.get("labels") or "").encode("utf-8")
    if len(data) > MAX_LABELS_BYTES:
        raise RegistryError(413, "too_large", "The labels file is larger than 1 MB; it "
                            "should hold one class name a line.")
    return data or None


# --------------------------------------------------------------------------- pages


@bp.get("/")
def index():
    entries, state = model_entries()
    return render_template("admin/index.html", entries=entries, state=state,
                           serving=_serving(), added=request.args.get("added"),
                           archs=sorted(supported_archs()),
                           trial=g.get("trial"), trial_error=g.get("trial_error"),
                           trial_id=g.get("trial_id"))


def _page_error(exc: RegistryError):
    flash(exc.message, "danger")
    return index(), exc.status


@bp.post("/models")
def upload_page():
    try:
        meta = _store_upload()
    except RegistryError as exc:
        return _page_error(exc)
    flash(f"Stored {meta['name']} as {meta['id']} ({meta['summary']})"
          + (" and activated it." if meta.get("activated") else "."), "success")
    return redirect(url_for("admin.index", added=meta["id"]))


def _page_change(change, message):
    """A form's change to the store: done, a message, back to the page -- or the page
    again with the reason (and its 4xx status)."""
    try:
        result = change()
    except RegistryError as exc:
        return _page_error(exc)
    flash(message(result), "success")
    return redirect(url_for("admin.index"))


def _display_name(model_id: str) -> str:
    return "the built-in model" if model_id == BUILTIN else registry().meta(model_id)["name"]


@bp.post("/models/<model_id>/activate")
def activate_page(model_id):
    return _page_change(
        lambda: registry().activate(model_id),
        lambda state: f"Activated {_display_name(model_id)} ({model_id}).")


@bp.post("/rollback")
def rollback_page():
    return _page_change(registry().rollback, lambda state: f"Rolled back to {state.active}.")


@bp.post("/redo")
def redo_page():
    return _page_change(registry().redo, lambda state: f"Back to {state.active}.")


@bp.post("/models/<model_id>/rename")
def rename_page(model_id):
    return _page_change(lambda: registry().rename(model_id, request.form.get("name")),
                        lambda meta: f"Renamed {model_id} to {meta['name']}.")


@bp.post("/models/<model_id>/delete")
def delete_page(model_id):
    return _page_change(lambda: registry().delete(model_id),
                        lambda _: f"Deleted {model_id}.")


@bp.post("/try")
def try_page():
    """The no-JavaScript "try an image": the admin page with the predictions."""
    model_id = request.form.get("model_id", "")
    g.trial_id = model_id
    try:
        g.trial, _ = _trial(model_id)
        status = 200
    except (RegistryError, ApiError, imaging.ImageError, ModelLoadError) as exc:
        g.trial_error = getattr(exc, "message", None) or str(exc)
        status = getattr(exc, "status", 503)
    return index(), status


def _trial(model_id: str):
    """Classify the request's image(s) with any stored model, without activating it."""
    if not registry().exists(model_id):
        raise unknown_model(model_id)
    uploads = api.uploads_from_request()
    if not _is_api():
        uploads = uploads[:1]  # the page shows one result
    classifier = api.holder().classifier_for(model_id)
    return api.classify(uploads, api.parse_topk(), None, classifier)


# --------------------------------------------------------------------------- API


@bp.get("/api/models")
def api_list():
    entries, state = model_entries()
    return jsonify(active=state["active"], history=state["history"], redo=state["redo"],
                   changed=state["changed"], serving=_serving(), models=entries)


@bp.post("/api/models")
def api_upload():
    meta = _store_upload()
    response = jsonify({**meta, "builtin": False,
                        "active": registry().state().active == meta["id"]})
    response.status_code = 201
    response.headers["Location"] = url_for("admin.api_model", model_id=meta["id"])
    return response


@bp.get("/api/models/<model_id>")
def api_model(model_id):
    entries, _ = model_entries()
    for entry in entries:
        if entry["id"] == model_id:
            return jsonify(entry)
    raise unknown_model(model_id)


@bp.post("/api/models/<model_id>/activate")
def api_activate(model_id):
    return jsonify(registry().activate(model_id).as_dict())


@bp.post("/api/rollback")
def api_rollback():
    return jsonify(registry().rollback().as_dict())


@bp.post("/api/redo")
def api_redo():
    return jsonify(registry().redo().as_dict())


@bp.patch("/api/models/<model_id>")
def api_rename(model_id):
    """JSON ``{"name": "..."}``: the new display name."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise ApiError(400, "bad_json", 'Send the new name as JSON, e.g. {"name": "Fruit v2"}.')
    registry().rename(model_id, body["name"])
    return api_model(model_id)


@bp.delete("/api/models/<model_id>")
def api_delete(model_id):
    registry().delete(model_id)
    return jsonify(deleted=model_id)


@bp.post("/api/models/<model_id>/predict")
def api_predict(model_id):
    body, _ = _trial(model_id)
    return jsonify(body)


# --------------------------------------------------------------------------- kiosk settings


def _kiosk_page(errors=None, status=200):
    settings = kiosk.store()
    return render_template("admin/kiosk.html", store=settings, values=settings.load(),
                           errors=errors or {}), status


@bp.get("/kiosk")
def kiosk_settings_page():
    """The teacher settings panel: idle time, auto-capture, bars, explanation, language."""
    return _kiosk_page()


@bp.post("/kiosk")
def kiosk_settings_save():
    try:
        kiosk.store().update_from_form(request.form)
    except KioskSettingsError as exc:
        flash("Nothing was saved: please fix the fields marked below.", "danger")
        return _kiosk_page(exc.errors, 400)
    flash("Kiosk settings saved. A running kiosk picks them up at its next start screen.",
          "success")
    return redirect(url_for("admin.kiosk_settings_page"))


@bp.post("/kiosk/reset")
def kiosk_settings_reset():
    kiosk.store().reset()
    flash("Kiosk settings reset to the server's defaults.", "success")
    return redirect(url_for("admin.kiosk_settings_page"))


@bp.get("/api/kiosk")
def api_kiosk_settings():
    return jsonify(kiosk.store().load().as_dict())


@bp.route("/api/kiosk", methods=["PUT", "PATCH"])
def api_kiosk_settings_update():
    """JSON with some or all of the settings; 400 naming every bad field, nothing saved."""
    changes = uploads.json_object('Send the settings, e.g. {"idle_seconds": 60, "bars": 3}.')
    try:
        settings = kiosk.store().update(changes)
    except KioskSettingsError as exc:
        raise ApiError(400, "bad_settings", str(exc), fields=exc.errors) from None
    return jsonify(settings.as_dict())


@bp.context_processor
def _template_context():
    return {"logged_in": g.get("admin_via") == "session",
            "readable_metrics": readable_metrics}


# The Teach page and the dataset / job API (webapp.teach) live under /admin too, behind
# the same guard, error pages and template context: a nested blueprint.
from webapp.teach import bp as _teach_bp  # noqa: E402

bp.register_blueprint(_teach_bp)
