"""What someone running the service relies on: security headers on every response, no
inline script anywhere, the upload and pixel limits at every entry point, the client
address behind a proxy, and (on a real gunicorn server) requests read before a thread
gets them, the per-worker upload slots and the body timeout."""

from __future__ import annotations

import io
import re
import socket
import time

import pytest
import requests
from prometheus_client import REGISTRY

from tests import hostile, ops
from tests.conftest import encode
from tests.photos import photo
from tests.views.test_admin import BEARER, TOKEN, login, make_app
from webapp.config import ConfigError

ALWAYS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy",
          "Cross-Origin-Opener-Policy", "Permissions-Policy")


def jpeg(size=(320, 240)) -> bytes:
    return encode(photo("coffee").image.resize(size), "JPEG")


@pytest.fixture(scope="module")
def ops_app(tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("ops") / "store")
    app.extensions["model_holder"].warm_up()
    return app


def csp(response) -> dict[str, str]:
    policy = response.headers["Content-Security-Policy"]
    return dict(part.strip().split(" ", 1) for part in policy.split(";"))


# --------------------------------------------------------------------------- headers


def test_every_kind_of_response_carries_the_security_headers(ops_app):
    client = ops_app.test_client()
    image = {"image": (io.BytesIO(jpeg()), "c.jpg")}
    responses = {
        "page": client.get("/"),
        "kiosk": client.get("/kiosk"),
        "kiosk settings": client.get("/kiosk/settings.json"),
        "static js": client.get("/static/js/app.js"),
        "bootstrap css": client.get("/bootstrap/static/css/bootstrap.min.css"),
        "healthz": client.get("/healthz"),
        "readyz": client.get("/readyz"),
        "metrics": client.get("/metrics"),
        "predict": client.post("/predict", data=image, content_type="multipart/form-data"),
        "415": client.post("/predict", data={"image": (io.BytesIO(b"%PDF-1.4"), "x.pdf")},
                           content_type="multipart/form-data"),
        "404 page": client.get("/nowhere", headers={"Accept": "text/html"}),
        "405 json": client.get("/predict"),
        "admin login": client.get("/admin/login"),
        "admin api 401": client.get("/admin/api/models"),
        "admin redirect": client.get("/admin/"),
    }
    for name, response in responses.items():
        missing = [h for h in ALWAYS if h not in response.headers]
        assert not missing, (name, missing)
        policy = csp(response)
        assert policy["script-src"] == "'self'", name  # no inline script, no eval
        assert policy["object-src"] == "'none'" and policy["base-uri"] == "'none'", name
        assert "unsafe" not in policy["style-src"] and "unsafe" not in policy["default-src"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert policy["frame-ancestors"] == "'none'", name
        assert response.headers["X-Frame-Options"] == "DENY", name
    for name in ("predict", "415", "readyz", "metrics", "admin api 401", "admin login"):
        assert responses[name].headers["Cache-Control"] == "no-store", name
    # The kiosk keeps its camera; everything else gets neither camera nor microphone.
    assert responses["kiosk"].headers["Permissions-Policy"].startswith("camera=(self)")
    assert "camera=()" in responses["page"].headers["Permissions-Policy"]


def test_only_the_pages_that_film_may_use_the_camera(tmp_path):
    client = make_app(tmp_path / "store").test_client()
    login(client)
    teach = client.get("/admin/teach")
    assert teach.status_code == 200
    assert teach.headers["Permissions-Policy"].startswith("camera=(self)")
    assert client.get("/kiosk").headers["Permissions-Policy"].startswith("camera=(self)")
    for path in ("/", "/admin/", "/admin/kiosk"):
        assert "camera=()" in client.get(path).headers["Permissions-Policy"], path


def test_only_the_kiosk_may_be_framed_and_only_by_the_sites_named(tmp_path):
    app = make_app(tmp_path / "store",
                   KIOSK_FRAME_ANCESTORS="'self'  https://signage.example")
    client = app.test_client()
    kiosk = client.get("/kiosk")
    assert csp(kiosk)["frame-ancestors"] == "'self' https://signage.example"
    assert "X-Frame-Options" not in kiosk.headers
    page = client.get("/")
    assert csp(page)["frame-ancestors"] == "'none'" and page.headers["X-Frame-Options"] == "DENY"
    with pytest.raises(ConfigError, match="KIOSK_FRAME_ANCESTORS"):
        make_app(tmp_path / "store", KIOSK_FRAME_ANCESTORS="'self'; script-src *")


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
EVENT_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)


