"""``QUANTIZE=auto`` / ``ENGINE=auto`` measured in the background: a worker serves a model
new to this machine at once (fp32, the network the build left), and a child process
(``python -m webapp.engines.trials``) times the candidates (``precision.decide``) and
writes the decision into the engine cache; each worker's model holder then swaps the
chosen engine in, as it swaps models, without a failed request.

The child needs no torch: it works on the ONNX networks in the engine cache (and
calibrates int8 with ONNX Runtime's quantizer).  Once per model per machine: the child
runs under the decision's lock, and a worker that finds it held waits for the file; the
decision is keyed by the CPU (``decision_name``), so a cache moved to another machine is
measured again there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time

from webapp.engines import precision
from webapp.engines.artefacts import ArtefactCache
from webapp.engines.child import PROJECT_ROOT, _die_with_parent, _last_json
from webapp.engines.precision import reason
from webapp.engines.settings import EngineSettings

log = logging.getLogger(__name__)

TIMEOUT = 900  # seconds the trials of one model may take (int8 calibration included)
NICE = 5  # requests first: the trials' child runs at a lower priority

_started: set[str] = set()  # decisions this process has asked for
_started_lock = threading.Lock()


def start(card, settings, state: dict) -> None:
    """Make sure the decision for ``card`` is being measured (once per process and
    decision; a thread waits for the child).  ``state`` is the dict ``/readyz`` shows
    meanwhile: it says ``failed`` and why if the trials fail."""
    name = precision.decision_name(card.key, settings)
    with _started_lock:
        if name in _started:
            return
        _started.add(name)
    threading.Thread(target=_measure, args=(card, settings, name, state), daemon=True,
                     name="engine-trials").start()


def _measure(card, settings, name: str, state: dict) -> None:
    cache = settings.cache
    try:
        with cache.lock(name):  # another worker measuring: wait for its decision
            if precision.decision(card.key, settings) is not None:
                return
            started = time.perf_counter()
            made = run_child(card.key, settings)
        log.info("engine and precision for %s: %s (trials took %.1f s in a child process)",
                 card.name, made["why"], time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - the fp32 network goes on serving
        state.update(state="failed", why=f"the trials failed: {reason(exc)}; serving "
                     f"{state.get('serving', 'fp32')}")
        log.warning("engine and precision for %s: %s", card.name, state["why"])
        with _started_lock:
            _started.discard(name)  # the next load of the model tries again


def run_child(key: str, settings) -> dict:
    """``python -m webapp.engines.trials`` for the model of ``key``: its decision."""
    import dataclasses

    argv = [sys.executable, "-m", "webapp.engines.trials", "--key", key, "--cache",
            str(settings.cache.root), "--settings", json.dumps(dataclasses.asdict(settings))]

    def prepare():
        _die_with_parent()
        os.nice(NICE)

    done = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, encoding="utf-8",
                          errors="replace", timeout=TIMEOUT, preexec_fn=prepare)
    answer = _last_json(done.stdout)
    if done.returncode == 0 and answer and "decision" in answer:
        return answer["decision"]
    tail = (answer or {}).get("error") or ((done.stderr or "").strip().splitlines()[-1:]
                                           or [f"exit status {done.returncode}"])[0]
    raise RuntimeError(tail[:300])


def main(argv: list[str] | None = None) -> int:
    """The child: measure the candidates for one model card and print the decision."""
    parser = argparse.ArgumentParser(prog="python -m webapp.engines.trials")
    parser.add_argument("--key", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--settings", required=True, help="EngineSettings as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    cache = ArtefactCache(args.cache)
    card = cache.read_card(args.key)
    if card is None:
        print(json.dumps({"error": f"no model card {args.key} in the engine cache"}))
        return 2
    decision = precision.decide(card, cache, EngineSettings(**json.loads(args.settings)))
    print(json.dumps({"decision": decision}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
