"""Classroom network mode on a real gunicorn (``CLASSROOM=1``, ``HOST`` unset, a fresh data
folder, no ADMIN_TOKEN), reached at a **non-loopback** address of this machine, as a phone
on the classroom network reaches it:

* the kiosk comes over HTTPS verified with the generated CA (requests, and Chromium
  trusting only that CA), it is a secure context and ``getUserMedia`` works there with
  Chromium's fake camera; the QR code on the page decodes to that very URL (zxing-cpp
  reads a screenshot of it), the large one too; the CA certificate downloads;
* accepting the certificate warning once (without the CA) gives the camera too;
* slow TLS clients hold no thread (the worker shakes hands in its event loop);
* the admin page opened on the server machine itself (https://127.0.0.1) lets the teacher
  choose a password, the login works with it (also from the network), and the same page
  opened from the network address refuses;
* when the camera is refused or missing, the kiosk and Teach say why and what to do.

Chromium trusts the CA the way a Linux desktop does: through an NSS database in its
``$HOME`` (``certutil``, Debian's libnss3-tools).  Screenshots go to
artifacts/screenshots/ (copies in docs/)."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time

import pytest
import requests
import zxingcpp
from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from testkit.browser import (
    FAKE_CAMERA_ARGS,
    SIZES,
    assert_no_sideways_scroll,
    assert_wcag_aa,
    launch,
    screenshot,
    write_y4m,
)
from testkit.photos import photo
from testkit.server import Server, free_port
from webapp.classroom import machine_names

PASSWORD = "bright-yellow-kiosk"
TOKEN = "classroom-test-token-0123456789"
REQUEST_TIMEOUT = 4
TIMEOUT_MS = 60_000
NO_NETWORK = """\
This test reaches the server at a non-loopback address of this machine, and it has none.
Give it one, e.g. (as root):
  ip link add classroom0 type dummy && ip addr add 10.213.7.1/24 dev classroom0 \\
    && ip link set classroom0 up"""
NO_CERTUTIL = """\
Chromium trusts the classroom's CA through an NSS database made with certutil, which is
missing: sudo apt-get install -y libnss3-tools (make system-deps installs it)."""


def network_address() -> str:
    """The address the server shows first: a non-loopback IPv4 address of this machine."""
    found = [a for a in machine_names().addresses if a.version == 4 and not a.is_loopback]
    if not found:
        pytest.fail(NO_NETWORK, pytrace=False)
    return str(found[0])


def wait_ready_https(server: Server, ca, timeout: float = 600) -> None:
    """Ready within a generous bound: the first start of a test session builds the model
    in a child process, minutes on a busy machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited with {server.proc.returncode}:\n{server.log}")
        if os.path.exists(ca):
            try:
                if requests.get(server.url + "/readyz", verify=ca, timeout=5).ok:
                    return
            except requests.RequestException:
                pass
        time.sleep(0.3)
    raise AssertionError(f"server not ready after {timeout} s:\n{server.log}")


def gunicorn(base, port, **env_overrides) -> Server:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HOST", "ADMIN_TOKEN") and not k.startswith("KIOSK_")}
    env.update(PORT=str(port), WEB_CONCURRENCY="1", MODEL_DIR=str(base / "models"),
               DATA_DIR=str(base / "data"), **env_overrides)
    return Server([sys.executable, "-m", "gunicorn", "app:app"], env, port,
                  base / f"server-{port}.log")


@pytest.fixture(scope="module")
def classroom(tmp_path_factory):
    """``CLASSROOM=1`` on a fresh data folder, no token, HOST unset: the documented
    classroom start (``make classroom``)."""
    base = tmp_path_factory.mktemp("classroom")
    port = free_port()
    server = gunicorn(base, port, CLASSROOM="1", REQUEST_TIMEOUT=str(REQUEST_TIMEOUT))
    server.url = f"https://{network_address()}:{port}"
    server.ca = str(base / "models" / "tls" / "ca.crt")
    try:
        wait_ready_https(server, server.ca)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def plain_lan(tmp_path_factory):
    """The server on the network over plain HTTP (HOST=0.0.0.0, no classroom mode): a
    page from it is not a secure context on another machine."""
    base = tmp_path_factory.mktemp("plain")
    port = free_port()
    server = gunicorn(base, port, HOST="0.0.0.0", ADMIN_TOKEN=TOKEN)
    server.url = f"http://{network_address()}:{port}"
    try:
        server.wait_ready(timeout=600)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def playwright_instance():
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def camera(tmp_path_factory):
    return write_y4m(photo("chelsea").image, tmp_path_factory.mktemp("camera") / "cat.y4m")


