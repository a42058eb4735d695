"""What someone running the service relies on: security headers on every response, no
inline script anywhere, the upload and pixel limits at every entry point, the client
address behind a proxy, and (on a real gunicorn server) requests read before a thread
gets them, the per-worker upload slots and the body timeout."""

from __future__ import annotations

import contextlib
import http.client
import io
import re
import socket
import time

import pytest
import requests
from prometheus_client import REGISTRY

from testkit import attacks, hostile, ops
from testkit.admin import BEARER, TOKEN, login, make_app
from testkit.photos import encode, photo
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
        "v2 ready": client.get("/v2/health/ready"),
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
    for name in ("predict", "415", "readyz", "metrics", "admin api 401", "admin login",
                 "v2 ready"):
        assert responses[name].headers["Cache-Control"] == "no-store", name
    # The kiosk keeps its camera; everything else gets neither camera nor microphone.
    assert responses["kiosk"].headers["Permissions-Policy"].startswith("camera=(self)")
    assert "camera=()" in responses["page"].headers["Permissions-Policy"]


def test_a_request_no_route_takes_is_answered_like_its_address(ops_app):
    """A wrong method on an API address, or an address below one that does not exist, gets
    the API's JSON error even when a browser asks (the Open Inference Protocol's shape under
    /v2), and nothing of /predict, /explain or the admin area is kept by a cache; elsewhere
    a browser gets the error page, which may not use the camera (even at the kiosk's
    address: an error page is not the page)."""
    client = ops_app.test_client()
    browser = {"Accept": "text/html"}
    api = {("GET", "/predict"): 405, ("GET", "/explain"): 405, ("POST", "/healthz"): 405,
           ("POST", "/readyz"): 405, ("POST", "/predict/"): 404,
           ("DELETE", "/admin/api/models"): 405, ("GET", "/admin/api/nowhere"): 404}
    for (method, path), status in api.items():
        response = client.open(path, method=method, headers=browser)
        assert response.status_code == status and response.is_json, (method, path)
        code = "method_not_allowed" if status == 405 else "not_found"
        assert response.get_json()["error"]["code"] == code, (method, path)
        if path != "/healthz":
            assert response.headers["Cache-Control"] == "no-store", (method, path)
    for method, path, status in (("POST", "/v2", 405), ("GET", "/v2/nowhere", 404)):
        response = client.open(path, method=method, headers=browser)
        assert response.status_code == status, (method, path)
        assert isinstance(response.get_json()["error"], str), (method, path)
    admin_page = client.get("/admin/nowhere", headers=browser)
    assert admin_page.status_code == 404 and admin_page.mimetype == "text/html"
    assert admin_page.headers["Cache-Control"] == "no-store"
    for method, path in (("GET", "/nowhere"), ("PUT", "/kiosk"), ("GET", "/kiosk/nowhere")):
        page = client.open(path, method=method, headers=browser)
        assert page.status_code in (404, 405) and page.mimetype == "text/html", path
        assert page.headers["X-Frame-Options"] == "DENY", path
        assert "camera=()" in page.headers["Permissions-Policy"], path


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


@pytest.mark.parametrize("framed, done, bad, size", [
    (b"5\r\nhello\r\n0\r\n\r\n", True, False, 5),
    (b"5;name=v\r\nhello\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", True, False, 8),
    (b"A\r\n0123456789\r\n", False, False, 10),  # the last chunk has not come yet
    (b"5\r\nhelloXX", False, True, 5),  # no CRLF after the data
    (b"zz\r\n", False, True, 0),  # not a hex size
    (b"1" * 2000, False, True, 0),  # a size line that never ends
])
def test_the_worker_finds_where_a_chunked_body_ends(framed, done, bad, size):
    """Fed in pieces of every size, as a socket delivers them."""
    from webapp.http.worker import ChunkedBody

    for step in (1, 3, len(framed)):
        scan, data = ChunkedBody(0), bytearray()
        for at in range(0, len(framed), step):
            data += framed[at:at + step]
            scan.feed(data)
        assert (scan.done, scan.bad, scan.size) == (done, bad, size), step


