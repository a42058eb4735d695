"""Entry point.  ``gunicorn app:app`` (production, settings in gunicorn.conf.py) or
``python app.py --port 5000`` (development server)."""

from __future__ import annotations

import argparse
import sys

from model_loader import ModelLoadError
from webapp import create_app, current

app = create_app()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the development server.")
    parser.add_argument("--host", default=app.config["HOST"])
    parser.add_argument("--port", type=int, default=app.config["PORT"])
    parser.add_argument("--debug", action="store_true", help="Flask debug mode (reloader)")
    args = parser.parse_args(argv)
    try:
        with app.app_context():
            current.holder().warm_up()
    except ModelLoadError as exc:
        print(f"error: the model could not be loaded: {exc}", file=sys.stderr)
        return 1
    tls = None
    if app.config["CLASSROOM"]:  # HTTPS with the local CA's certificate (webapp/classroom.py)
        from webapp import classroom

        files, notes = classroom.prepare({**app.config, "HOST": args.host, "PORT": args.port})
        for level, message in notes:
            classroom.log.log(level, message)
        tls = (str(files.cert), str(files.key))
    app.run(host=args.host, port=args.port, debug=args.debug, threaded=True, ssl_context=tls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
