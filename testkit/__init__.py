"""What the tests and the benchmarks share: real servers on 127.0.0.1 (``server``,
``ops``), real photos and images (``photos``, ``shapes``, ``holds``, ``hostile``),
requests built to cost a server more than their sender (``attacks``), weight files made
with random weights (``weights``, ``model_files``), the admin area through a test client
(``admin``), the model store's folder (``registry``), Teach's datasets and jobs through
the API (``teach``), the Dockerfile's settings (``deploy``), the browser's helpers
(``browser``) and the Kubernetes manifests rendered (``kustomize``).

Plain modules, no pytest fixtures: the fixtures are in tests/conftest.py.  A test module
imports its helpers from here, never from another test module.  Installed with
the project (``make install-dev``: pyproject.toml) and importable from the repository's
root as well (``python -m bench.run``, pytest's ``pythonpath``)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
