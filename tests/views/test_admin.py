"""The admin area through the real app (Flask test client) with real checkpoints: login,
CSRF, rate limit, bearer API, upload/activate/rollback/delete, "try an image", refusal
of bad uploads, fallback at startup, the command line."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest

from testkit import ops
from testkit.admin import BEARER, TOKEN, assert_error, csrf_from, login, make_app, upload
from testkit.model_files import ACCEPTED, TORCH_WORDS, large_jpegs, photo_pngs, torch_answers
from testkit.photos import encode, photo
from testkit.registry import leftovers, snapshot
from testkit.weights import FRUIT, TOOLS, hostile_files
from webapp.stores.registry import BUILTIN, Registry


@pytest.fixture()
def admin_app(tmp_path):
    """A fresh app with the admin area enabled, an empty store and the built-in model."""
    return make_app(tmp_path / "store")


@pytest.fixture()
def admin(admin_app):
    """A client on that app."""
    return admin_app.test_client()


def jpeg(name="chelsea") -> bytes:
    return encode(photo(name).image, "JPEG")


def predict(client, url="/predict", headers=None):
    return client.post(url, headers=headers or {}, content_type="multipart/form-data",
                       data={"image": (io.BytesIO(jpeg()), "cat.jpg")})


def wait_for_model(client, model_id, timeout=10.0) -> dict:
    """/predict answers with ``model_id`` (the holder looks at the pointer 4 times a
    second)."""
    deadline = time.monotonic() + timeout
    while True:
        body = predict(client).get_json()
        if body["model"]["id"] == model_id or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


# --------------------------------------------------------------------------- access


def test_the_admin_area_is_shut_to_other_machines_without_a_token_or_password(tmp_path):
    """From another machine (the server machine itself may choose a password:
    tests/views/test_admin_setup.py)."""
    client = make_app(tmp_path / "store", ADMIN_TOKEN="").test_client()
    client.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    page = client.get("/admin/")
    assert page.status_code == 403
    assert "ADMIN_TOKEN" in page.get_data(as_text=True)
    assert "http://127.0.0.1:5000/admin/" in page.get_data(as_text=True)
    assert client.post("/admin/login", data={"token": ""}).status_code == 403
    message = assert_error(client.get("/admin/api/models", headers=BEARER), 403,
                           "admin_disabled")
    assert "ADMIN_TOKEN" in message


def admin_routes(app):
    """Every admin URL with each of its methods (from the app's URL map)."""
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/admin") and rule.endpoint != "admin.login":
            url = rule.rule.replace("<model_id>", BUILTIN)
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                yield method, url


def test_every_admin_route_refuses_requests_without_a_token_or_session(admin, admin_app):
    store = admin_app.extensions["registry"]
    before = snapshot(store.root), store.state()
    routes = list(admin_routes(admin_app))
    assert len(routes) >= 14
    for method, url in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
            response = admin.open(url, method=method, headers=headers)
            if url.startswith("/admin/api/"):
                assert response.status_code == 401, (method, url, headers)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            else:  # pages send people to the login form (a bearer token is not a login)
                assert response.status_code == 302, (method, url, headers)
                assert response.location.startswith("/admin/login")
        admin_app.extensions["admin_login_limit"][0].storage.reset()
    assert (snapshot(store.root), store.state()) == before


def test_login_and_logout(admin):
    assert admin.get("/admin/").location == "/admin/login?next=/admin/"
    page = admin.get("/admin/login").get_data(as_text=True)
    assert 'type="password"' in page and "csrf_token" in page
    token = csrf_from(page)
    wrong = admin.post("/admin/login", data={"csrf_token": token, "token": "guess"})
    assert wrong.status_code == 401 and "not the admin token" in wrong.get_data(as_text=True)
    ok = admin.post("/admin/login?next=/admin/?added=x",
                    data={"csrf_token": token, "token": TOKEN})
    assert ok.status_code == 302 and ok.location == "/admin/?added=x"
    page = admin.get("/admin/")
    assert page.status_code == 200 and 'id="models"' in page.get_data(as_text=True)
    csrf = csrf_from(page.get_data(as_text=True))
    assert admin.post("/admin/logout", data={"csrf_token": csrf}).status_code == 302
    assert admin.get("/admin/").status_code == 302
    # The old form's token died with the session; and no open redirect after login.
    assert admin.post("/admin/login", data={"csrf_token": token,
                                            "token": TOKEN}).status_code == 400
    token = csrf_from(admin.get("/admin/login").get_data(as_text=True))
    evil = admin.post("/admin/login?next=//evil.example/x",
                      data={"csrf_token": token, "token": TOKEN})
    assert evil.location == "/admin/"


def test_a_login_is_valid_in_every_worker_and_replica_sharing_the_model_dir(tmp_path):
    """Two apps = two processes: without SECRET_KEY both sign with the key kept in
    MODEL_DIR, so the session cookie from one works in the other."""
    one, two = make_app(tmp_path / "store"), make_app(tmp_path / "store")
    assert one.config["SECRET_KEY"] == two.config["SECRET_KEY"]
    client = one.test_client()
    login(client)
    cookie = client.get_cookie("session").value
    other = two.test_client()
    other.set_cookie("session", cookie)
    assert other.get("/admin/").status_code == 200
    # An explicit SECRET_KEY wins.
    assert make_app(tmp_path / "store", SECRET_KEY="k" * 40).config["SECRET_KEY"] == "k" * 40
    # Changing ADMIN_TOKEN logs everyone out.
    rotated = make_app(tmp_path / "store", ADMIN_TOKEN="another-admin-token-98765")
    third = rotated.test_client()
    third.set_cookie("session", cookie)
    assert third.get("/admin/").status_code == 302


def test_logging_out_ends_every_copy_of_the_session_in_every_worker(tmp_path):
    """A copied session cookie (another worker, another browser) is worthless once the
    admin logs out; so are the admin's other sessions (one token, one identity).  A new
    login works again at once."""
    one, two = make_app(tmp_path / "store"), make_app(tmp_path / "store")
    browser, other_browser = one.test_client(), one.test_client()
    csrf = login(browser)
    login(other_browser)
    stolen = two.test_client()
    stolen.set_cookie("session", browser.get_cookie("session").value)
    assert stolen.get("/admin/").status_code == 200
    assert browser.post("/admin/logout", data={"csrf_token": csrf}).status_code == 302
    for client in (stolen, other_browser, browser):
        assert client.get("/admin/").status_code == 302
        assert client.get("/admin/api/models").status_code == 401
    login(stolen)
    assert stolen.get("/admin/").status_code == 200


def test_a_deleted_or_garbled_session_generation_ends_every_session(tmp_path):
    """Deleting or garbling sessions.json must not bring back sessions a logout ended
    (nor keep any alive): no readable generation, no valid session.  The next login
    starts a new generation, and only its cookies work."""
    app = make_app(tmp_path / "store")
    browser = app.test_client()
    csrf = login(browser)
    ended = browser.get_cookie("session").value  # copied before the logout
    assert browser.post("/admin/logout", data={"csrf_token": csrf}).status_code == 302
    csrf = login(browser)
    sessions = tmp_path / "store" / "sessions.json"
    for damage in (lambda: sessions.unlink(), lambda: sessions.write_bytes(b"{\x00garbled")):
        damage()
        for cookie in (ended, browser.get_cookie("session").value):
            thief = app.test_client()
            thief.set_cookie("session", cookie)
            assert thief.get("/admin/").status_code == 302
            assert thief.get("/admin/api/models").status_code == 401
        login(browser)  # a new generation: logging in works again, old cookies stay out
        thief = app.test_client()
        thief.set_cookie("session", ended)
        assert thief.get("/admin/api/models").status_code == 401
        assert browser.get("/admin/").status_code == 200


def test_a_logout_that_cannot_be_saved_says_so(tmp_path, monkeypatch):
    """The session store cannot be written (the disk refuses the write: a read-only file
    system, injected here where the store writes; tests/http/test_fail_safe.py does it
    with a real read-only MODEL_DIR): the page says the logout was not saved, what still
    holds and what ends it, instead of "Logged out." over copies that stay valid."""
    import errno

    from webapp import durable

    app = make_app(tmp_path / "store")
    browser = app.test_client()
    csrf = login(browser)
    copy = app.test_client()
    copy.set_cookie("session", browser.get_cookie("session").value)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(durable, "write_json", read_only)
    response = browser.post("/admin/logout", data={"csrf_token": csrf})
    assert response.status_code == 503
    text = response.get_data(as_text=True)
    assert "Logging out could not be saved" in text and "MODEL_DIR" in text
    assert "Read-only file system" in text and "ADMIN_TOKEN" in text
    assert "Logged out." not in text
    assert browser.get("/admin/").status_code == 302  # this browser is logged out
    assert copy.get("/admin/").status_code == 200  # and the page said copies still work


@pytest.mark.parametrize("target", ["/admin/\r\nSet-Cookie: x=1", "/admin/%0d%0a",
                                    "/admin/\nLocation: //evil.example", "/admin/\x00"])
def test_control_characters_in_next_do_not_break_the_login(admin, target):
    token = csrf_from(admin.get("/admin/login").get_data(as_text=True))
    response = admin.post("/admin/login", query_string={"next": target},
                          data={"csrf_token": token, "token": TOKEN})
    assert response.status_code == 302
    assert "\n" not in response.location and "\r" not in response.location
    assert response.location.startswith("/admin/")


def test_renaming_keeps_the_json_budget(admin):
    """PATCH /admin/api/models/<id> reads its JSON like every other JSON route: deep
    nesting is a 400 and a huge body a 413, both before anything is parsed or stored."""
    url = f"/admin/api/models/{BUILTIN}"
    headers = {**BEARER, "Content-Type": "application/json"}
    deep = b'{"name": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert_error(admin.patch(url, headers=headers, data=deep), 400, "bad_json")
    huge = b'{"name": "' + b"x" * (19 << 20) + b'"}'
    assert_error(admin.patch(url, headers=headers, data=huge), 413, "too_large")


@pytest.mark.parametrize("hops, headers, base_url, https", [
    (0, {}, "http://localhost", False),
    (0, {}, "https://localhost", True),  # gunicorn's own TLS
    (1, {"X-Forwarded-Proto": "https"}, "http://localhost", True),  # behind nginx
    (0, {"X-Forwarded-Proto": "https"}, "http://localhost", False),  # no proxy trusted
])
def test_over_https_the_session_cookie_is_secure_and_hsts_is_on(tmp_path, hops, headers,
                                                                base_url, https):
    app = make_app(tmp_path / "store", TRUSTED_PROXIES=hops)
    client = app.test_client()
    headers = {**headers, "Referer": "https://localhost/admin/login"}  # Flask-WTF, on https
    page = client.get("/admin/login", base_url=base_url, headers=headers)
    csrf = csrf_from(page.get_data(as_text=True))
    response = client.post("/admin/login", base_url=base_url, headers=headers,
                           data={"csrf_token": csrf, "token": TOKEN})
    assert response.status_code == 302, response.get_data(as_text=True)
    cookie = response.headers["Set-Cookie"]
    assert ("; Secure" in cookie) is https
    for answer in (page, response, client.get("/healthz", base_url=base_url,
                                              headers=headers)):
        assert (answer.headers.get("Strict-Transport-Security")
                == ("max-age=31536000" if https else None))


@pytest.mark.system  # converts new models in builder child processes
def test_form_posts_without_a_csrf_token_are_refused(admin, admin_app, fruit_checkpoint):
    store = admin_app.extensions["registry"]
    model_id = store.add(fruit_checkpoint)["id"]
    csrf = login(admin)
    before = snapshot(store.root), store.state()
    checkpoint = fruit_checkpoint.read_bytes()
    posts = [
        ("/admin/models", lambda: {"checkpoint": (io.BytesIO(checkpoint), "m.pt")}),
        (f"/admin/models/{model_id}/activate", dict),
        (f"/admin/models/{model_id}/delete", dict),
        ("/admin/rollback", dict),
        ("/admin/try", lambda: {"model_id": model_id,
                                "image": (io.BytesIO(jpeg()), "cat.jpg")}),
        ("/admin/logout", dict),
    ]
    for url, data in posts:
        for bad in (None, "forged-token"):
            form = data()
            if bad:
                form["csrf_token"] = bad
            response = admin.post(url, data=form, content_type="multipart/form-data")
            assert response.status_code == 400, url
            assert "CSRF" in response.get_data(as_text=True)
    # The page's own API calls with the session need the header too.
    assert_error(admin.post(f"/admin/api/models/{model_id}/activate"), 400, "csrf_failed")
    assert_error(admin.delete(f"/admin/api/models/{model_id}"), 400, "csrf_failed")
    assert (snapshot(store.root), store.state()) == before and leftovers(store.root) == []
    # With the token, the same session works.
    response = admin.post(f"/admin/api/models/{model_id}/activate",
                          headers={"X-CSRFToken": csrf})
    assert response.status_code == 200 and response.get_json()["active"] == model_id
    assert admin.post("/admin/logout", data={"csrf_token": csrf}).status_code == 302


def test_a_cross_site_form_post_cannot_borrow_the_admins_session(admin, admin_app,
                                                                 fruit_checkpoint):
    """Another site can make the admin's browser post a form, but cannot read the page's
    CSRF token: one from another session (the attacker's own login) is refused, and the
    session cookie is HttpOnly and SameSite=Lax, so browsers do not even send it with a
    cross-site POST."""
    store = admin_app.extensions["registry"]
    model_id = store.add(fruit_checkpoint, untrusted=False)["id"]  # stored as a job would
    attacker_token = login(admin_app.test_client())
    login(admin)
    before = snapshot(store.root), store.state()
    cross_site = {"Origin": "https://evil.example", "Referer": "https://evil.example/x"}
    for url in (f"/admin/models/{model_id}/activate", f"/admin/models/{model_id}/delete",
                "/admin/rollback"):
        response = admin.post(url, data={"csrf_token": attacker_token}, headers=cross_site)
        assert response.status_code == 400 and "CSRF" in response.get_data(as_text=True)
    assert_error(admin.post(f"/admin/api/models/{model_id}/activate", headers={
        **cross_site, "X-CSRFToken": attacker_token}), 400, "csrf_failed")
    assert (snapshot(store.root), store.state()) == before
    fresh = admin_app.test_client()
    csrf = csrf_from(fresh.get("/admin/login").get_data(as_text=True))
    cookie = fresh.post("/admin/login", data={"csrf_token": csrf, "token": TOKEN}).headers[
        "Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_the_login_form_needs_its_csrf_token(admin):
    response = admin.post("/admin/login", data={"token": TOKEN})
    assert response.status_code == 400 and "CSRF" in response.get_data(as_text=True)
    assert admin.get("/admin/").status_code == 302


def test_failed_logins_are_rate_limited_per_client(tmp_path):
    app = make_app(tmp_path / "store", ADMIN_LOGIN_LIMIT="3 per minute")
    client = app.test_client()
    page = client.get("/admin/login").get_data(as_text=True)
    csrf = csrf_from(page)
    for _ in range(2):
        assert client.post("/admin/login", data={"csrf_token": csrf,
                                                 "token": "nope"}).status_code == 401
    assert client.get("/admin/api/models",
                      headers={"Authorization": "Bearer nope"}).status_code == 401
    # Three failures: now even the right token is refused for a while, on both doors.
    blocked = client.post("/admin/login", data={"csrf_token": csrf, "token": TOKEN})
    assert blocked.status_code == 429 and "Too many failed attempts" in blocked.get_data(True)
    assert int(blocked.headers["Retry-After"]) >= 1
    assert_error(client.get("/admin/api/models", headers=BEARER), 429, "too_many_attempts")
    # Another address is not affected.
    other = app.test_client()
    assert other.get("/admin/api/models", headers=BEARER,
                     environ_base={"REMOTE_ADDR": "10.0.0.7"}).status_code == 200


def test_public_pages_do_not_expose_admin_actions(admin):
    page = admin.get("/").get_data(as_text=True).lower()
    assert "/admin" not in page and "activate" not in page and "csrf" not in page


# --------------------------------------------------------------------------- the API


@pytest.mark.system  # converts new models in builder child processes
def test_upload_try_activate_rollback_and_delete_over_the_api(admin, fruit_checkpoint,
                                                              tools_checkpoint):
    response = upload(admin, fruit_checkpoint, name="Fruit v1", filename="fruit.pt")
    assert response.status_code == 201, response.get_data(as_text=True)
    fruit = response.get_json()
    assert fruit["name"] == "Fruit v1" and fruit["classes"] == FRUIT
    assert fruit["metrics"] == {"val_accuracy": 0.913, "epochs": 5}
    assert fruit["active"] is False
    assert response.headers["Location"] == f"/admin/api/models/{fruit['id']}"
    tools = upload(admin, tools_checkpoint, activate="1").get_json()
    assert tools["activated"] is True

    listing = admin.get("/admin/api/models", headers=BEARER).get_json()
    assert listing["active"] == tools["id"]
    assert listing["history"] == [BUILTIN]
    by_id = {m["id"]: m for m in listing["models"]}
    assert list(by_id)[0] == BUILTIN and by_id[BUILTIN]["num_classes"] == 1000
    assert by_id[BUILTIN]["deletable"] is False and by_id[tools["id"]]["active"] is True
    assert by_id[fruit["id"]]["deletable"] is True
    assert admin.get(f"/admin/api/models/{fruit['id']}", headers=BEARER).get_json()[
        "size_bytes"] == fruit_checkpoint.stat().st_size

    # Public traffic follows the pointer; every answer names its model.
    body = wait_for_model(admin, tools["id"])
    assert body["model"]["id"] == tools["id"]
    assert {p["label"] for p in body["predictions"]} <= set(TOOLS)

    # Try the inactive fruit model without activating it.
    trial = predict(admin, f"/admin/api/models/{fruit['id']}/predict", BEARER).get_json()
    assert trial["model"]["id"] == fruit["id"] and trial["model"]["name"] == "Fruit v1"
    assert sorted(p["label"] for p in trial["predictions"]) == sorted(FRUIT)
    builtin_trial = predict(admin, f"/admin/api/models/{BUILTIN}/predict", BEARER).get_json()
    assert builtin_trial["predictions"][0]["label"] in {"tabby", "tiger cat", "Egyptian cat"}
    assert predict(admin).get_json()["model"]["id"] == tools["id"]  # still active

    state = admin.post(f"/admin/api/models/{fruit['id']}/activate", headers=BEARER).get_json()
    assert state["active"] == fruit["id"] and state["history"][:2] == [tools["id"], BUILTIN]
    assert wait_for_model(admin, fruit["id"])["model"]["name"] == "Fruit v1"
    assert_error(admin.delete(f"/admin/api/models/{fruit['id']}", headers=BEARER), 409,
                 "model_active")
    assert_error(admin.delete(f"/admin/api/models/{BUILTIN}", headers=BEARER), 409,
                 "not_deletable")

    assert admin.post("/admin/api/rollback", headers=BEARER).get_json()["active"] == tools["id"]
    assert wait_for_model(admin, tools["id"])["model"]["id"] == tools["id"]
    assert admin.delete(f"/admin/api/models/{fruit['id']}", headers=BEARER).get_json() == {
        "deleted": fruit["id"]}
    assert_error(admin.get(f"/admin/api/models/{fruit['id']}", headers=BEARER), 404,
                 "unknown_model")
    assert admin.post("/admin/api/rollback", headers=BEARER).get_json()["active"] == BUILTIN
    assert_error(admin.post("/admin/api/rollback", headers=BEARER), 409, "no_history")
    # Redo undoes the rollback; a new activation would forget it.
    state = admin.post("/admin/api/redo", headers=BEARER).get_json()
    assert state["active"] == tools["id"] and state["redo"] == []
    assert_error(admin.post("/admin/api/redo", headers=BEARER), 409, "no_redo")
    # Renaming the active model: the new name reaches the public answers.
    renamed = admin.patch(f"/admin/api/models/{tools['id']}", headers=BEARER,
                          json={"name": "Workshop tools"})
    assert renamed.status_code == 200 and renamed.get_json()["name"] == "Workshop tools"
    deadline = time.monotonic() + 10
    while predict(admin).get_json()["model"]["name"] != "Workshop tools":
        assert time.monotonic() < deadline, "the new name never reached /predict"
        time.sleep(0.1)
    assert_error(admin.patch(f"/admin/api/models/{tools['id']}", headers=BEARER,
                             json={"name": "../x"}), 400, "bad_name")
    assert_error(admin.patch(f"/admin/api/models/{tools['id']}", headers=BEARER,
                             data="Workshop"), 400, "bad_json")
    assert_error(admin.patch(f"/admin/api/models/{BUILTIN}", headers=BEARER,
                             json={"name": "Mine"}), 409, "not_renamable")
    assert admin.post("/admin/api/rollback", headers=BEARER).get_json()["active"] == BUILTIN
    wait_for_model(admin, BUILTIN)
    ready = admin.get("/readyz").get_json()
    assert ready["model"]["id"] == BUILTIN
    assert ready["registry"] == {"active": BUILTIN, "serving": BUILTIN, "in_sync": True}


@pytest.mark.system  # converts new models in builder child processes
def test_a_bare_state_dict_upload_is_an_imagenet_resnet18(admin, random_resnet18):
    response = upload(admin, random_resnet18, filename="resnet18-random.pth")
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["arch"] == "resnet18" and body["num_classes"] == 1000


def bad_uploads(tmp_path: Path, fruit_checkpoint: Path):
    marker = tmp_path / "pwned"
    files = hostile_files(tmp_path, marker)
    good = fruit_checkpoint.read_bytes()
    return marker, [
        (files[0][0].read_bytes(), {}, 422, "invalid_checkpoint", "other than tensors"),
        (files[1][0].read_bytes(), {}, 422, "invalid_checkpoint", "other than tensors"),
        (jpeg(), {}, 422, "invalid_checkpoint", "looks like: JPEG"),
        (b"hello " * 1000, {}, 422, "invalid_checkpoint", "not a readable PyTorch"),
        (good[: len(good) // 2], {}, 422, "invalid_checkpoint", "not a readable PyTorch"),
        (b"", {}, 400, "empty_file", "empty"),
        (good, {"name": "../../../etc/cron.d/evil"}, 400, "bad_name", "file path"),
        (good, {"name": "x\x00y"}, 400, "bad_name", "control characters"),
        (good, {"arch": "../resnet18"}, 400, "bad_arch", "not supported"),
    ]


@pytest.mark.system  # converts new models in builder child processes
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_uploads_get_a_clear_4xx_and_leave_the_store_unchanged(
    admin, admin_app, tmp_path, fruit_checkpoint
):
    store = admin_app.extensions["registry"]
    upload(admin, fruit_checkpoint)
    before = snapshot(store.root), store.state()
    marker, cases = bad_uploads(tmp_path, fruit_checkpoint)
    for data, form, status, code, words in cases:
        message = assert_error(upload(admin, data, filename="../../x.pt", **form), status,
                               code)
        assert words in message, message
        assert str(store.root) not in message  # no server paths in messages
    response = admin.post("/admin/api/models", headers=BEARER,
                          data={"image": (io.BytesIO(b"x"), "x.pt")},
                          content_type="multipart/form-data")
    assert_error(response, 400, "no_checkpoint")
    assert not marker.exists()
    assert (snapshot(store.root), store.state()) == before
    assert leftovers(store.root) == []


@pytest.mark.system  # the refusals come from builder child processes
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_refused_upload_is_explained_in_the_request_language_with_the_same_code(
    admin, fruit_checkpoint
):
    """The builder child's refusal crosses the process boundary as a message, so an
    uploader asking in Chinese reads it in Chinese (no English word of the catalog in
    it); the error code stays the same English word."""
    from testkit.browser import _WORD, english_catalog_words

    good = fruit_checkpoint.read_bytes()
    chinese = {"Accept-Language": "zh-CN,zh;q=0.9", **BEARER}
    cases = [(jpeg(), {}, "JPEG"), (good[: len(good) // 2], {}, "PyTorch"),
             (b"hello " * 1000, {}, "PyTorch"),
             (good, {"classes": "苹果，香蕉"}, "类别字段")]
    for data, form, word in cases:
        english = upload(admin, data, filename="第一课.pt", **form)
        response = upload(admin, data, headers=chinese, filename="第一课.pt", **form)
        assert response.status_code == english.status_code == 422
        body, english_body = response.get_json()["error"], english.get_json()["error"]
        assert body["code"] == english_body["code"] == "invalid_checkpoint"
        message = body["message"]
        assert message != english_body["message"] and word in message
        assert message.startswith("检查点 '第一课.pt'："), message
        assert english_body["message"].startswith("The checkpoint '第一课.pt': ")
        # (what a file looks like is the name puremagic gives its kind: "JPEG|EXIF images")
        words = {w.group(0) for w in _WORD.finditer(message.split("（它看起来像：")[0])}
        assert not {w for w in words if w.lower() in english_catalog_words()}, message


def test_an_oversized_upload_is_refused_before_it_is_stored(tmp_path, fruit_checkpoint):
    app = make_app(tmp_path / "store", MAX_CHECKPOINT_MB=5)
    client = app.test_client()
    message = assert_error(upload(client, fruit_checkpoint), 413, "too_large")
    assert "5 MB" in message and "MAX_CHECKPOINT_MB" in message
    store = app.extensions["registry"]
    assert store.list_models() == [] and leftovers(store.root) == []
    # ... while /predict keeps its own, smaller limit (MAX_UPLOAD_MB).
    assert app.config["MAX_CONTENT_LENGTH"] == 20 * 1024 * 1024


def test_ids_from_the_url_never_reach_the_filesystem(admin, admin_app, fruit_checkpoint):
    store = admin_app.extensions["registry"]
    store.add(fruit_checkpoint, untrusted=False)  # stored as a training job would
    before = snapshot(store.root), store.state()
    for bad in ("..%2F..%2Fetc", "%2e%2e", "20260101-000000-abcdef", "models"):
        for method, suffix in (("POST", "/activate"), ("DELETE", ""), ("GET", ""),
                               ("POST", "/predict")):
            response = admin.open(f"/admin/api/models/{bad}{suffix}", method=method,
                                  headers=BEARER)
            assert response.status_code == 404, (bad, method, suffix)
    assert (snapshot(store.root), store.state()) == before


# --------------------------------------------------------------------------- the page


@pytest.mark.system  # the upload through the form converts the model in a child
def test_the_admin_page_shows_the_models_and_works_without_javascript(
    admin, admin_app, fruit_checkpoint
):
    csrf = login(admin)
    # The note for the owner the public page leaves out: how to get ResNet18.
    assert "python -m model_loader download" in admin.get("/admin/").get_data(as_text=True)
    response = admin.post("/admin/models", content_type="multipart/form-data", data={
        "csrf_token": csrf, "name": "Fruit from the form", "activate": "1",
        "checkpoint": (io.BytesIO(fruit_checkpoint.read_bytes()), "fruit.pt")})
    assert response.status_code == 302, response.get_data(as_text=True)
    model_id = re.search(r"added=([\w-]+)", response.location).group(1)
    page = admin.get(response.location).get_data(as_text=True)
    assert (f"Stored Fruit from the form as {model_id} (resnet18 (named in the file), 3 "
            "classes from the checkpoint) and activated it.") in page
    row = re.search(rf'<tr id="model-{model_id}".*?</tr>', page, re.S).group(0)
    for text in ("Fruit from the form", "resnet18", ">3</span> classes",
                 "apple, banana, cherry", "active", "Validation accuracy", "91.3%", "Epochs",
                 " MB", "UTC"):
        assert text in row, text
    assert "val_accuracy" not in row.replace('data-metric="val_accuracy"', "")
    builtin_row = re.search(r'<tr id="model-builtin".*?</tr>', page, re.S).group(0)
    assert "1000</span> classes" in builtin_row and "Activate" in builtin_row
    assert "Delete" not in builtin_row
    assert 'src="/static/js/admin.js"' in page and "<script>" not in page
    assert 'id="upload-progress"' in page

    # Try an image with the built-in model, without activating it (no JavaScript).
    tried = admin.post("/admin/try", content_type="multipart/form-data", data={
        "csrf_token": csrf, "model_id": BUILTIN, "image": (io.BytesIO(jpeg()), "cat.jpg")})
    assert tried.status_code == 200
    text = tried.get_data(as_text=True)
    assert "Answered by EfficientNet-Lite0" in text
    assert any(cat in text for cat in ("Tabby", "Tiger cat", "Egyptian cat"))
    assert admin_app.extensions["registry"].state().active == model_id

    # Rename, roll back, redo, roll back and delete through the forms.
    renamed = admin.post(f"/admin/models/{model_id}/rename",
                         data={"csrf_token": csrf, "name": "Fruit, renamed"})
    assert renamed.status_code == 302
    page = admin.get("/admin/").get_data(as_text=True)
    assert f"Renamed {model_id} to Fruit, renamed." in page
    bad = admin.post(f"/admin/models/{model_id}/rename", data={"csrf_token": csrf, "name": "a/b"})
    assert bad.status_code == 400 and "looks like a file path" in bad.get_data(as_text=True)
    assert admin.post("/admin/rollback", data={"csrf_token": csrf}).status_code == 302
    assert admin_app.extensions["registry"].state().active == BUILTIN
    page = admin.get("/admin/").get_data(as_text=True)
    assert re.search(r"Redo</button>.*back to <code>" + model_id, page, re.S)
    assert admin.post("/admin/redo", data={"csrf_token": csrf}).status_code == 302
    assert admin_app.extensions["registry"].state().active == model_id
    assert "Redo</button>" not in admin.get("/admin/").get_data(as_text=True)
    assert admin.post("/admin/rollback", data={"csrf_token": csrf}).status_code == 302
    assert admin.post(f"/admin/models/{model_id}/delete",
                      data={"csrf_token": csrf}).status_code == 302
    page = admin.get("/admin/").get_data(as_text=True)
    assert f"Deleted {model_id}." in page and f'id="model-{model_id}"' not in page

    # A bad upload through the form: the page again, with the reason and a 4xx.
    bad = admin.post("/admin/models", content_type="multipart/form-data", data={
        "csrf_token": csrf, "checkpoint": (io.BytesIO(jpeg()), "cat.jpg")})
    assert bad.status_code == 422 and "looks like: JPEG" in bad.get_data(as_text=True)


def test_the_admin_page_shows_the_engine_and_what_was_measured_to_choose_it(admin,
                                                                          admin_app):
    """With the default ENGINE=auto QUANTIZE=auto: the engine and precision serving, why,
    and a row per candidate tried (its time, its agreement with fp32, why not taken);
    the admin API gives the same."""
    login(admin)
    page = admin.get("/admin/").get_data(as_text=True)
    panel = re.search(r'<details[^>]*id="engine-choice".*?</details>', page, re.S).group(0)
    made = admin_app.extensions["model_holder"].get().loaded.engine_info["auto"]
    assert f"Engine: {made['engine']}," in panel and "Chosen by measuring" in panel
    rows = re.findall(r"<tr[^>]*>\s*<td>(\w+)</td><td>(\w+)</td>", panel)
    assert {engine for engine, _ in rows} == {"openvino", "onnxruntime"}
    assert ("openvino", "bf16") in rows or "bf16" not in made["why"]
    chosen = re.search(r'<tr class="table-success">\s*<td>(\w+)</td><td>(\w+)</td>', panel)
    assert chosen.groups() == (made["engine"], made["chosen"])
    assert panel.count(">Chosen<") == 1
    assert f"{made['engine']} {made['chosen']} serves:" in panel
    others = [t for t in made["tried"] if t.get("works")
              and (t["engine"], t["precision"]) != (made["engine"], made["chosen"])]
    assert panel.count("Not taken:") == len(others)
    assert f"Each one was run on {made['guard_views']} views of the calibration photos." \
        in panel
    listed = admin.get("/admin/api/models", headers=BEARER).get_json()["serving"]
    assert listed["engine_info"]["auto"]["tried"] == made["tried"]

    # In Chinese, the sentences are Chinese; engine and precision names stay as they are.
    page = admin.get("/admin/", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    panel = re.search(r'<details[^>]*id="engine-choice".*?</details>',
                      page.get_data(as_text=True), re.S).group(0)
    assert f"由 {made['engine']} {made['chosen']} 运行" in panel
    assert panel.count("未采用") == len(others)
    for english in ("serves:", "Not taken", "slower", "moves a probability",
                    "calibration photos", "Each one was run"):
        assert english not in panel, english


@pytest.mark.system  # converts new models in builder child processes
def test_the_upload_page_counts_the_guesses_of_a_two_class_model(admin, admin_app, tmp_path):
    """A 2-class model gives 2 bars: the heading says "Top 2 guesses", not "Top 3"."""
    from testkit.weights import save_finetuned_resnet18

    path = save_finetuned_resnet18(tmp_path / "two.pt", ["cat", "dog"], seed=3)
    two = upload(admin, path, activate="1").get_json()["id"]
    wait_for_model(admin, two)
    page = admin.post("/", content_type="multipart/form-data",
                      data={"image": (io.BytesIO(jpeg()), "cat.jpg")}).get_data(as_text=True)
    assert len(re.findall(r'<li class="prediction', page)) == 2
    assert "Top 2 guesses" in page and "Top 3" not in page


# --------------------------------------------------------------------------- startup


def test_an_unreadable_active_checkpoint_falls_back_at_startup(tmp_path, fruit_checkpoint,
                                                               tools_checkpoint):
    store = Registry(tmp_path / "store")
    # Stored as a training job would (built here): an upload converts in a builder child
    # unless an earlier test, maybe in the other test process, already did.
    fruit = store.add(fruit_checkpoint, untrusted=False)["id"]
    tools = store.add(tools_checkpoint, untrusted=False)["id"]
    store.activate(fruit)
    store.activate(tools)  # history: fruit, builtin
    damaged = store.root / "models" / tools / "checkpoint.pt"
    damaged.write_bytes(damaged.read_bytes()[:1000])

    ready = make_app(store.root).test_client().get("/readyz").get_json()
    assert ready["status"] == "ready" and ready["model"]["id"] == fruit
    assert ready["registry"] == {"active": tools, "serving": fruit, "in_sync": False}
    assert f"The active model {tools} could not be loaded" in ready["notice"]

    damaged = store.root / "models" / fruit / "checkpoint.pt"
    damaged.write_bytes(b"garbage")
    client = make_app(store.root).test_client()
    ready = client.get("/readyz").get_json()
    assert ready["model"]["id"] == BUILTIN and tools in ready["notice"]
    assert predict(client).status_code == 200


@pytest.mark.system  # converts the fruit model unless an earlier test of the module did
def test_a_broken_activation_keeps_the_current_model_serving(admin, admin_app,
                                                            fruit_checkpoint):
    store = admin_app.extensions["registry"]
    fruit = upload(admin, fruit_checkpoint).get_json()["id"]
    # Another worker on the same store, which has not loaded the new model yet.
    worker = make_app(store.root).test_client()
    assert predict(worker).get_json()["model"]["id"] == BUILTIN
    path = store.root / "models" / fruit / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])  # damaged on disk after validation
    store.activate(fruit)
    time.sleep(0.6)
    for _ in range(3):
        response = predict(worker)
        assert response.status_code == 200 and response.get_json()["model"]["id"] == BUILTIN
    ready = worker.get("/readyz").get_json()
    assert ready["registry"]["in_sync"] is False and fruit in ready["notice"]
    store.activate(BUILTIN)


# --------------------------------------------------------------------------- CLI


@pytest.mark.system  # the upload converts the model in a child process
def test_the_command_line_manages_the_same_store(tmp_path, fruit_checkpoint):
    app = make_app(tmp_path / "store", ADMIN_TOKEN="")  # the CLI needs no token
    runner = app.test_cli_runner()
    added = runner.invoke(args=["models", "add", str(fruit_checkpoint), "--name", "Fruit CLI",
                                "--activate"])
    assert added.exit_code == 0, added.output
    model_id = re.search(r"stored (\S+)", added.output).group(1)
    assert "active" in added.output
    listing = runner.invoke(args=["models", "list"])
    assert f"* {model_id}" in listing.output and "Fruit CLI" in listing.output
    assert "apple, banana, cherry" in listing.output
    assert "rollback goes to: builtin" in listing.output
    assert runner.invoke(args=["models", "rollback"]).output.strip() == "active: builtin"
    assert "redo goes to: " + model_id in runner.invoke(args=["models", "list"]).output
    assert runner.invoke(args=["models", "redo"]).output.strip() == f"active: {model_id}"
    assert runner.invoke(args=["models", "rename", model_id, "Fruit, again"]).output.strip() \
        == f"{model_id}  Fruit, again"
    assert runner.invoke(args=["models", "rollback"]).output.strip() == "active: builtin"
    refused = runner.invoke(args=["models", "activate", "../../etc"])
    assert refused.exit_code != 0 and "no model '../../etc'" in refused.output
    bad = tmp_path / "notes.txt"
    bad.write_text("not a checkpoint")
    refused = runner.invoke(args=["models", "add", str(bad)])
    assert refused.exit_code != 0 and "not a readable PyTorch weights file" in refused.output
    assert runner.invoke(args=["models", "delete", model_id]).output.strip() == (
        f"deleted {model_id}")
    assert app.extensions["registry"].list_models() == []


# --------------------------------------------------------------------------- kiosk settings


def test_teacher_changes_kiosk_settings_on_the_admin_page(admin, admin_app, tmp_path,
                                                          monkeypatch):
    monkeypatch.setitem(admin_app.config, "KIOSK_SETTINGS_FILE", str(tmp_path / "kiosk.json"))
    assert admin.get("/admin/kiosk").status_code == 302  # login first
    login(admin)
    page = admin.get("/admin/kiosk").get_data(as_text=True)
    assert 'id="kiosk-settings"' in page and 'name="idle_seconds"' in page
    csrf = csrf_from(page)
    form = {"csrf_token": csrf, "idle_seconds": "25", "auto_capture_seconds": "0",
            "bars": "5", "language": "en"}  # "explain" unticked
    response = admin.post("/admin/kiosk", data=form)
    assert response.status_code == 302
    seen = admin.get("/kiosk/settings.json").get_json()  # what the kiosk page reads
    assert (seen["idle_seconds"], seen["bars"], seen["explain"]) == (25, 5, False)

    response = admin.post("/admin/kiosk", data={**form, "bars": "9", "idle_seconds": "soon"})
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "Nothing was saved" in page and page.count("invalid-feedback") == 2
    assert admin.get("/kiosk/settings.json").get_json()["bars"] == 5  # unchanged

    assert admin.post("/admin/kiosk", data={k: v for k, v in form.items()
                                            if k != "csrf_token"}).status_code == 400
    assert admin.post("/admin/kiosk/reset", data={"csrf_token": csrf}).status_code == 302
    assert admin.get("/kiosk/settings.json").get_json()["bars"] == 3


def test_kiosk_settings_over_the_api(admin, admin_app, tmp_path, monkeypatch):
    monkeypatch.setitem(admin_app.config, "KIOSK_SETTINGS_FILE", str(tmp_path / "kiosk.json"))
    assert admin.get("/admin/api/kiosk").status_code == 401
    assert admin.patch("/admin/api/kiosk", json={"bars": 2}).status_code == 401
    response = admin.patch("/admin/api/kiosk", json={"bars": 2, "explain": False},
                           headers=BEARER)
    assert response.status_code == 200 and response.get_json()["bars"] == 2
    assert admin.get("/admin/api/kiosk", headers=BEARER).get_json()["explain"] is False
    response = admin.patch("/admin/api/kiosk", json={"bars": 0, "colour": "red"},
                           headers=BEARER)
    message = assert_error(response, 400, "bad_settings")
    assert "bars" in message and "colour" in message
    assert set(response.get_json()["error"]["fields"]) == {"bars", "colour"}
    assert admin.get("/kiosk/settings.json").get_json()["bars"] == 2
    assert_error(admin.put("/admin/api/kiosk", data="[1]", headers=BEARER,
                           content_type="application/json"), 400, "bad_json")


@pytest.mark.system  # converts new models in builder child processes
def test_an_upload_is_converted_for_the_engine_before_it_is_activated(tmp_path,
                                                                      fruit_checkpoint):
    """The upload fills the engine cache (keyed by the weights), so activating it in the
    other workers later is a quick load, not an ONNX export each."""
    cache = tmp_path / "engine-cache"
    app = make_app(tmp_path / "store", ENGINE="openvino", QUANTIZE="none",
                   ENGINE_CACHE_DIR=str(cache))
    client = app.test_client()
    predict(client)  # the built-in model's conversion
    before = set(cache.rglob("*"))
    response = upload(client, fruit_checkpoint)
    assert response.status_code == 201
    added = {p for p in set(cache.rglob("*")) - before if p.suffix == ".onnx"}
    assert added, sorted(p.name for p in cache.rglob("*"))


# --------------------------------------------------------------------------- your own models
# The model files people have, with their class names, through the API, the page
# and the command line (testkit/model_files.py builds them).


@pytest.fixture(scope="module")
def fp32_app(tmp_path_factory):
    """An admin app serving in fp32 on OpenVINO (QUANTIZE=none: bf16 would round the
    scores; ENGINE=openvino: no engine trials for each row, the default settings have
    their own test below), so its answers can be held to torch fp32's; the table's rows
    are uploaded into its store."""
    app = make_app(tmp_path_factory.mktemp("own-models") / "store", QUANTIZE="none",
                   ENGINE="openvino")
    app.extensions["model_holder"].warm_up()
    return app


def send_model(client, entry, headers=BEARER, **extra):
    """Upload a testkit.model_files entry with the fields a person sends along."""
    data = {"checkpoint": (io.BytesIO(entry.path.read_bytes()), entry.path.name),
            **entry.fields, **extra}
    if entry.labels:
        data["labels"] = (io.BytesIO(entry.labels[1]), entry.labels[0])
    return client.post("/admin/api/models", headers=headers, data=data,
                       content_type="multipart/form-data")


def stored_id(client, entry) -> str:
    """The id of ``entry`` in the store: uploaded now, or found by its 409."""
    response = send_model(client, entry)
    if response.status_code == 409:
        return re.search(r"stored as (\S+) ", response.get_json()["error"]["message"]).group(1)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["id"]


def answers_like_torch(client, entry, model_id, tolerance=0.01):
    """/predict on the real photos, as PNGs and as large JPEGs: the same top-1 and a top
    score within ``tolerance`` of the saved network in torch fp32 with torchvision's
    preprocessing of Pillow's full decode (the model's own size, mean and std), whatever
    precision serves it."""
    engine = client.get("/readyz").get_json()["engine"]
    for photos in (photo_pngs(), large_jpegs()):
        answer = client.post("/predict", content_type="multipart/form-data", data={
            "image": [(io.BytesIO(data), f"{name}.img") for name, data in photos],
            "topk": "1"})
        assert answer.status_code == 200, answer.get_data(as_text=True)
        body = answer.get_json()
        assert body["model"]["id"] == model_id
        expected = torch_answers(entry.module, entry.input_size, entry.mean, entry.std,
                                 photos)
        for (name, _), result, (index, score) in zip(photos, body["results"], expected):
            top = result["predictions"][0]
            assert (top["index"], top["label"]) == (index, entry.classes[index]), name
            assert top["score"] == pytest.approx(score, abs=tolerance), (name, engine)


@pytest.mark.system  # converts new models in builder child processes
@pytest.mark.parametrize("row", ACCEPTED)
def test_every_row_of_the_table_gets_in_and_answers_like_torch(fp32_app, model_files, row):
    """Upload, activate, /predict on the real photos (PNG and large JPEG): the same top-1
    and scores within 0.01 of the saved network in torch fp32 with torchvision's
    preprocessing."""
    entry = getattr(model_files, row)
    client = fp32_app.test_client()
    response = send_model(client, entry, activate="1")
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert (body["arch"], body["classes"], body["active"]) == (entry.arch, entry.classes, True)
    assert body["summary"].startswith(entry.arch if entry.arch != "onnx" else "an ONNX model")
    assert "\ufffd" not in str(body["classes"])
    assert wait_for_model(client, body["id"])["model"]["id"] == body["id"]
    answers_like_torch(client, entry, body["id"])


@pytest.fixture(scope="module")
def default_app(tmp_path_factory):
    """An admin app with the default settings (QUANTIZE=auto: the precision is decided
    when the model is first served)."""
    app = make_app(tmp_path_factory.mktemp("default-settings") / "store")
    app.extensions["model_holder"].warm_up()
    return app


@pytest.mark.system  # converts new models and runs the precision trials in child processes
@pytest.mark.parametrize("row", ["bare", "mlp_head", "onnx_pixels"])
def test_with_the_default_settings_uploads_answer_like_torch(default_app, model_files, row):
    """The model is served in the precision QUANTIZE=auto chose (a reduced one only when
    it moves no probability of a guard image by more than 0.01), and answers like
    torchvision within 0.01 on every photo."""
    entry = getattr(model_files, row)
    client = default_app.test_client()
    response = send_model(client, entry, activate="1")
    assert response.status_code == 201, response.get_data(as_text=True)
    model_id = response.get_json()["id"]
    assert wait_for_model(client, model_id, timeout=600)["model"]["id"] == model_id
    engine = ops.wait_decided(client, timeout=600)
    assert engine["precision"] == engine["auto"]["chosen"], engine
    if engine["precision"] != "fp32":
        chosen = next(t for t in engine["auto"]["tried"]
                      if (t["engine"], t["precision"]) == (engine["engine"],
                                                           engine["precision"]))
        assert chosen["max_score_change"] <= 0.01, chosen
    answers_like_torch(client, entry, model_id)


@pytest.mark.system  # converts new models in builder child processes
def test_an_onnx_model_and_its_data_file_upload_together(fp32_app, model_files):
    """torch.onnx.export's two files (model.onnx + model.onnx.data) sent at once in the
    checkpoint field: stored as one zip, served."""
    import zipfile

    entry = model_files.onnx_external
    client = fp32_app.test_client()
    with zipfile.ZipFile(entry.path) as archive:
        parts = {n: archive.read(n) for n in ("model.onnx", "model.onnx.data")}
    response = client.post("/admin/api/models", headers=BEARER,
                           content_type="multipart/form-data",
                           data={"checkpoint": [(io.BytesIO(data), n)
                                                for n, data in parts.items()],
                                 "classes": ",".join(entry.classes), "name": "two files"})
    assert response.status_code in (201, 409), response.get_data(as_text=True)
    if response.status_code == 201:
        meta = response.get_json()
        assert meta["file"] == "model.zip" and "weights read from model.onnx.data" in \
            meta["summary"]
    missing = client.post("/admin/api/models", headers=BEARER,
                          content_type="multipart/form-data",
                          data={"checkpoint": (io.BytesIO(parts["model.onnx"]), "model.onnx"),
                                "classes": ",".join(entry.classes)})
    message = assert_error(missing, 422, "invalid_checkpoint")
    assert "model.onnx.data" in message and "upload both files" in message


@pytest.mark.system  # the upload converts the model in a child process
def test_an_onnx_model_has_no_heatmap_and_the_page_says_so(fp32_app, model_files):
    client = fp32_app.test_client()
    store = fp32_app.extensions["registry"]
    model_id = stored_id(client, model_files.onnx)
    assert sorted(p.name for p in (store.models_dir / model_id).iterdir()) == [
        "meta.json", "model.onnx"]
    store.activate(model_id)
    try:
        wait_for_model(client, model_id)
        response = client.post("/explain", content_type="multipart/form-data",
                               data={"image": (io.BytesIO(jpeg()), "cat.jpg")})
        message = assert_error(response, 501, "explain_unsupported")
        assert "not available for uploaded ONNX models" in message
        login(client)
        page = client.get("/admin/").get_data(as_text=True)
        row = re.search(rf'<tr id="model-{model_id}".*?</tr>', page, re.S).group(0)
        assert "ONNX · no heatmap" in row and "an ONNX model, 5 classes from the classes " \
            "field" in row
        assert "not available for them" in page  # the upload form says it too
    finally:
        store.activate(BUILTIN)


def test_the_upload_form_asks_for_class_names_and_the_architecture(admin):
    login(admin)
    page = admin.get("/admin/").get_data(as_text=True)
    form = re.search(r'<form id="upload-form".*?</form>', page, re.S).group(0)
    for name in ("checkpoint", "classes", "labels", "arch", "input_size", "mean", "std",
                 "name", "activate"):
        assert f'name="{name}"' in form, name
    arch = re.search(r'<select[^>]*name="arch".*?</select>', form, re.S).group(0)
    assert '<option value="auto" selected>' in arch and '<option value="resnet18">' in arch
    # Every field of the page has a label (hidden CSRF fields aside).
    for control in re.finditer(r"<(input|select|textarea)\b[^>]*>", page):
        tag = control.group(0)
        if 'type="hidden"' in tag:
            continue
        control_id = re.search(r'id="([^"]+)"', tag).group(1)
        assert f'for="{control_id}"' in page, tag


@pytest.mark.system  # converts new models in builder child processes
def test_class_names_are_sent_through_the_page_without_javascript(admin, admin_app,
                                                                  model_files):
    csrf = login(admin)
    entry = model_files.bare
    response = admin.post("/admin/models", content_type="multipart/form-data", data={
        "csrf_token": csrf, "checkpoint": (io.BytesIO(entry.path.read_bytes()), "best.pth"),
        "classes": "cat\ndog\nfox\nowl\nyak", "arch": "auto",
        "labels": (io.BytesIO(b""), "")})  # the empty file input a browser sends
    assert response.status_code == 302, response.get_data(as_text=True)
    page = admin.get(response.location).get_data(as_text=True)
    assert "resnet18 (detected from the weights), 5 classes from the classes field" in page
    meta = admin_app.extensions["registry"].list_models()[0]
    assert meta["classes"] == entry.classes and meta["found"]["arch_from"] == "detected"
    # Without the names, the page says what to send.
    refused = admin.post("/admin/models", content_type="multipart/form-data", data={
        "csrf_token": csrf, "checkpoint": (io.BytesIO(model_files.dataparallel.path
                                                      .read_bytes()), "dp.pth")})
    assert refused.status_code == 422
    assert "give the 5 class names in output order" in refused.get_data(as_text=True)


@pytest.mark.system  # converts new models in builder child processes
def test_refused_uploads_say_what_to_do_and_never_quote_torch(admin, admin_app, model_files):
    store = admin_app.extensions["registry"]
    before = snapshot(store.root)
    cases = [*[(path, form, words) for _, path, form, words in model_files.refused()],
        (model_files.tutorial.path, {"classes": "a,b,c,d,e"}, "the file says cat, dog"),
        (model_files.bare.path, {"classes": "a,b", "labels": "a\nc"},
         "name different classes"),
        (model_files.bare.path, {"classes": "a,b,c,d,e", "mean": "0.5,0.5"},
         "'mean' must be three numbers"),
    ]
    for path, form, words in cases:
        message = assert_error(upload(admin, path, filename=path.name, **form), 422,
                               "invalid_checkpoint")
        for word in (words,) if isinstance(words, str) else words:
            assert word in message, message
        assert not [w for w in TORCH_WORDS if w.lower() in message.lower()], message
    too_big = admin.post("/admin/api/models", headers=BEARER, content_type="multipart/form-data",
                         data={"checkpoint": (io.BytesIO(b"x" * 10), "m.pt"),
                               "labels": (io.BytesIO(b"a\n" * 600_000), "labels.txt")})
    assert "larger than 1 MB" in assert_error(too_big, 413, "too_large")
    assert snapshot(store.root) == before and leftovers(store.root) == []


@pytest.mark.system  # converts new models in builder child processes
def test_the_command_line_takes_class_names_too(tmp_path, model_files):
    app = make_app(tmp_path / "store", ADMIN_TOKEN="")
    runner = app.test_cli_runner()
    labels = tmp_path / "labels.txt"
    labels.write_bytes(model_files.dataparallel.labels[1])
    added = runner.invoke(args=["models", "add", str(model_files.dataparallel.path),
                                "--labels", str(labels), "--name", "Animals"])
    assert added.exit_code == 0, added.output
    assert "Animals  (resnet18 (detected from the weights), 5 classes from the labels file, " \
        "key prefix 'module.' removed)" in added.output
    added = runner.invoke(args=["models", "add", str(model_files.onnx.path), "--classes",
                                "a,b,c,d,e", "--input-size", "160"])
    assert added.exit_code == 0 and "an ONNX model, 5 classes" in added.output, added.output
    refused = runner.invoke(args=["models", "add", str(model_files.bare.path)])
    assert refused.exit_code != 0 and "give the 5 class names" in refused.output
    kinds = sorted(m["kind"] for m in app.extensions["registry"].list_models())
    assert kinds == ["onnx", "pytorch"]