def test_no_page_has_inline_script_or_event_handler_attributes(ops_app):
    client = ops_app.test_client()
    pages = {
        "/": client.get("/"),
        "/kiosk": client.get("/kiosk"),
        "login": client.get("/admin/login"),
        "result": client.post("/", data={"image": (io.BytesIO(jpeg()), "c.jpg")},
                              content_type="multipart/form-data"),
        "error": client.get("/nowhere", headers={"Accept": "text/html"}),
    }
    login(client)
    pages["admin"] = client.get("/admin/")
    for name, response in pages.items():
        html = response.get_data(as_text=True)
        assert "<script" in html or name in ("error",), name  # the check has something to see
        assert not INLINE_SCRIPT.search(html), (name, INLINE_SCRIPT.search(html))
        assert not EVENT_HANDLER.search(html), (name, EVENT_HANDLER.search(html))
        assert "javascript:" not in html.lower(), name
    for script in re.findall(r'<script src="([^"]+)"', pages["admin"].get_data(as_text=True)):
        assert script.startswith("/"), script  # served here, never a CDN


# --------------------------------------------------------------------------- limits


def _bomb(kind: str) -> bytes:
    if kind == "pixels":
        return hostile.png_header_only(10_000, 10_000)  # 100 MP > MAX_IMAGE_PIXELS
    return hostile.png_header_only(70_000, 10)  # a side over 65,535


ENTRY_POINTS = ["/predict", "/explain", "/", "/admin/try", "/admin/api/models/builtin/predict"]


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_upload_and_pixel_limits_hold_at_every_entry_point(tmp_path_factory, path):
    """Each way an image gets in: a body over MAX_UPLOAD_MB, a header that claims more
    than MAX_IMAGE_PIXELS, or a side over 65,535 pixels is a 413 that says which limit,
    as JSON for the APIs and as a page for the forms."""
    app = make_app(tmp_path_factory.mktemp("limits") / "store", MAX_UPLOAD_MB=0.2,
                   MAX_CONTENT_LENGTH=int(0.2 * 1024 * 1024), MAX_IMAGE_PIXELS=1_000_000)
    client = app.test_client()
    form, headers = {}, {}
    if path == "/admin/try":
        form = {"csrf_token": login(client), "model_id": "builtin"}
    elif path.startswith("/admin/api"):
        headers = BEARER

    def send(data: bytes):
        return client.post(path, headers=headers, content_type="multipart/form-data",
                           data={**form, "image": (io.BytesIO(data), "x.png")})

    def rejected(reason):
        return REGISTRY.get_sample_value("classifier_images_rejected_total",
                                         {"reason": reason}) or 0

    before = {reason: rejected(reason) for reason in ("too_large", "too_many_pixels")}
    json_api = path in ("/predict", "/explain") or path.startswith("/admin/api")
    too_big = send(b"\x89PNG" + b"\0" * 300_000)
    assert too_big.status_code == 413, too_big.get_data(as_text=True)[:300]
    text = too_big.get_data(as_text=True)
    assert "0.2 MB limit" in text, text[:500]
    assert "MAX_CHECKPOINT_MB" not in text  # the image limit, not the checkpoint one
    assert too_big.is_json == json_api
    for kind, words in (("pixels", "the limit is 1,000,000"),
                        ("side", "no side may be longer than 65,535")):
        response = send(_bomb(kind))
        assert response.status_code == 413, (kind, response.get_data(as_text=True)[:300])
        assert words in response.get_data(as_text=True), kind
        if json_api:
            assert response.get_json()["error"]["code"] == "too_many_pixels"
    assert send(jpeg()).status_code == 200  # and a normal photo still gets through
    assert rejected("too_large") == before["too_large"] + 1  # counted in /metrics
    assert rejected("too_many_pixels") == before["too_many_pixels"] + 2


def test_behind_a_trusted_proxy_each_client_has_its_own_login_limit(tmp_path):
    """TRUSTED_PROXIES=1 takes the client address from X-Forwarded-For, so one client's
    failed logins do not lock out everyone behind the same nginx; without it, the
    header is ignored (a client could otherwise pick any address it likes)."""
    for hops, other_blocked in ((1, False), (0, True)):
        app = make_app(tmp_path / f"store{hops}", TRUSTED_PROXIES=hops,
                       ADMIN_LOGIN_LIMIT="2 per minute")
        client = app.test_client()

        def attempt(address, token="wrong", client=client):
            return client.get("/admin/api/models", headers={
                "Authorization": f"Bearer {token}", "X-Forwarded-For": address}).status_code

        assert [attempt("198.51.100.1") for _ in range(3)] == [401, 401, 429]
        assert (attempt("198.51.100.2", TOKEN) == 429) is other_blocked


