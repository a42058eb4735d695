"""No single client can stall or bloat a worker: every attack of testkit/attacks.py gets
its 4xx JSON error with a message for a person, through the real app (in-process
here; on a real gunicorn, with a real photo sent meanwhile, further down).  No
durations are asserted: bench/abuse.py measures them."""

from __future__ import annotations

import io
import random
import socket
import threading
import time
import zipfile

import pytest
import requests
from urllib3 import encode_multipart_formdata

from testkit import attacks, ops
from testkit.admin import BEARER, TOKEN, csrf_from
from webapp import create_app

URLENCODED = "application/x-www-form-urlencoded"
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat", "lynx", "Persian cat"}


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
    """2 MB of ``a=&`` to the login form (no login needed): 413; to /predict, where a big
    URL-encoded body is a photo sent without its type, a 400 that says how to send it.
    Neither is parsed."""
    flood = attacks.form_flood(2 * attacks.MB)
    response = client.post("/admin/login", data=flood, content_type=URLENCODED,
                           headers={"Accept": "application/json"})
    message = error_of(response, 413, "form_too_large")
    assert "64 KB" in message and "multipart/form-data" in message
    response = client.post("/predict", data=flood, content_type=URLENCODED,
                           headers={"Accept": "application/json"})
    assert "Content-Type: image/jpeg" in error_of(response, 400, "no_image")
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