def home_env(home) -> dict:
    """The environment of a Chromium whose $HOME is ``home``."""
    return {**os.environ, "HOME": str(home)}


def home_trusting(ca: str, home) -> str:
    """A $HOME whose NSS database trusts ``ca`` to identify web sites (what installing
    the CA certificate does on a Linux desktop)."""
    if shutil.which("certutil") is None:
        pytest.fail(NO_CERTUTIL, pytrace=False)
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True)
    subprocess.run(["certutil", "-A", "-d", f"sql:{nssdb}", "-t", "C,,", "-n",
                    "classroom-ca", "-i", ca], check=True)
    return str(home)


@pytest.fixture(scope="module")
def trusting_browser(playwright_instance, classroom, camera, tmp_path_factory):
    """Chromium that trusts the classroom's CA; its fake camera films a cat, allowed."""
    home = home_trusting(classroom.ca, tmp_path_factory.mktemp("home"))
    browser = launch(playwright_instance, FAKE_CAMERA_ARGS + [
        f"--use-file-for-fake-video-capture={camera}"], env=home_env(home))
    yield browser
    browser.close()


def new_page(browser, size="desktop", **options):
    context = browser.new_context(**SIZES[size], **options)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    return context, page


def decode_qr(png: bytes) -> list[str]:
    return [found.text for found in zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))]


def wait_state(page, state):
    page.wait_for_selector(f'#kiosk[data-state="{state}"]')


# --------------------------------------------------------------------------- the kiosk


@pytest.mark.browser
@pytest.mark.parametrize("size", list(SIZES))
def test_a_phone_gets_the_kiosk_over_https_at_the_network_address_with_its_camera(
        classroom, trusting_browser, size):
    url = classroom.url + "/kiosk"
    assert url.startswith("https://") and "127.0.0.1" not in url
    # Verified with the generated CA, and only with it.
    assert requests.get(url, verify=classroom.ca, timeout=30).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, timeout=30)  # the usual public CAs do not know this server
    context, page = new_page(trusting_browser, size)
    try:
        response = page.goto(url)  # no certificate error to bypass: the CA is trusted
        assert response.status == 200 and page.url == url
        assert page.evaluate("window.isSecureContext") is True
        wait_state(page, "live")  # getUserMedia gave the camera
        page.wait_for_function("() => document.getElementById('camera').videoWidth > 0")
        assert page.locator("#upload-zone").is_hidden()
        assert_no_sideways_scroll(page)
        if size == "phone":  # whoever holds the phone is already here: no QR code
            assert page.locator("#classroom").is_hidden()
            screenshot(page, "kiosk-classroom-phone")
        else:
            assert page.locator("#classroom-url").inner_text() == url
            assert "Proceed" in page.locator("#classroom-certificate").inner_text()
            assert classroom.url + "/classroom/ca.crt" in page.locator(
                "#classroom-certificate").inner_text()
            assert decode_qr(page.locator("#classroom-qr").screenshot()) == [url]
            assert_wcag_aa(page)
            screenshot(page, "kiosk-classroom")
            # A click shows it large, for a class to scan from their seats.
            page.locator(".classroom-qr-button").click()
            large = page.locator("#classroom-qr-large")
            large.wait_for(state="visible")
            assert decode_qr(large.locator("img").screenshot()) == [url]
            screenshot(page, "kiosk-classroom-qr")
            page.get_by_role("button", name="Close").click()
            large.wait_for(state="hidden")
        assert not page.errors, page.errors
    finally:
        context.close()


