"""No single client can stall or bloat a worker: every attack of tests/attacks.py gets
its 4xx JSON error with a message for a person, through the real app (in-process
here; on a real gunicorn, with a real photo sent meanwhile, further down).  No
durations are asserted: bench/abuse.py measures them."""

from __future__ import annotations

import io

import pytest

from tests import attacks
from tests.test_admin import BEARER, TOKEN, csrf_from
from webapp import create_app

URLENCODED = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    base = tmp_path_factory.mktemp("abuse")
    app = create_app({"TESTING": True, "MODEL_DIR": str(base / "models"),
                      "DATA_DIR": str(base / "data"), "ADMIN_TOKEN": TOKEN})
    app.extensions["model_holder"].warm_up()
    return app


@pytest.fixture()
def client(app):
    return app.test_client()


def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    error = response.get_json()["error"]
    assert error["code"] == code, error
    return error["message"]


def test_a_flood_of_form_fields_is_refused_before_it_is_parsed(client):
    """19 MB of ``a=&`` to the login form (no login needed) and to /predict: 413."""
    flood = attacks.form_flood(2 * attacks.MB)
    for path in ("/admin/login", "/predict"):
        response = client.post(path, data=flood, content_type=URLENCODED,
                               headers={"Accept": "application/json"})
        message = error_of(response, 413, "form_too_large")
        assert "64 KB" in message and "multipart/form-data" in message
    # A login form of normal size still works.
    page = client.get("/admin/login").get_data(as_text=True)
    response = client.post("/admin/login", content_type=URLENCODED,
                           data={"csrf_token": csrf_from(page), "token": TOKEN})
    assert response.status_code == 302


def test_too_many_multipart_parts_is_a_413_that_says_so(client):
    body = attacks.multipart_parts(5000)
    response = client.post("/predict", data=body,
                           content_type="multipart/form-data; boundary=b")
    message = error_of(response, 413, "form_too_large")
    assert "more than 1000 parts" in message and "MB" not in message


@pytest.mark.parametrize("method, path", [
    ("PUT", "/admin/api/kiosk"),
    ("POST", "/admin/api/datasets"),
    ("POST", "/admin/api/datasets/pens/train"),
    ("POST", "/admin/api/datasets/pens/classes"),
])
def test_deeply_nested_or_huge_json_is_a_4xx_not_a_500(client, method, path):
    client.post("/admin/api/datasets", headers=BEARER, json={"name": "pens",
                                                             "classes": ["pen", "cup"]})
    for depth in (30_000, 21):  # 60 KB: under the size limit
        response = client.open(path, method=method, headers=BEARER, data=attacks.deep_json(
            depth), content_type="application/json")
        assert "nested more than 20 levels" in error_of(response, 400, "bad_json")
    big = b'{"name": "' + b"x" * 70_000 + b'"}'
    response = client.open(path, method=method, headers=BEARER, data=big,
                           content_type="application/json")
    assert "larger than 64 KB" in error_of(response, 413, "too_large")
    response = client.open(path, method=method, headers=BEARER, data=b"[1, 2]",
                           content_type="application/json")
    assert "Send a JSON object" in error_of(response, 400, "bad_json")


def test_a_chunked_body_over_the_limit_is_a_413_not_a_cut_image(tmp_path):
    """Without Content-Length, Werkzeug reads a raw body up to MAX_UPLOAD_MB and stops;
    the rest must not be taken for a damaged image.  (A WSGI server that handles
    chunked bodies says so with wsgi.input_terminated, as gunicorn does.)"""
    app = create_app({"TESTING": True, "MODEL_DIR": str(tmp_path / "models"),
                      "MAX_UPLOAD_MB": 0.25, "MAX_CONTENT_LENGTH": 256 * 1024})
    client = app.test_client()
    photo = attacks.real_jpeg((3000, 2000))
    assert len(photo) > 256 * 1024

    def post(data: bytes):
        return client.post("/predict", input_stream=io.BytesIO(data), headers={
            "Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True})

    assert "0.25 MB" in error_of(post(photo), 413, "too_large")
    small = attacks.real_jpeg((320, 240))
    assert post(small).status_code == 200


def test_readyz_names_no_server_path_and_metrics_says_its_charset_once(app, client):
    ready = client.get("/readyz")
    assert ready.status_code == 200
    text = ready.get_data(as_text=True)
    for folder in (app.config["MODEL_DIR"], app.config["ENGINE_CACHE_DIR"], "/tmp/", "/root"):
        assert folder not in text, folder
    assert ready.get_json()["model"]["source"] in ("bundled", "cache", "explicit")
    content_type = client.get("/metrics").headers["Content-Type"]
    assert content_type.startswith("text/plain; version=") and content_type.count("charset") == 1