# --------------------------------------------------------------------------- real server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The shipped setup (gunicorn app:app, its gunicorn.conf.py), one worker."""
    base = tmp_path_factory.mktemp("abuse-server")
    server = ops.launch(base, "abuse", WEB_CONCURRENCY=1, TORCH_THREADS=1, REQUEST_TIMEOUT=3,
                        MODEL_DIR=base / "models", DATA_DIR=base / "data", ADMIN_TOKEN=TOKEN)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def photo_while(url: str, attacks_to_send: list) -> tuple[list, requests.Response]:
    """Send every attack (a callable returning a response) in its own thread, and a
    real photo to /predict once they are on their way; returns their answers."""
    answers = [None] * len(attacks_to_send)

    def run(n, attack):
        answers[n] = attack()

    threads = [threading.Thread(target=run, args=item) for item in enumerate(attacks_to_send)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    photo = requests.post(url + "/predict", files={"image": ("cat.jpg", attacks.real_jpeg())},
                          timeout=120)
    for thread in threads:
        thread.join(timeout=300)
    return answers, photo


def assert_cat(response: requests.Response) -> None:
    assert response.status_code == 200, response.text[:300]
    assert response.json()["predictions"][0]["label"] in CAT_LABELS


def codes(responses) -> list[tuple[int, str]]:
    return [(r.status_code, r.json()["error"]["code"]) for r in responses]


@pytest.mark.system
def test_images_built_to_be_slow_are_refused_while_a_photo_is_answered(server):
    filler = attacks.filler_jpeg(19 * attacks.MB)
    scans = attacks.many_scans_jpeg(5000)

    def upload(data):
        return lambda: requests.post(server.url + "/predict", timeout=120,
                                     files={"image": ("x.jpg", data, "image/jpeg")})

    answers, photo = photo_while(server.url, [upload(filler), upload(filler), upload(scans)])
    assert codes(answers) == [(422, "too_slow_to_decode")] * 3
    assert_cat(photo)


@pytest.mark.system
def test_form_json_and_part_floods_are_refused_while_a_photo_is_answered(server):
    url = server.url
    flood, parts = attacks.form_flood(19 * attacks.MB), attacks.multipart_parts(5000)
    deep = attacks.deep_json(30_000)
    answers, photo = photo_while(url, [
        lambda: requests.post(url + "/admin/login", data=flood, timeout=120, headers={
            "Content-Type": URLENCODED, "Accept": "application/json"}),
        lambda: requests.post(url + "/predict", data=parts, timeout=120,
                              headers={"Content-Type": "multipart/form-data; boundary=b"}),
        lambda: requests.put(url + "/admin/api/kiosk", data=deep, timeout=120, headers={
            **BEARER, "Content-Type": "application/json"}),
    ])
    assert codes(answers) == [(413, "form_too_large"), (413, "form_too_large"),
                              (400, "bad_json")]
    assert_cat(photo)


@pytest.mark.system
def test_hostile_archives_are_refused_while_a_photo_is_answered(server):
    url = server.url

    def archive(data, name):
        return lambda: requests.post(url + "/admin/api/datasets", headers=BEARER, timeout=300,
                                     files={"archive": (f"{name}.zip", data)},
                                     data={"name": name})

    answers, photo = photo_while(url, [
        archive(attacks.filler_zip(members=10), "padding"),
        archive(attacks.understated_zip(100_000), "understated"),
    ])
    assert codes(answers) == [(422, "too_slow_to_decode"), (413, "too_many_files")]
    assert_cat(photo)
    assert requests.get(url + "/admin/api/datasets", headers=BEARER,
                        timeout=30).json()["datasets"] == []


@pytest.mark.system
def test_a_chunked_body_over_the_limit_is_a_413(server):
    body = attacks.real_jpeg() + bytes(21 * attacks.MB)
    response = requests.post(server.url + "/predict", data=attacks.chunks(body), timeout=120,
                             headers={"Content-Type": "image/jpeg"})
    assert codes([response]) == [(413, "too_large")]
    assert_cat(requests.post(server.url + "/predict", timeout=120,
                             data=attacks.chunks(attacks.real_jpeg()),
                             headers={"Content-Type": "image/jpeg"}))


@pytest.mark.system
def test_fifty_slow_header_clients_do_not_stall_the_server(server):
    """50 connections sending one header line a second hold no thread: /predict and
    /healthz answer meanwhile; after REQUEST_TIMEOUT each slow client is told 408."""
    slow = [socket.create_connection(("127.0.0.1", server.port), timeout=30)
            for _ in range(50)]
    try:
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for line in range(2):
            time.sleep(0.5)
            for sock in slow:
                sock.sendall(f"X-Line-{line}: slowly\r\n".encode())
        assert_cat(requests.post(server.url + "/predict", timeout=60,
                                 files={"image": ("cat.jpg", attacks.real_jpeg())}))
        assert requests.get(server.url + "/healthz", timeout=60).status_code == 200
        for sock in slow:
            assert sock.recv(100).startswith(b"HTTP/1.1 408 ")
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.system
def test_a_dataset_archive_may_take_longer_than_the_request_timeout(server):
    """A steady upload is not cut off at REQUEST_TIMEOUT (3 s here): one under
    MAX_UPLOAD_MB (read ahead by the worker) and one over it (streamed to DATA_DIR by
    the app), each sent over about 5 s."""
    for name, filler in (("small", 2 * attacks.MB), ("large", 21 * attacks.MB)):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("cat/cat.png", attacks.real_png())
            zf.writestr("cat/noise.bin", random.Random(0).randbytes(filler))
        body, content_type = encode_multipart_formdata({
            "archive": (f"{name}.zip", buf.getvalue()), "name": name})
        response = requests.post(server.url + "/admin/api/datasets", timeout=120,
                                 data=paced(body, seconds=5),
                                 headers={**BEARER, "Content-Type": content_type})
        assert response.status_code == 201, response.text[:300]
        assert response.json()["import"]["per_class"] == {"cat": 1}


class paced(io.BytesIO):  # noqa: N801 - a file object, like open()
    """A body that gives its bytes out over ``seconds`` (http.client reads it in
    blocks; its length is known, so it is sent with a Content-Length)."""

    def __init__(self, data: bytes, seconds: float):
        super().__init__(data)
        self.rate = len(data) / seconds
        self.started = None

    def read(self, size=-1):
        self.started = self.started or time.monotonic()
        due = self.started + self.tell() / self.rate
        time.sleep(max(0.0, due - time.monotonic()))
        return super().read(size)


@pytest.mark.system
def test_what_the_worker_reads_ahead_reaches_the_app_as_sent(server):
    """Two requests in one packet (pipelining) get two answers in order; a client that
    waits for 100 Continue (curl does, for bodies over 1 MB) gets it once, then its 200."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = b""
        while chunk := sock.recv(65536):
            answers += chunk
    assert answers.count(b"HTTP/1.1 200 OK") == 2
    assert answers.index(b'"status":"ok"') < answers.index(b'"status":"ready"')
    photo = attacks.real_jpeg()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     f"Content-Length: {len(photo)}\r\nExpect: 100-continue\r\n"
                     f"Connection: close\r\n\r\n".encode())
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(photo)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"100 Continue" not in answer
    assert b"cat" in answer
