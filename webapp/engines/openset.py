"""Making a model's "I'm not sure" criterion (``webapp.serving.openset`` applies it): with
torch, in the training process (``knn``: the bank of training features and the threshold
that keeps 95 % of the validation pictures) or in the builder (``energy``: for an ImageNet
model without training pictures of its own).

The feature is the one the served network outputs (``features``, the last feature map,
pooled): the layer Grad-CAM looks at, found the same way (``features.find_target_layer``),
so the numbers made here are the numbers a worker computes.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from webapp.engines.features import WithFeatures, find_target_layer
from webapp.serving import openset

log = logging.getLogger(__name__)

DEFAULT_K = 1  # bench/openset.py: k = 1 kept the most in-class pictures on small sets
MAX_BANK = 4000  # training features kept (a Teach dataset holds at most 2000 pictures)
REACT_PERCENTILE = 95  # ReAct's clip: this percentile of the photos' activations
EXAMPLES_DIR = Path(__file__).resolve().parent.parent.parent / "static" / "examples"


def extractor(module: nn.Module, input_size: int) -> tuple[str, WithFeatures]:
    """The served network's feature layer and ``module`` answering (logits, features)."""
    name, layer = find_target_layer(module, input_size)
    return name, WithFeatures(module, layer).eval()


@torch.no_grad()
def pooled_features(network: WithFeatures, batches: Iterable) -> np.ndarray:
    """The pooled features of every picture of ``batches`` (tensors, or (tensor, label)
    pairs as a DataLoader gives them), float32 (N, C)."""
    rows = []
    for batch in batches:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        _, features = network(images)
        rows.append(openset.pooled(features.float().cpu().numpy()))
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def fit_knn(train: np.ndarray, val: np.ndarray, *, k: int = DEFAULT_K,
            keep: float = openset.KEEP, layer: str = "") -> dict:
    """The ``knn`` criterion for a model trained on ``train`` (pooled features of its
    training pictures) and validated on ``val``: the bank (normalised, float16 to halve
    the checkpoint's share) and the distance that keeps ``keep`` of the validation
    pictures.  What goes into the checkpoint (``webapp.checkpoints.v1.openset_entry``)."""
    bank = openset.normalised(train)
    if len(bank) > MAX_BANK:
        bank = bank[np.linspace(0, len(bank) - 1, MAX_BANK).round().astype(int)]
    distances = openset.knn_distance(bank, val, k)
    threshold = openset.keeping(distances, keep, low_is_known=True, conformal=True)
    return {"method": "knn", "k": int(k), "threshold": round(threshold, 6),
            "keep": keep, "validation_images": int(len(val)),
            "kept": round(float(np.mean(distances <= threshold)), 4),
            "layer": layer, "bank": bank.astype(np.float16)}


def example_photos() -> list:
    """The real photos that ship with the project and show ImageNet things: the upload
    page's examples (a cat, an espresso, a rocket) and matplotlib's Grace Hopper."""
    from PIL import Image

    photos = []
    for path in sorted(EXAMPLES_DIR.glob("*.jpg")):
        with Image.open(path) as img:
            photos.append(img.convert("RGB"))
    try:
        # Found, not imported: importing matplotlib writes a config folder, and a builder
        # on a read-only root (the Kubernetes pod) has none to write.
        spec = importlib.util.find_spec("matplotlib")
        hopper = Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        with Image.open(hopper) as img:
            photos.append(img.convert("RGB"))
    except (AttributeError, TypeError, OSError) as exc:  # matplotlib is a requirement
        log.warning("Grace Hopper's photo is missing (%s): the criterion uses fewer photos",
                    exc)
    return photos


@torch.no_grad()
def energy_criterion(module: nn.Module, head: tuple[np.ndarray, np.ndarray],
                     input_size: int, mean, std, *, keep: float = openset.KEEP) -> dict | None:
    """The ``energy`` criterion of an ImageNet model with a linear head (its weight and
    bias): ReAct's clip at the ``REACT_PERCENTILE`` percentile of the pooled activations
    on views of ``example_photos()``, and the clipped energy that keeps ``keep`` of those
    views.  None when there is no photo to measure on."""
    from webapp.checkpoints.preprocess import CROP_RATIO, preprocess_array
    from webapp.engines.calibration import views

    photos = example_photos()
    if not photos:
        return None
    resize = round(input_size / CROP_RATIO)
    arrays = [preprocess_array(view, resize, input_size, mean, std)
              for photo in photos for view in views(photo, input_size)]
    layer, network = extractor(module, input_size)
    batch = torch.from_numpy(np.stack(arrays))
    features = pooled_features(network, [batch[i:i + 16] for i in range(0, len(batch), 16)])
    clip = float(np.percentile(features, REACT_PERCENTILE))
    scores = openset.energy(features, head[0], head[1], clip)
    threshold = openset.keeping(scores, keep, low_is_known=False)
    return {"method": "energy", "clip": round(clip, 6), "threshold": round(threshold, 6),
            "keep": keep, "photos": len(photos), "views": len(arrays), "layer": layer}
