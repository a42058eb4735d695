"""``timings_ms``: where one request's time went, from its first byte to its answer
serialised, as contiguous stages that add up to ``total`` (docs/api.md lists them).

Under gunicorn the worker reads a request in its event loop before a thread gets it
(``webapp/http/worker.py``) and says when its first byte came and when it was all in
(``environ[RECEIVED]``); the stopwatch starts at that first byte.  Elsewhere (the
development server, the test client) it starts when the app gets the request, and the
body arrives while it is parsed.
"""

from __future__ import annotations

import json

from flask import Flask, current_app, g, request

from webapp.serving.stopwatch import Stopwatch

# ``environ`` key, for a request the worker (webapp/http/worker.py) read before a thread
# got it: (its first byte seen, handed over; ``time.perf_counter()`` seconds) and whether
# its body is all in memory (``receive`` here; a body all in needs no read timeout in
# ``webapp.http.capacity``).  Defined here, not in the worker, so the app does not import
# gunicorn's worker to read it.
RECEIVED = "webapp.received"

# The stages, in the order a request goes through them (docs/api.md).
STAGES = ("receive", "queue", "parse", "decode", "preprocess", "engine_wait", "inference",
          "postprocess", "serialize")


def init_app(app: Flask) -> None:
    # First of the app's hooks: what runs before a view counts as its queue.
    app.before_request_funcs.setdefault(None, []).insert(0, _start)


def _start() -> None:
    received = request.environ.get(RECEIVED)
    if received is None:
        g.stopwatch = Stopwatch()
        g.stopwatch.ms["receive"] = 0.0
    else:
        g.stopwatch = Stopwatch(received[0])
        g.stopwatch.lap("receive", received[1])


def stopwatch() -> Stopwatch:
    """This request's stopwatch (one is started if the hook did not run)."""
    if "stopwatch" not in g:
        _start()
    return g.stopwatch


def json_answer(body: dict, watch: Stopwatch):
    """``body`` as a JSON response, its ``timings_ms`` the stopwatch's stages up to the
    end of serialising it (``serialize``) and ``total``.  The body is encoded once; the
    timings, known only then, are appended to it."""
    body = {key: value for key, value in body.items() if key != "timings_ms"}
    text = current_app.json.dumps(body, separators=(",", ":"))
    watch.lap("serialize")
    order = {stage: n for n, stage in enumerate(STAGES)}
    timings = {stage: round(watch.ms[stage], 2)
               for stage in sorted(watch.ms, key=lambda s: order.get(s, len(order)))}
    timings["total"] = round(watch.elapsed_ms(), 2)  # to the end of "serialize"
    text = f'{text[:-1]}{"," if body else ""}"timings_ms":{json.dumps(timings)}}}'
    return current_app.response_class(text + "\n", mimetype="application/json")
