"""Security headers on every response, and the client address behind a reverse proxy.

Every response carries:

* ``Content-Security-Policy``: scripts, styles, fonts, media and XHR only from this
  server (no inline ``<script>``, no ``eval``; the templates have none by design), images
  also from ``data:``/``blob:`` (previews and heatmaps are made in the page), no plugins,
  forms only to this server, and no framing.  One allowance: ``style`` *attributes*
  (``style-src-attr 'unsafe-inline'``), because the no-JavaScript result page draws its
  bars with ``style="width: 39.9%"``; ``<style>`` elements stay forbidden.
* ``X-Frame-Options: DENY`` (and ``frame-ancestors 'none'``): nobody can show these pages
  in a frame (clickjacking the admin page).  The kiosk (views marked ``FRAMEABLE``) may be
  framed by the sites in ``KIOSK_FRAME_ANCESTORS`` (digital signage), nothing else may.
* ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin`` (Flask-WTF checks
  the referrer of admin forms over HTTPS, so same-origin requests keep it),
  ``Cross-Origin-Opener-Policy`` and ``Cross-Origin-Resource-Policy: same-origin``,
  ``Permissions-Policy`` without camera/microphone/geolocation, except the camera for
  this server's own pages that film (the kiosk and the admin Teach page: views marked
  ``CAMERA``, ``webapp.http.marks``).
* ``Cache-Control: no-store`` on the answers of views marked ``NO_STORE`` (predictions,
  the admin area): predictions about someone's photo are nobody's cache entry.

``TRUSTED_PROXIES`` = N > 0 trusts the last N hops of ``X-Forwarded-For``/``-Proto``
(Werkzeug's ``ProxyFix``), so the admin login limit and the access log see the real
client behind nginx instead of nginx's address.

Over HTTPS (gunicorn's own TLS, or a trusted proxy that says ``X-Forwarded-Proto:
https``) the session cookie is ``Secure`` and every answer carries
``Strict-Transport-Security``: the admin's cookie is never sent over plain HTTP again.
Over plain HTTP neither (a LAN kiosk without a certificate still logs in).
"""

from __future__ import annotations

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from webapp.config import ConfigError
from webapp.http import marks

_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "style-src-attr": "'unsafe-inline'",
    "img-src": "'self' data: blob:",
    "media-src": "'self' blob:",
    "font-src": "'self'",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
CAMERA_POLICY = "camera=(self), microphone=(), geolocation=()"  # views marked CAMERA
HSTS = "max-age=31536000"  # a year; no includeSubDomains: other hosts are not ours


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, ``Secure`` whenever the request came over HTTPS
    (``SESSION_COOKIE_SECURE`` only knows one answer for every request)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return super().get_cookie_secure(app) or request.is_secure


def content_security_policy(frame_ancestors: str = "'none'") -> str:
    return "; ".join(f"{key} {value}" for key, value in
                     {**_POLICY, "frame-ancestors": frame_ancestors}.items())


def _kiosk_ancestors(raw: str) -> str:
    value = " ".join(raw.split())
    if not value:
        return "'none'"
    if any(ch in value for ch in ";,\"\\") or not value.isprintable():
        raise ConfigError(f"KIOSK_FRAME_ANCESTORS={raw!r}: give sources separated by "
                          "spaces, e.g. \"'self' https://signage.example\"")
    return value


def init_app(app: Flask) -> None:
    hops = app.config["TRUSTED_PROXIES"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
    app.session_interface = SessionInterface()
    default_csp = content_security_policy()
    kiosk_ancestors = _kiosk_ancestors(app.config["KIOSK_FRAME_ANCESTORS"])
    kiosk_csp = content_security_policy(kiosk_ancestors)

    @app.after_request
    def _security_headers(response):
        headers = response.headers
        marked = marks.of_request()
        kiosk = marks.FRAMEABLE in marked
        headers["Content-Security-Policy"] = kiosk_csp if kiosk else default_csp
        if not (kiosk and kiosk_ancestors != "'none'"):
            headers["X-Frame-Options"] = "DENY"
        if marks.CAMERA in marked:
            headers.setdefault("Permissions-Policy", CAMERA_POLICY)
        for name, value in HEADERS.items():
            headers.setdefault(name, value)
        if marks.NO_STORE in marked:
            headers.setdefault("Cache-Control", "no-store")
        if request.is_secure:
            headers.setdefault("Strict-Transport-Security", HSTS)
        return response
