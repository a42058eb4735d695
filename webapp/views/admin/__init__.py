"""The admin area: ``/admin`` (pages, a login form) and ``/admin/api/*`` (the same over
HTTP with ``Authorization: Bearer $ADMIN_TOKEN``), one blueprint whose routes live in

* ``auth``: who may come in (the guard every admin request goes through, login, logout),
* ``setup``: the first run without ``ADMIN_TOKEN``: choosing a password on the server
  machine itself,
* ``models``: the model table, upload, activate, roll back, delete, try an image,
* ``kiosk_settings``: the teacher settings of the kiosk (the language of the pages too),
* ``labels``: what the pages call the built-in model's classes (*Class names*),
* ``teach``: the Teach page and the dataset / job API (a nested blueprint),
* ``cli``: the same model operations as ``flask models`` commands.

``create_app`` registers it.  Security, in order of the checks every admin request goes
through (``auth``):

Security, in order of the checks every admin request goes through:

* Neither ``ADMIN_TOKEN`` nor a password chosen on the server machine (``setup``): the
  whole area answers 403 with a page saying how to get in, except the set-password page
  for a browser on the server machine itself.  A token, when set, wins over a password.
* API requests with a bearer token: compared with ``hmac.compare_digest``; no cookie is
  involved, so no CSRF token is needed.
* Everything else needs the session cookie set by the login form (signed with
  ``SECRET_KEY``, bound to the current ``ADMIN_TOKEN`` and to the session generation
  kept in ``MODEL_DIR/sessions.json``, valid for ``SESSION_HOURS``; logging out starts a
  new generation, so a copy of any admin's cookie is worthless from then on, in every
  worker and replica; ``Secure`` and HSTS over HTTPS: ``webapp.http.security``),
  and every state-changing request carries a CSRF token (Flask-WTF): in the form, or in
  the ``X-CSRFToken`` header for the page's own XHR calls.  Without a session: pages
  redirect to the login form, the API answers 401.
* Failed logins and wrong bearer tokens are counted per client address (``limits``,
  in memory, per worker process); over ``ADMIN_LOGIN_LIMIT`` the answer is 429.
"""

from __future__ import annotations

import errno
import logging
import os

from flask import Blueprint, current_app, render_template, request
from flask_wtf.csrf import CSRFError

from webapp.engines import EngineSettings
from webapp.http import marks
from webapp.http.errors import error_json
from webapp.i18n import translate
from webapp.messages import Message
from webapp.stores.registry import RegistryError

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/admin")
marks.mark_blueprint(bp, marks.NO_STORE)
marks.mark_addresses(bp, "/api", marks.JSON)  # /admin/api/...: the API


def is_api() -> bool:
    """An ``/admin/api/`` request: answered in JSON, never with a page."""
    return marks.JSON in marks.of_request()


def fail(status: int, code: str, message: str, **extra):
    """A 4xx/5xx in the admin area: JSON for the API, the error page for people."""
    if is_api():
        return error_json(status, code, message, **extra)
    return render_template("error.html", status=status, message=translate(message)), status


@bp.errorhandler(CSRFError)
def _csrf_error(exc: CSRFError):
    return fail(400, "csrf_failed", Message(
        "%(reason)s The form has expired or did not come from this site: reload the admin "
        "page and try again.", reason=exc.description))


# Errors of the disks under the stores, in words (never the path: messages reach clients).
_STORE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_STORE_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_STORES = {"MODEL_DIR": Message("The model store (MODEL_DIR)"),
           "DATA_DIR": Message("The Teach data folder (DATA_DIR)"),
           "ENGINE_CACHE_DIR": Message("The engine cache (ENGINE_CACHE_DIR)")}


def _failed_store(exc: OSError) -> str:
    """Which store a disk error happened in: the folder its path is under, else the
    one the route writes to (Teach writes DATA_DIR, the rest of the admin MODEL_DIR)."""
    folders = {"MODEL_DIR": current_app.config["MODEL_DIR"],
               "DATA_DIR": current_app.config["DATA_DIR"],
               "ENGINE_CACHE_DIR": str(EngineSettings.from_config(current_app.config)
                                       .cache.root)}
    path = os.path.abspath(os.fsdecode(exc.filename)) if exc.filename else ""
    for setting, folder in sorted(folders.items(), key=lambda item: -len(item[1])):
        if path and folder and path.startswith(os.path.abspath(folder) + os.sep):
            return setting
    return "DATA_DIR" if request.blueprint == "admin.teach" else "MODEL_DIR"


@bp.errorhandler(OSError)
def _storage_error(exc: OSError):
    """A store cannot be written (disk full, read-only, no permission): say which and so;
    nothing half-written stays behind (uploads are removed in teardown, the registry
    builds models in staging), and serving goes on with the current model."""
    reason = exc.strerror or type(exc).__name__
    store = _STORES[_failed_store(exc)] if exc.errno in (*_STORE_FULL, *_STORE_READ_ONLY) \
        else ""
    if exc.errno in _STORE_FULL:
        status, code = 507, "store_full"
        message = Message("%(store)s has no room for this (%(reason)s); nothing was stored. "
                          "Delete what you no longer need, or give it more space, and try "
                          "again.", store=store, reason=reason)
    elif exc.errno in _STORE_READ_ONLY:
        status, code = 503, "store_read_only"
        message = Message("%(store)s cannot be written (%(reason)s); nothing was changed. "
                          "The current model goes on serving.", store=store, reason=reason)
    else:
        log.exception("unexpected error on %s %s", request.method, request.path)
        status, code = 500, "internal_error"
        message = Message("Something went wrong on the server.")
    if status != 500:
        log.error("%s: %s %s failed: %s", store, request.method, request.path, exc)
    return fail(status, code, message)


@bp.errorhandler(RegistryError)
def _registry_error(exc: RegistryError):
    return fail(exc.status, exc.code, exc.message)