@pytest.mark.browser
def test_accepting_the_certificate_warning_once_also_gives_the_camera(
        playwright_instance, classroom, camera):
    """A phone without the CA: first the warning (Chromium refuses the page as it is);
    once the warning is accepted -- what "Advanced, then Proceed" does -- the page is a
    secure context and the camera works."""
    browser = launch(playwright_instance, FAKE_CAMERA_ARGS + [
        f"--use-file-for-fake-video-capture={camera}"])
    try:
        context, page = new_page(browser, "phone")
        with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
            page.goto(classroom.url + "/kiosk")
        context.close()
        context, page = new_page(browser, "phone", ignore_https_errors=True)
        assert page.goto(classroom.url + "/kiosk").status == 200
        assert page.evaluate("window.isSecureContext") is True
        wait_state(page, "live")
        context.close()
    finally:
        browser.close()


@pytest.mark.system
def test_the_ca_certificate_downloads_and_its_key_does_not(classroom):
    response = requests.get(classroom.url + "/classroom/ca.crt", verify=classroom.ca,
                            timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-x509-ca-cert"
    assert "classroom-ca.crt" in response.headers["Content-Disposition"]
    with open(classroom.ca, "rb") as fh:
        assert response.content == fh.read()
    assert b"PRIVATE KEY" not in response.content
    for path in ("/classroom/ca.key", "/classroom/server.key", "/classroom/../tls/ca.key"):
        assert requests.get(classroom.url + path, verify=classroom.ca,
                            timeout=30).status_code == 404


@pytest.mark.system
def test_slow_tls_clients_hold_no_thread(classroom):
    """Eight clients that send part of a TLS handshake and eight that shake hands and
    then send part of a request: more than the worker's 4 threads.  /healthz and a photo
    are answered meanwhile; after REQUEST_TIMEOUT the slow ones are closed (those past
    the handshake get their 408)."""
    host, port = classroom.url.removeprefix("https://").rsplit(":", 1)
    client = ssl.create_default_context(cafile=classroom.ca)
    hello, heads = [], []
    try:
        for _ in range(8):
            sock = socket.create_connection((host, int(port)), timeout=30)
            sock.sendall(b"\x16\x03\x01\x02")  # the start of a ClientHello
            hello.append(sock)
        for _ in range(8):
            sock = client.wrap_socket(socket.create_connection((host, int(port)), timeout=30),
                                      server_hostname=host)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            heads.append(sock)
        assert requests.get(classroom.url + "/healthz", verify=classroom.ca,
                            timeout=30).status_code == 200
        jpeg = io.BytesIO()
        photo("chelsea").image.save(jpeg, "JPEG")
        answer = requests.post(classroom.url + "/predict", verify=classroom.ca, timeout=60,
                               files={"image": ("cat.jpg", jpeg.getvalue())})
        assert answer.status_code == 200 and answer.json()["predictions"]
        for sock in heads:
            assert sock.recv(100).startswith(b"HTTP/1.1 408 ")
        for sock in hello:
            try:
                assert sock.recv(100) == b""  # closed
            except ConnectionResetError:
                pass
    finally:
        for sock in hello + heads:
            sock.close()


# --------------------------------------------------------------------------- the admin


@pytest.mark.browser
def test_a_fresh_server_lets_its_own_machine_choose_the_admin_password(
        classroom, trusting_browser):
    """No token, a fresh data folder: from the network address the set-password page
    refuses; on the server machine (https://127.0.0.1) the teacher chooses a password,
    logs in with it and sees the kiosk's address as a QR code; the password then works
    from the network too."""
    port = classroom.url.rsplit(":", 1)[1]
    local = f"https://127.0.0.1:{port}"
    refused = requests.get(classroom.url + "/admin/setup", verify=classroom.ca, timeout=30)
    assert refused.status_code == 403
    assert f"{local}/admin/" in refused.text and "ADMIN_TOKEN" in refused.text

    context, page = new_page(trusting_browser)
    try:
        page.goto(local + "/admin")
        assert page.url == local + "/admin/setup"
        page.fill("#password", PASSWORD)
        page.fill("#confirm", PASSWORD)
        assert_wcag_aa(page)
        screenshot(page, "admin-setup")
        page.click("#setup-form button[type=submit]")
        page.wait_for_url("**/admin/login")
        assert "Password saved" in page.locator("body").inner_text()
        assert page.locator("label[for=token]").inner_text() == "Admin password"
        page.fill("#token", PASSWORD)
        page.click("#login-form button[type=submit]")
        page.wait_for_url(local + "/admin/")
        kiosk_url = classroom.url + "/kiosk"  # the network address, not 127.0.0.1
        assert page.locator("#classroom-url").inner_text() == kiosk_url
        assert decode_qr(page.locator("#classroom-qr").screenshot()) == [kiosk_url]
        link = page.locator("#classroom-ca-link")
        assert link.get_attribute("href") == classroom.url + "/classroom/ca.crt"
        screenshot(page, "admin-classroom")
        assert not page.errors, page.errors
    finally:
        context.close()

    # From the network: the setup page is gone, the password logs in.
    session, ca = requests.Session(), classroom.ca
    login = session.get(classroom.url + "/admin/setup", verify=ca, timeout=30)
    assert login.url.startswith(classroom.url + "/admin/login")
    csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', login.text).group(1)
    answer = session.post(classroom.url + "/admin/login", allow_redirects=False, verify=ca,
                          timeout=30,
                          data={"csrf_token": csrf, "token": PASSWORD},
                          headers={"Referer": classroom.url + "/admin/login"})
    assert answer.status_code == 302 and answer.headers["Location"] == "/admin/"
    assert session.get(classroom.url + "/admin/", verify=ca, timeout=30).status_code == 200


# --------------------------------------------------------------------------- no camera


@pytest.mark.browser
def test_over_plain_http_from_another_machine_the_kiosk_and_teach_say_why_and_what_to_do(
        playwright_instance, plain_lan, camera):
    browser = launch(playwright_instance, FAKE_CAMERA_ARGS + [
        f"--use-file-for-fake-video-capture={camera}"])
    try:
        context, page = new_page(browser, "phone")
        page.goto(plain_lan.url + "/kiosk")
        assert page.evaluate("window.isSecureContext") is False
        wait_state(page, "upload")
        reason = page.locator("#upload-reason")
        assert reason.get_attribute("data-camera-problem") == "insecure"
        assert "plain http" in reason.inner_text()
        assert "https address" in reason.inner_text() and "QR code" in reason.inner_text()
        assert page.get_by_role("button", name="Choose a photo").is_visible()
        assert_no_sideways_scroll(page)
        screenshot(page, "kiosk-camera-insecure-phone")
        context.close()

        requests.post(plain_lan.url + "/admin/api/datasets", timeout=30,
                      headers={"Authorization": f"Bearer {TOKEN}"},
                      json={"name": "shapes", "classes": ["cube", "ball"]}).raise_for_status()
        context, page = new_page(browser)
        page.goto(plain_lan.url + "/admin/login?next=/admin/teach/shapes")
        page.fill("#token", TOKEN)
        page.click("#login-form button[type=submit]")
        page.wait_for_url("**/admin/teach/shapes")
        page.wait_for_selector('#teach[data-camera="off"]')
        assert "plain http" in page.locator("#camera-status").inner_text()
        help_text = page.locator("#camera-off").inner_text()
        assert "CLASSROOM=1" in help_text and "Add files" in help_text
        assert page.locator("#camera-off").get_attribute("data-camera-problem") == "insecure"
        assert not page.errors, page.errors
        context.close()
    finally:
        browser.close()


@pytest.mark.browser
@pytest.mark.parametrize("problem, flags, reason, action", [
    ("denied", ["--use-fake-device-for-media-stream"],  # the prompt is never accepted
     "switched off", "Allow the camera"),
    ("missing", ["--use-fake-ui-for-media-stream"],  # allowed, but there is no camera
     "There is no camera here.", "Connect a camera"),
])
def test_a_refused_or_missing_camera_is_named_with_what_to_do(
        playwright_instance, classroom, camera, tmp_path, problem, flags, reason, action):
    home = home_trusting(classroom.ca, tmp_path / "home")
    browser = launch(playwright_instance, flags, env=home_env(home))
    try:
        context, page = new_page(browser)
        page.goto(classroom.url + "/kiosk")
        wait_state(page, "upload")
        shown = page.locator("#upload-reason")
        assert shown.get_attribute("data-camera-problem") == problem
        assert reason in shown.inner_text() and action in shown.inner_text()
        assert "choose a photo" in shown.inner_text()
        assert not page.errors, page.errors
        context.close()
    finally:
        browser.close()
