"""What a view says about its answers, so that the request machinery of ``webapp.http``
(errors, security headers) needs to know no address:

* ``JSON``: errors are answered in JSON, never with the error page;
* ``OPEN_INFERENCE``: errors in the Open Inference Protocol's shape (``{"error": "..."}``);
* ``NO_STORE``: ``Cache-Control: no-store`` (predictions, the admin area);
* ``FRAMEABLE``: the sites in ``KIOSK_FRAME_ANCESTORS`` may show it in a frame;
* ``CAMERA``: the page may use the camera.

Who marks what:

* a view, under its route decorator: ``@marks.mark(marks.JSON, marks.NO_STORE)``;
* a blueprint, ``mark_blueprint(bp, ...)``: every route of it and of the blueprints nested
  in it;
* a part of a blueprint's URL space, ``mark_addresses(bp, "/api", ...)``: every address
  under the blueprint's URL prefix plus ``"/api"``, a route or not.

A request that found no route still gets the marks of how it is answered (``JSON``,
``OPEN_INFERENCE``, ``NO_STORE``; an error page is not the page, so it gets no frame or
camera): a 405 those of the view at its address (matched again with a method the address
allows), a 404 those of the nearest route above its address (``/v2/nowhere`` answers like
``/v2``, ``/predict/`` like ``/predict``).
"""

from __future__ import annotations

from flask import Blueprint, current_app, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

JSON = "json"
OPEN_INFERENCE = "open_inference"
NO_STORE = "no_store"
FRAMEABLE = "frameable"
CAMERA = "camera"
_ANSWER = frozenset({JSON, OPEN_INFERENCE, NO_STORE})  # what a request without a route gets
_KEY = "marked_addresses"  # app.extensions: [(URL prefix, marks)]


def mark(*names: str):
    """Marks a view (under the route decorator)."""
    def apply(view):
        view.marks = frozenset(getattr(view, "marks", ())) | frozenset(names)
        return view
    return apply


def mark_blueprint(bp: Blueprint, *names: str) -> None:
    """Marks every route of ``bp`` and of its nested blueprints."""
    bp.marks = frozenset(getattr(bp, "marks", ())) | frozenset(names)


def mark_addresses(bp: Blueprint, under: str, *names: str) -> None:
    """Marks every address under ``bp``'s URL prefix plus ``under``, a route or not."""
    bp.record_once(lambda state: state.app.extensions.setdefault(_KEY, []).append(
        (((state.url_prefix or "") + under).rstrip("/"), frozenset(names))))


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def of_request() -> frozenset[str]:
    """The marks of the current request (computed once per request)."""
    if "marks" not in g:
        g.marks = _marks()
    return g.marks


def _marks() -> frozenset[str]:
    found = set()
    if request.url_rule is not None:
        found |= _endpoint_marks(request.endpoint)
    else:
        for endpoint in _allowed_endpoints() or _endpoints_above(request.path):
            found |= _endpoint_marks(endpoint) & _ANSWER
    for prefix, names in current_app.extensions.get(_KEY, ()):
        if _under(request.path, prefix):
            found |= names
    return frozenset(found)


def _endpoint_marks(endpoint: str) -> frozenset[str]:
    """The marks of a view and of the blueprints it is in."""
    app = current_app
    found = set(getattr(app.view_functions.get(endpoint), "marks", ()))
    blueprint = endpoint.rpartition(".")[0]
    while blueprint:  # "admin.teach", then "admin"
        found |= getattr(app.blueprints.get(blueprint), "marks", frozenset())
        blueprint = blueprint.rpartition(".")[0]
    return frozenset(found)


def _allowed_endpoints() -> set[str]:
    """The endpoints of a request that failed routing with a 405: its address matched
    with each method the address allows (none for a 404 or a redirect)."""
    failed = request.routing_exception
    if not isinstance(failed, MethodNotAllowed):
        return set()
    adapter = current_app.create_url_adapter(request)
    endpoints = set()
    for method in failed.valid_methods or ():
        try:
            endpoints.add(adapter.match(method=method)[0])
        except HTTPException:
            continue
    return endpoints


def _endpoints_above(path: str) -> set[str]:
    """The endpoints of the nearest routes without parameters whose address is above
    ``path`` (``/v2`` for ``/v2/nowhere``; ``/`` for ``/nowhere``)."""
    above = [(len(rule.rule.rstrip("/")), rule.endpoint)
             for rule in current_app.url_map.iter_rules()
             if not rule.arguments and _under(path, rule.rule.rstrip("/"))]
    nearest = max((length for length, _ in above), default=0)
    return {endpoint for length, endpoint in above if length == nearest}
