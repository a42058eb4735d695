"""The admin area through a Flask test client: an app with an admin token (``make_app``),
the bearer header for the API, logging in through the form, the CSRF token of a page, an
upload of a model file, and the JSON error every refusal answers with."""

from __future__ import annotations

import io
import re
from pathlib import Path

from webapp import create_app

TOKEN = "test-admin-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def make_app(model_dir: Path, **config):
    return create_app({"TESTING": True, "MODEL_DIR": str(model_dir), "ADMIN_TOKEN": TOKEN,
                       **config})


def csrf_from(html: str) -> str:
    """The CSRF token in a page's forms."""
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html).group(1)


def login(client, token=TOKEN) -> str:
    """Log in through the form; returns a CSRF token for later form posts."""
    csrf = csrf_from(client.get("/admin/login").get_data(as_text=True))
    response = client.post("/admin/login", data={"csrf_token": csrf, "token": token})
    assert response.status_code == 302, response.get_data(as_text=True)
    return csrf_from(client.get("/admin/").get_data(as_text=True))


def upload(client, path_or_bytes, headers=BEARER, filename="model.pt", **form):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return client.post("/admin/api/models", headers=headers, content_type="multipart/form-data",
                       data={"checkpoint": (io.BytesIO(data), filename), **form})


def assert_error(response, status, code):
    """The response (a Flask test client's or ``requests``') is a JSON error with this
    status and code; returns its message."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    return error["message"]
