"""The first run without ADMIN_TOKEN (webapp/views/admin/setup.py), through the real app:
on the server machine itself the admin page lets the teacher choose a password, the
login works with it; from anywhere else -- another address, through a reverse proxy,
under a foreign host name -- the page refuses and nothing is stored."""

from __future__ import annotations

import json
import re
import stat

import pytest

from testkit.admin import assert_error, csrf_from
from webapp import create_app
from webapp.stores import admin_password

PASSWORD = "bright-yellow-kiosk"
OTHER_MACHINE = {"REMOTE_ADDR": "192.0.2.7"}


def make_app(tmp_path, **config):
    return create_app({"TESTING": True, "MODEL_DIR": str(tmp_path / "store"),
                       "ADMIN_TOKEN": "", **config})


def choose(client, password=PASSWORD, confirm=None, **request):
    page = client.get("/admin/setup", **request)
    csrf = csrf_from(page.get_data(as_text=True))
    return client.post("/admin/setup", data={"csrf_token": csrf, "password": password,
                                             "confirm": password if confirm is None else confirm},
                       **request)


def log_in(client, password):
    csrf = csrf_from(client.get("/admin/login").get_data(as_text=True))
    return client.post("/admin/login", data={"csrf_token": csrf, "token": password})


def test_on_the_server_machine_the_teacher_chooses_a_password_and_logs_in_with_it(tmp_path):
    app = make_app(tmp_path)
    client = app.test_client()  # REMOTE_ADDR 127.0.0.1, Host localhost: this machine
    assert client.get("/admin/").location == "/admin/setup"
    page = client.get("/admin/setup").get_data(as_text=True)
    assert "Choose the admin password" in page and 'autocomplete="new-password"' in page

    mismatch = choose(client, confirm="something else")
    assert mismatch.status_code == 400 and "The two passwords differ." in mismatch.text
    short = choose(client, password="short")
    assert short.status_code == 400 and "at least 8 characters" in short.text
    assert not admin_password.path(tmp_path / "store").exists()

    saved = choose(client)
    assert saved.status_code == 302 and saved.location == "/admin/login"
    assert "Password saved" in client.get("/admin/login").text

    stored = admin_password.path(tmp_path / "store")
    assert PASSWORD not in stored.read_text("utf-8")
    assert json.loads(stored.read_text("utf-8"))["hash"].startswith("scrypt:")
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600

    wrong = log_in(client, "bright-yellow-kiosk!")
    assert wrong.status_code == 401 and "not the admin password" in wrong.text
    ok = log_in(client, PASSWORD)
    assert ok.status_code == 302 and ok.location == "/admin/"
    assert client.get("/admin/").status_code == 200
    # The same password is the API's bearer token; the setup page is gone for good.
    api = app.test_client().get("/admin/api/models",
                                headers={"Authorization": f"Bearer {PASSWORD}"})
    assert api.status_code == 200 and api.get_json()["models"]
    again = app.test_client().get("/admin/setup")
    assert again.status_code == 302 and again.location.startswith("/admin/login")


def test_from_another_machine_the_setup_page_refuses(tmp_path):
    client = make_app(tmp_path).test_client()
    page = client.get("/admin/setup", environ_base=OTHER_MACHINE)
    assert page.status_code == 403
    assert "http://127.0.0.1:5000/admin/" in page.text and "ADMIN_TOKEN" in page.text
    assert client.get("/admin/", environ_base=OTHER_MACHINE).status_code == 403
    # A form posted anyway (its CSRF token fetched on this machine) stores nothing.
    csrf = csrf_from(client.get("/admin/setup").text)
    post = client.post("/admin/setup", environ_base=OTHER_MACHINE,
                       data={"csrf_token": csrf, "password": PASSWORD, "confirm": PASSWORD})
    assert post.status_code == 403
    assert not admin_password.path(tmp_path / "store").exists()
    message = assert_error(client.get("/admin/api/models", environ_base=OTHER_MACHINE), 403,
                           "admin_disabled")
    assert "127.0.0.1" in message


