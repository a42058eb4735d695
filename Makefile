# Two commands on a fresh machine (Python 3.11 with venv):
#   make run    set up .venv, fetch ResNet18's weights if the network allows, and start
#               the server (gunicorn) on http://127.0.0.1:5000
#   make classroom  the same on the school network, over HTTPS (phones' cameras)
#   make test   set up .venv with the test tools and run lint + the test suite
#   make test-fast  the inner loop: no server, no browser, no slow conversion (docs/development.md)
# (lint and tests cover the browser code too: ESLint and Node's test runner, from npm ci.)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run dev test lint install install-dev download weights clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch and torchvision from PyTorch's CPU-only index when it answers (deploy/cpu_torch.py
# says which it did in one line): PyPI's builds bring ~5 GB of CUDA libraries no classroom
# PC uses.  TORCH_INDEX_URL= installs them from the default index.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/python deploy/cpu_torch.py $(TORCH_INDEX_URL)
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python deploy/cpu_torch.py $(TORCH_INDEX_URL)
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $(VENV)/.installed $@

# The project itself, editable (pyproject.toml): webapp, model_loader and the tests' and
# benchmarks' helpers (testkit) import from any folder as this checkout's code.  Offline:
# the build backend is requirements-dev.txt's setuptools, already installed.
$(VENV)/.installed-project: pyproject.toml | $(VENV)/.installed-dev
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev $(VENV)/.installed-project

# ResNet18's weights (the model on the design card), tried once per .venv: with a progress
# bar when the network allows, giving up after 15 s without an answer, and on quietly with
# the bundled EfficientNet-Lite0 when offline.  `make download` tries again (and fails
# loudly); the server's own ALLOW_DOWNLOAD does it at startup instead.
$(VENV)/.weights: | $(VENV)/.installed
	$(BIN)/python -m model_loader download --optional --timeout 15
	touch $@

weights: $(VENV)/.weights

run: install weights
	$(BIN)/gunicorn app:app

# Classroom network mode (docs/kiosk.md): listen on the network, HTTPS with a certificate
# of the server's own local CA, so students' phones get their cameras.
.PHONY: classroom
classroom: install weights
	CLASSROOM=1 $(BIN)/gunicorn app:app

dev: install
	$(BIN)/python app.py --debug

download: install
	$(BIN)/python -m model_loader download

# The built-in model converted for serving ahead of time, into ENGINE_CACHE_DIR
# (deploy/engine.py): the Dockerfile runs it into /opt/engines, which a fresh container
# copies (ENGINE_CACHE_SEED) instead of converting the model on its first start.
.PHONY: engine
engine: install
	$(BIN)/python deploy/engine.py

# The project's own modules compiled to bytecode ahead of time.  The image sets
# PYTHONDONTWRITEBYTECODE (nothing is written at run time), so without this every worker
# of every start compiles them again (docs/speed.md: where a warm start's time goes).
.PHONY: bytecode
bytecode: install
	$(BIN)/python -m compileall -q app.py model_loader.py webapp

# Start the production server on 127.0.0.1 and check it (deploy/smoke.py).  The
# Dockerfile runs it at build time; tests/deploy/test_deploy.py runs the same command in CI.
.PHONY: smoke
smoke: install
	$(BIN)/python deploy/smoke.py

# The browser code's tools (ESLint; package.json, package-lock.json), in node_modules/.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

.PHONY: node-deps
node-deps: node_modules/.installed

lint: install-dev node-deps
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	npx --no-install eslint static/js tests/js eslint.config.js

# The browser code's pure logic (static/js/ modules without a page), in Node.
.PHONY: test-js
test-js:
	node --test tests/js/

# The browser tests drive Debian's Chromium (trusting the classroom CA through an NSS database
# made with certutil, libnss3-tools) and tests/deploy/test_deploy.py runs nginx in front of
# two replicas; all fail (never skip) without them, so install them when they are missing
# (apt-get, as root or through sudo) or say what to install.  fonts-noto-cjk: Chinese on
# the pages (and their screenshots) and in the Teach reports' pictures.  nodejs, npm: the
# browser code's lint and tests.
SYSTEM_PACKAGES := chromium chromium-driver fonts-dejavu-core fonts-noto-cjk nginx-light \
  libnss3-tools nodejs npm
.PHONY: system-deps
system-deps:
	@if command -v chromium >/dev/null && command -v certutil >/dev/null \
	    && command -v node >/dev/null && command -v npm >/dev/null \
	    && { command -v nginx >/dev/null || test -x /usr/sbin/nginx; } \
	    && fc-list :lang=zh family | grep -q .; then \
	  exit 0; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
	  echo "installing $(SYSTEM_PACKAGES) for the browser, nginx and JavaScript tests"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES); \
	else \
	  echo "make test needs Chromium, nginx, a Chinese font and Node.js: install them (Debian: $(SYSTEM_PACKAGES))," \
	       "or run the rest with: $(BIN)/python -m pytest -m 'not browser'" >&2; exit 1; \
	fi

# Two test processes (pytest-xdist, whole modules each): on 2 cores one process keeps about
# one core busy (servers starting, children importing torch, waiting on sockets), two
# finish the suite about 1.5x sooner (docs/development.md).  TEST_PROCESSES=0: one process.
TEST_PROCESSES ?= 2

test: system-deps lint test-js
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile

# The tests that start no server, no browser and convert or train no model in seconds
# (markers: pyproject.toml, tests/conftest.py): the loop while working.  `make test` (what
# CI runs) runs these and the slow, system and browser tiers.
.PHONY: test-fast
test-fast: install-dev test-js
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile \
	  -m "not system and not browser and not slow" $(ARGS)

# The interface's translations (gettext catalogs in translations/, docs/translating.md):
# extract every message of the code, templates and scripts into translations/messages.pot,
# merge it into each language's messages.po, compile the .mo files the server reads (they
# are kept in the repository, so a checkout serves every language without a build step).
# A new language: make i18n-init LOCALE=fr, translate translations/fr/LC_MESSAGES/messages.po.
BABEL_KEYWORDS := -k _l -k lazy_gettext -k Message
.PHONY: i18n-extract i18n-update i18n-compile i18n-init
i18n-extract: install-dev
	$(BIN)/pybabel extract -F babel.cfg $(BABEL_KEYWORDS) --add-location=file --sort-by-file \
	  --project "Offline Image Classifier" -o translations/messages.pot .

i18n-update: i18n-extract
	$(BIN)/pybabel update -i translations/messages.pot -d translations

i18n-compile: install-dev
	$(BIN)/pybabel compile -d translations --statistics

i18n-init: i18n-extract
	$(BIN)/pybabel init -i translations/messages.pot -d translations -l $(LOCALE)

.PHONY: bench
bench: install-dev  # the speed benchmark (docs/speed.md); ARGS=--quick for a short check
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