# --------------------------------------------------------------------------- real server


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("slots")
    server = ops.launch(base, "slots", WEB_CONCURRENCY=1, TORCH_THREADS=1, HTTP_THREADS=4,
                        MAX_CONCURRENT_UPLOADS=1, UPLOAD_QUEUE_SECONDS=1, REQUEST_TIMEOUT=3,
                        MAX_CONNECTIONS_PER_CLIENT=16, MODEL_DIR=base / "models")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _stalled_upload(server, body_size=200_000, sent=1000, chunked=False) -> socket.socket:
    """A client that sends the headers and the first bytes of an upload, then stalls."""
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {body_size}"
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/"
            f"form-data; boundary=xyz\r\n{length}\r\n\r\n").encode()
    body = (b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n") + jpeg()[:sent]
    if chunked:
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n"
    # Connected once the bytes are ready: a connection that sends nothing within the
    # header time is closed without an answer.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
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
def test_chunked_uploads_that_never_finish_hold_no_slot(slow_server):
    """A chunked body is read in the event loop like any other: twelve clients that send
    a chunked /predict head (and a first chunk) and then nothing hold no thread and no
    upload slot -- a photo is answered meanwhile -- and each is told 408 after
    REQUEST_TIMEOUT."""
    url = slow_server.url
    stalled = [_stalled_upload(slow_server, chunked=True) for _ in range(12)]
    try:
        time.sleep(0.5)
        assert requests.get(url + "/healthz", timeout=10).status_code == 200
        ok = requests.post(url + "/predict", files={"image": ("c.jpg", jpeg())}, timeout=30)
        assert ok.status_code == 200 and ok.json()["predictions"][0]["label"] == "espresso"
        for sock in stalled:
            assert _status_line(sock).startswith("HTTP/1.1 408")
    finally:
        for sock in stalled:
            sock.close()
    samples = ops.scrape(url)
    assert ops.total(samples, "classifier_uploads_refused_total", reason="timeout") >= 12
    assert ops.total(samples, "classifier_uploads_in_progress") == 0


@pytest.mark.system
def test_a_whole_chunked_upload_is_classified(slow_server):
    """A chunked body that arrives (extensions and a trailer included) is read ahead
    and answered like a Content-Length one; a raw chunked image over MAX_UPLOAD_MB is
    still a 413."""
    response = requests.post(slow_server.url + "/predict", timeout=30,
                             data=attacks.chunks(jpeg(), 1000),
                             headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == "espresso"
    body = jpeg()
    framed = b"".join(f"{len(body[i:i + 700]):x};ext=1\r\n".encode() + body[i:i + 700]
                      + b"\r\n" for i in range(0, len(body), 700)) + b"0\r\nX-Trailer: 1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=30) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + framed)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and b"espresso" in answer


@pytest.mark.system
def test_one_address_cannot_take_every_connection(slow_server):
    """MAX_CONNECTIONS_PER_CLIENT (16 here): one address holding 16 idle connections
    gets 503 for the next one, closed; another address is served as usual; the idle ones
    are closed without an answer after the header timeout (REQUEST_TIMEOUT 3 s here)."""
    idle = []
    try:
        for _ in range(16):
            sock = socket.create_connection(("127.0.0.1", slow_server.port), timeout=30,
                                            source_address=("127.0.0.2", 0))
            idle.append(sock)
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", slow_server.port), timeout=30,
                                         source_address=("127.0.0.2", 0))
        with extra:
            refused = extra.recv(4096)
        assert refused.startswith(b"HTTP/1.1 503") and b"too_many_connections" in refused
        ok = requests.post(slow_server.url + "/predict", files={"image": ("c.jpg", jpeg())},
                           timeout=30)
        assert ok.status_code == 200
        for sock in idle:  # never sent a byte: closed, no request to answer
            assert sock.recv(100) == b""
        again = socket.create_connection(("127.0.0.1", slow_server.port), timeout=30,
                                         source_address=("127.0.0.2", 0))
        with again:  # the closed ones no longer count
            again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert again.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.system
def test_a_client_keeping_its_answered_connections_open_is_not_refused(slow_server):
    """A script that keeps every answered connection open (HTTP keep-alive, e.g. each
    response object kept): at its share of 16, each new connection takes the place of
    its oldest idle one, which the server closes; 40 requests in a row all answered."""
    kept = []
    try:
        for _ in range(40):
            conn = http.client.HTTPConnection("127.0.0.1", slow_server.port, timeout=30,
                                              source_address=("127.0.0.3", 0))
            kept.append(conn)
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert response.status == 200, response.read()
            response.read()
        for conn in kept[:20]:  # the oldest: closed by the server
            assert conn.sock.recv(100) == b""
        newest = kept[-1]
        newest.request("GET", "/healthz")  # still kept alive
        assert newest.getresponse().status == 200
    finally:
        for conn in kept:
            conn.close()


@pytest.mark.system
def test_headers_are_bounded_in_size_and_in_time(slow_server):
    """A head over 32 KB is answered 431 as it arrives (gunicorn accepted ~800 KB); one
    trickled slowly gets 408 when its header time is up, however many bytes it sent."""
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for n in range(100):
                sock.sendall(f"X-Filler-{n}: {'y' * 500}\r\n".encode())
        except OSError:
            pass
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431") and b"request_header_too_large" in answer
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(0.25)
        answer = b""
        for n in range(200):  # 25 KB at ~4 KB/s, under the size limit
            try:
                sock.sendall(f"X-Slow-{n}: {'z' * 120}\r\n".encode())
                answer = sock.recv(4096)
                break
            except TimeoutError:
                continue
            except OSError:
                break
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"headers arrived too slowly" in answer
    ok = requests.get(slow_server.url + "/healthz", timeout=10,
                      headers={f"X-Fine-{n}": "v" * 400 for n in range(40)})  # 17 KB
    assert ok.status_code == 200


@pytest.mark.system
def test_the_workers_own_answers_are_in_the_visitors_language(slow_server):
    """A request the worker answers itself (a 431 here) gets its message in the language
    the app would answer it in: Chinese for a browser that asks for it (Accept-Language,
    or ?lang), English for one that does not."""
    import json

    from webapp.http.worker import MAX_HEAD_BYTES
    from webapp.messages import Message, catalog_gettext, render

    def too_large_head(line: bytes, headers: bytes = b"") -> dict:
        with socket.create_connection(("127.0.0.1", slow_server.port), timeout=30) as sock:
            sock.sendall(line + b"Host: x\r\n" + headers)
            try:
                for n in range(100):
                    sock.sendall(f"X-Filler-{n}: {'y' * 500}\r\n".encode())
            except OSError:
                pass
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(4096):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
        return json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]

    message = Message("The request's line and headers are larger than the %(kb)s KB this "
                      "server accepts.", kb=MAX_HEAD_BYTES // 1024)
    chinese = render(message, catalog_gettext("zh_Hans_CN"))
    assert chinese != str(message)
    asked = too_large_head(b"GET /healthz HTTP/1.1\r\n", b"Accept-Language: zh-CN,zh;q=0.9\r\n")
    assert asked == {"code": "request_header_too_large", "message": chinese}
    switched = too_large_head(b"GET /healthz?lang=zh HTTP/1.1\r\n")
    assert switched["message"] == chinese
    assert too_large_head(b"GET /healthz HTTP/1.1\r\n")["message"] == str(message)


@pytest.mark.system
def test_an_oversized_upload_is_answered_without_reading_its_body(slow_server):
    """Content-Length over the route's limit (a 100 MB "photo"; a 300 MB checkpoint with
    no admin token): the answer comes while the client is still sending, and the
    connection is closed; the server read almost none of it."""
    for path, claimed, status in (("/predict", 100 << 20, b"413"),
                                  ("/admin/api/models", 300 << 20, b"403")):
        with socket.create_connection(("127.0.0.1", slow_server.port), timeout=30) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/"
                         f"form-data; boundary=b\r\nContent-Length: {claimed}\r\n\r\n"
                         .encode())
            sent, answer = 0, b""
            sock.settimeout(0.05)
            while not answer and sent < 64 << 20:
                try:
                    sent += sock.send(b"\0" * 65536)
                    answer = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    sock.settimeout(5)
                    answer = sock.recv(4096)
                    break
            assert answer.split(b" ")[1] == status, answer[:200]
            assert sent < 32 << 20  # answered long before the body could have arrived
    ok = requests.post(slow_server.url + "/predict", files={"image": ("c.jpg", jpeg())},
                       timeout=30)
    assert ok.status_code == 200


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
    line = ops.logged_requests(slow_server, 1, status=408)
    assert line and line[-1]["error"] == "request_timeout"
