# syntax=docker/dockerfile:1
# The offline image classifier as a container: CPU-only torch, gunicorn with the
# project's gunicorn.conf.py, the built-in model's engine made at build time, a non-root user, MODEL_DIR, DATA_DIR (Teach datasets) and the kiosk settings on the
# /data volume.  docs/operating.md has the docker and compose commands.
#
#   docker build -t offline-classifier .        # + ResNet18 weights when the network allows
#   docker build --build-arg DOWNLOAD_WEIGHTS=0 -t offline-classifier .   # offline build:
#                                              # the bundled EfficientNet-Lite0 serves
#   docker run -p 5000:5000 -v classifier-data:/data -e ADMIN_TOKEN=... offline-classifier
#
# Every install and test step is a `make` target that CI runs as well (make test runs
# tests/deploy/test_deploy.py, which checks this file and runs `make smoke`'s command).
FROM python:3.11-slim-bookworm

# torch/torchvision come from here (the CPU wheels, ~5x smaller than PyPI's CUDA build;
# make install: deploy/cpu_torch.py); everything else from PyPI.  The versions are the
# ones requirements.txt pins.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# 1: fetch ResNet18's ImageNet weights at build time when download.pytorch.org answers
#    (make weights, as make run does: a progress bar, a short timeout, and a one-line
#    note instead of a failed build when it does not: the bundled model serves).
# 0: offline build; the bundled EfficientNet-Lite0 model serves (it installs with pip).
ARG DOWNLOAD_WEIGHTS=1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    TORCH_HOME=/opt/torch \
    HOST=0.0.0.0 \
    PORT=5000 \
    MODEL_DIR=/data/models \
    DATA_DIR=/data/datasets \
    KIOSK_SETTINGS_FILE=/data/kiosk.json \
    XDG_CACHE_HOME=/data/cache \
    ENGINE_CACHE_SEED=/opt/engines \
    MALLOC_ARENA_MAX=2

# fonts-noto-cjk: Chinese (Japanese, Korean) class names in the Teach reports' pictures.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make fonts-noto-cjk \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /data && chown app:app /data

WORKDIR /app
COPY requirements.txt Makefile ./
COPY deploy/cpu_torch.py deploy/
RUN make install VENV=/opt/venv TORCH_INDEX_URL="$TORCH_INDEX_URL"
RUN python -c "import sys, torch; sys.exit('a CUDA build of torch got in' if torch.version.cuda else 0)"
COPY . .
# The project's modules as bytecode: PYTHONDONTWRITEBYTECODE would have every worker of
# every start compile them again.
RUN make bytecode VENV=/opt/venv
RUN if [ "$DOWNLOAD_WEIGHTS" = "1" ]; then make weights VENV=/opt/venv; fi
# The built-in model converted for serving once, here: a fresh container copies it from
# /opt/engines (ENGINE_CACHE_SEED) and answers in seconds instead of converting it first.
# (Nothing the build runs may write into /data: the volume belongs to the user app.)
RUN ENGINE_CACHE_DIR=/opt/engines XDG_CACHE_HOME=/tmp/build-cache make engine VENV=/opt/venv
RUN make smoke VENV=/opt/venv

USER app
VOLUME ["/data"]
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "deploy/healthcheck.py"]
CMD ["gunicorn", "app:app"]
