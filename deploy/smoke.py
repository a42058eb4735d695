"""Smoke test of an installation: start the production server exactly as the image
does (``gunicorn app:app`` with ``gunicorn.conf.py``) on 127.0.0.1 with a throw-away
MODEL_DIR, and check what a user relies on: /healthz, /readyz (which model, from where),
a /predict of a drawn picture, an error for a file that is not an image, /metrics, the
security headers and a JSON access log line.  Exit 0 when all is well.

``make smoke`` runs it; the Dockerfile runs ``make smoke`` at build time (so an image
that builds is an image that serves) and tests/deploy/test_deploy.py runs the same command in
CI.  Standard library only (the runtime has no ``requests``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(url: str, data: bytes | None = None, content_type: str | None = None):
    request = urllib.request.Request(url, data=data)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _picture() -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (320, 240), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    draw.ellipse((90, 50, 230, 190), fill=(200, 40, 30), outline=(60, 20, 10), width=6)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"smoke test FAILED: {what}")
    print(f"ok  {what}")


def main() -> int:
    port = _free_port()
    work = Path(tempfile.mkdtemp(prefix="smoke-"))
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port),
           "MODEL_DIR": str(work / "models"), "KIOSK_SETTINGS_FILE": str(work / "kiosk.json"),
           "XDG_CACHE_HOME": str(work / "cache"), "WEB_CONCURRENCY": "1",
           "PROMETHEUS_MULTIPROC_DIR": ""}
    log_path = work / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "app:app"], cwd=ROOT,
                                  env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        status, ready = None, {}
        while time.monotonic() < deadline and server.poll() is None:
            try:
                status, _, body = _request(url + "/readyz")
                if status == 200:
                    ready = json.loads(body)
                    break
            except OSError:
                pass
            time.sleep(0.5)
        check(status == 200, f"/readyz answers 200 (server exit code {server.poll()})")
        model = ready["model"]
        print(f"    model: {model['name']} ({model['arch']}, from {model['source']}, "
              f"version {model['version']}, quantization {model.get('quantization')})")
        status, _, body = _request(url + "/healthz")
        check(status == 200 and json.loads(body)["status"] == "ok", "/healthz")
        status, headers, body = _request(url + "/predict", _picture(), "image/png")
        predictions = json.loads(body).get("predictions", [])
        check(status == 200 and len(predictions) == 3, f"/predict: {predictions[:1]}")
        check("script-src 'self'" in headers.get("Content-Security-Policy", "")
              and headers.get("X-Content-Type-Options") == "nosniff", "security headers")
        status, _, body = _request(url + "/predict", b"%PDF-1.4 not a picture", "image/png")
        check(status == 415 and json.loads(body)["error"]["code"] == "not_an_image",
              "a PDF is refused with 415")
        status, _, body = _request(url + "/metrics")
        text = body.decode()
        check(status == 200 and 'http_requests_total{endpoint="/predict"' in text,
              "/metrics counts the requests")
        lines = [json.loads(line) for line in log_path.read_text("utf-8").splitlines()
                 if line.startswith("{")]
        check(any(line["path"] == "/predict" and line["status"] == 200 for line in lines),
              "JSON access log")
        return 0
    except SystemExit:
        print(log_path.read_text("utf-8")[-4000:], file=sys.stderr)
        raise
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
