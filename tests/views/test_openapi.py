"""/openapi.json describes every route of the public and admin APIs and is a valid
OpenAPI 3.1 document (openapi-spec-validator); /api shows it as a page that needs nothing
from the network."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from webapp.views.openapi import OPERATIONS

API_BLUEPRINTS = ("api", "v2", "metrics")
OTHER_API_ROUTES = ("/kiosk/settings.json", "/openapi.json")


def api_operations(app) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every API route of the app, found from the routes
    themselves: the API blueprints, /admin/api/, the kiosk's settings, this document."""
    out = set()
    for rule in app.url_map.iter_rules():
        blueprint = rule.endpoint.split(".")[0]
        if blueprint in API_BLUEPRINTS or rule.rule.startswith("/admin/api/") \
                or rule.rule in OTHER_API_ROUTES:
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            out |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return out


def test_the_document_is_valid_openapi_31_and_lists_every_api_route(app, client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.is_json
    doc = response.get_json()
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises on anything the OpenAPI 3.1 schema does not allow

    listed = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert listed == api_operations(app)
    undocumented = sorted(f"{method.upper()} {path}" for path, item in doc["paths"].items()
                          for method, op in item.items() if op["summary"] == "undocumented")
    assert undocumented == [], "describe these in webapp/views/openapi.py's OPERATIONS"
    # Every description belongs to a route that exists.
    endpoints = {(rule.endpoint, m.lower()) for rule in app.url_map.iter_rules()
                 for m in rule.methods}
    assert set(OPERATIONS) <= endpoints, sorted(set(OPERATIONS) - endpoints)
    for path in ("/predict", "/v2/models/{name}/infer", "/admin/api/models/{model_id}/activate",
                 "/admin/api/models/{model_id}/download/{what}", "/admin/api/jobs/{job_id}"):
        assert path in doc["paths"], path
    activate = doc["paths"]["/admin/api/models/{model_id}/activate"]["post"]
    assert activate["security"] and {p["name"] for p in activate["parameters"]} == {
        "model_id", "wait"}
    assert "504" in activate["responses"]
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_the_api_page_shows_every_operation_and_needs_no_network(client):
    response = client.get("/api")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    doc = client.get("/openapi.json").get_json()
    for path, item in doc["paths"].items():
        assert f"<code class=\"fs-6\">{path}</code>" in html, path
        for op in item.values():
            assert f'id="{op["operationId"]}"' in html
    assert "<script>" not in html  # no inline script (the CSP forbids it)
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith(("/", "#")), url  # assets from this server only