# --------------------------------------------------------------------------- real server


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("slots")
    server = ops.launch(base, "slots", WEB_CONCURRENCY=1, TORCH_THREADS=1, HTTP_THREADS=4,
                        MAX_CONCURRENT_UPLOADS=1, UPLOAD_QUEUE_SECONDS=1, REQUEST_TIMEOUT=3,
                        MODEL_DIR=base / "models")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _stalled_upload(server, body_size=200_000, sent=1000, chunked=False) -> socket.socket:
    """A client that sends the headers and the first bytes of an upload, then stalls."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {body_size}"
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/"
            f"form-data; boundary=xyz\r\n{length}\r\n\r\n").encode()
    body = (b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n") + jpeg()[:sent]
    if chunked:
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n"
    sock.sendall(head + body)
    return sock


def _status_line(sock: socket.socket) -> str:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode()


@pytest.mark.system
def test_a_stalled_upload_holds_no_thread_and_no_upload_slot(slow_server):
    """The worker reads a request in its event loop before a thread (and the only
    upload slot) is given to it: while one client stalls, a photo is classified and
    /healthz answers; REQUEST_TIMEOUT later the stalled client is told 408."""
    url = slow_server.url
    started = time.monotonic()
    stalled = [_stalled_upload(slow_server) for _ in range(6)]  # more than HTTP_THREADS
    try:
        assert requests.get(url + "/healthz", timeout=10).status_code == 200
        ok = requests.post(url + "/predict", files={"image": ("c.jpg", jpeg())}, timeout=30)
        assert ok.status_code == 200 and ok.json()["predictions"][0]["label"] == "espresso"
        for sock in stalled:
            assert _status_line(sock).startswith("HTTP/1.1 408")
        assert time.monotonic() - started >= 3
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.system
def test_a_stalled_chunked_upload_holds_its_slot_only_until_the_request_timeout(slow_server):
    """A chunked body is not read ahead (its length is unknown): the app reads it, with
    the upload slot taken, under its own body deadline."""
    url = slow_server.url
    started = time.monotonic()
    stalled = _stalled_upload(slow_server, chunked=True)
    try:
        time.sleep(0.5)  # it has the worker's only upload slot now
        assert requests.get(url + "/healthz", timeout=10).status_code == 200
        busy = requests.post(url + "/predict", files={"image": ("c.jpg", jpeg())}, timeout=30)
        assert busy.status_code == 503, busy.text
        assert busy.json()["error"]["code"] == "server_busy"
        assert busy.headers["Retry-After"] == "1"
        # REQUEST_TIMEOUT later the stalled client is told 408 and the slot is free.
        assert _status_line(stalled).startswith("HTTP/1.1 408")
        assert time.monotonic() - started >= 3
    finally:
        stalled.close()
    ok = requests.post(url + "/predict", files={"image": ("c.jpg", jpeg())}, timeout=30)
    assert ok.status_code == 200 and ok.json()["predictions"][0]["label"] == "espresso"
    samples = ops.scrape(url)
    assert ops.total(samples, "classifier_uploads_refused_total", reason="busy") >= 1
    assert ops.total(samples, "classifier_uploads_refused_total", reason="timeout") >= 1
    assert ops.total(samples, "classifier_uploads_in_progress") == 0


@pytest.mark.system
def test_a_client_dripping_its_upload_is_cut_off_too(slow_server):
    """One byte every half second never stalls longer than the timeout, but the whole
    body must arrive within REQUEST_TIMEOUT."""
    sock = _stalled_upload(slow_server, sent=10)
    started = time.monotonic()
    try:
        sock.settimeout(0.5)
        status = ""
        for _ in range(40):
            try:
                sock.sendall(b"x")
                data = sock.recv(4096)
                status = data.split(b"\r\n", 1)[0].decode()
                break
            except TimeoutError:
                continue
        assert status.startswith("HTTP/1.1 408"), status
        assert 2.5 <= time.monotonic() - started < 15
    finally:
        sock.close()
    line = [entry for entry in ops.access_lines(slow_server.log) if entry["status"] == 408]
    assert line and line[-1]["error"] == "request_timeout"
