"""Docker HEALTHCHECK (see Dockerfile): exit 0 when this container's server answers
``GET /healthz`` with 200 within 4 seconds, 1 otherwise.  Standard library only, so it
starts fast and needs nothing from the app."""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '5000')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except Exception as exc:  # refused, timed out, 5xx: unhealthy, say why
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
