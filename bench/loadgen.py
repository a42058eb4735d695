"""Load generator, run as its own process: N requests to URL with C concurrent clients,
each a fresh HTTP connection posting one image (multipart field ``image``).  Prints JSON:
latencies (ms), errors, elapsed seconds.

    python -m bench.loadgen URL IMAGE --clients 4 --requests 200 [--max-seconds 120]"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse


def multipart(data: bytes, filename: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
        f"filename=\"{filename}\"\r\nContent-Type: image/jpeg\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("image")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=300)
    args = parser.parse_args()
    url = urlparse(args.url)
    body, content_type = multipart(Path(args.image).read_bytes(), Path(args.image).name)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    remaining = [args.requests]
    deadline = time.monotonic() + args.max_seconds

    def client() -> None:
        while True:
            with lock:
                if remaining[0] <= 0 or time.monotonic() > deadline:
                    return
                remaining[0] -= 1
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
                conn.request("POST", url.path or "/predict", body,
                             {"Content-Type": content_type, "Connection": "close"})
                response = conn.getresponse()
                payload = response.read()
                conn.close()
                ok = response.status == 200 and b"predictions" in payload
            except OSError as exc:
                ok, payload = False, repr(exc).encode()
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors.append(payload[:200].decode(errors="replace"))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"latencies_ms": latencies, "errors": errors,
                      "elapsed_s": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