@pytest.mark.parametrize("proxies, request_args", [
    # nginx on the same machine, TRUSTED_PROXIES=1: the client it names is remote, even
    # when that client sent an X-Forwarded-For of its own saying 127.0.0.1.
    (1, {"headers": {"X-Forwarded-For": "203.0.113.9"}}),
    (1, {"headers": {"X-Forwarded-For": "127.0.0.1, 203.0.113.9"}}),
    # ... and when the proxy itself forwards from this machine: still through a proxy.
    (1, {"headers": {"X-Forwarded-For": "127.0.0.1"}}),
    # A proxy nobody told the server about (TRUSTED_PROXIES=0) still gives itself away.
    (0, {"headers": {"X-Forwarded-For": "203.0.113.9"}}),
    (0, {"headers": {"X-Real-IP": "203.0.113.9"}}),
    (0, {"headers": {"Forwarded": "for=203.0.113.9"}}),
    # A page reached under another host name (a proxy passing Host, DNS rebinding).
    (0, {"headers": {"Host": "classroom.example"}}),
    (0, {"base_url": "http://192.168.1.23:5000"}),
])
def test_through_a_proxy_or_another_name_a_local_connection_is_not_the_server_machine(
        tmp_path, proxies, request_args):
    client = make_app(tmp_path, TRUSTED_PROXIES=proxies).test_client()
    assert client.get("/admin/setup", **request_args).status_code == 403
    assert client.get("/admin/", **request_args).status_code == 403


def test_admin_token_wins_over_the_password(tmp_path):
    client = make_app(tmp_path).test_client()
    assert choose(client).status_code == 302
    token_app = make_app(tmp_path, ADMIN_TOKEN="a-token-set-later-0123456789")
    token_client = token_app.test_client()
    assert log_in(token_client, PASSWORD).status_code == 401
    assert "ADMIN_TOKEN" in token_client.get("/admin/login").text
    assert log_in(token_client, "a-token-set-later-0123456789").status_code == 302
    # And the setup page stays shut while a token is set.
    fresh = make_app(tmp_path / "fresh", ADMIN_TOKEN="a-token-set-later-0123456789")
    assert fresh.test_client().get("/admin/setup").location.startswith("/admin/login")


def test_a_password_chosen_in_another_window_is_not_overwritten(tmp_path):
    """Two setup forms open at once: the first password saved stays."""
    app = make_app(tmp_path)
    first, second = app.test_client(), app.test_client()
    csrf = {c: csrf_from(c.get("/admin/setup").text) for c in (first, second)}
    assert first.post("/admin/setup", data={"csrf_token": csrf[first], "password": PASSWORD,
                                            "confirm": PASSWORD}).status_code == 302
    late = second.post("/admin/setup", data={"csrf_token": csrf[second],
                                              "password": "another-password",
                                              "confirm": "another-password"})
    assert late.status_code == 302 and late.location.startswith("/admin/login")
    assert log_in(second, "another-password").status_code == 401
    assert log_in(second, PASSWORD).status_code == 302


def test_a_damaged_password_file_keeps_the_area_shut_and_says_what_to_do(tmp_path):
    client = make_app(tmp_path).test_client()
    assert choose(client).status_code == 302
    admin_password.path(tmp_path / "store").write_text('{"hash": "', encoding="utf-8")
    for request in ({}, {"environ_base": OTHER_MACHINE}):
        page = client.get("/admin/", **request)
        assert page.status_code == 403 and "delete admin_password.json" in page.text
        assert client.get("/admin/setup", **request).status_code == 403  # no new one over it
    assert client.post("/admin/login", data={"token": PASSWORD}).status_code == 403
    assert_error(client.get("/admin/api/models", headers={"Authorization": f"Bearer {PASSWORD}"}),
                 403, "admin_disabled")


def test_the_password_form_is_translated(tmp_path):
    page = make_app(tmp_path).test_client().get("/admin/setup?lang=zh_Hans_CN").text
    assert re.search(r"[\u4e00-\u9fff]", page)
    assert "Choose the admin password" not in page
