"""Making a model's "I'm not sure" criterion (``webapp.scores`` applies it): with
torch, in the training process (``knn``: the bank of training features and the threshold
that keeps 95 % of new pictures like its validation pictures) or in the builder
(``max_logit``: for an ImageNet model without training pictures of its own).

The feature is the one the served network outputs (``features``, the last feature map,
pooled): the layer Grad-CAM looks at, found the same way (``features.find_target_layer``),
so the numbers made here are the numbers a worker computes.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from webapp import scores
from webapp.checkpoints.preprocess import CROP_RATIO, preprocess_array
from webapp.engines.features import WithFeatures, find_target_layer

log = logging.getLogger(__name__)

DEFAULT_K = 1  # bench/openset.py: k = 1 kept the most in-class pictures on small sets
EXAMPLES_DIR = Path(__file__).resolve().parent.parent.parent / "static" / "examples"
EXAMPLE_VIEWS = 22  # per photo (``example_views``)
MAX_BANK = 4000  # training features kept (a Teach dataset holds at most 2000 pictures)
# The built-in model's criterion (docs/openset.md): ReAct's clip at its paper's default,
# the 90th percentile of the photos' activations, and the max-logit score.  Chosen by
# bench/openset_choice.py on outliers of its own (charts, diagrams, sketches), not on
# the benchmark's.
REACT_PERCENTILE = 90
SCORE = "max_logit"


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
        rows.append(scores.pooled(features.float().cpu().numpy()))
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def fit_knn(train: np.ndarray, val: np.ndarray, *, bursts: Sequence[int] | None = None,
            train_views: np.ndarray | None = None, view_bursts: Sequence[int] | None = None,
            val_views: np.ndarray | None = None, k: int = DEFAULT_K,
            keep: float = scores.KEEP, layer: str = "") -> dict:
    """The ``knn`` criterion for a model trained on ``train`` (pooled features of its
    training pictures) and validated on ``val``: the bank (normalised, float16 to halve
    the checkpoint's share) and the distance that keeps ``keep`` of new pictures, set on
    every distance the training run can measure the way a new picture's is measured --
    from a picture to a bank that holds nothing of its burst:

    * the validation pictures' (from bursts the model did not train on), and those of
      ``val_views``: new views of them (``training.transforms.new_view``: closer,
      farther, in a corner, turned, another light), as a teacher shows a taught object
      again later;
    * with ``bursts`` (per training picture, the burst it belongs to; -1: none usable),
      each training picture's distance to the bank without its own burst: leave one
      burst out, as cross-conformal prediction does (Vovk, 2015; Barber et al., "Predictive
      inference with the jackknife+", 2021).  A small Teach dataset has a validation burst
      or two per class, so its threshold would otherwise rest on a handful of near-copies.

    ``train_views`` (new views of training pictures, of the bursts ``view_bursts``) join
    the bank: a new view of a taught object then finds a taught picture seen the same
    way (nearer, farther, turned), while unrelated pictures stay far from all of them;
    they are measured against the other bursts too.

    What goes into the checkpoint (``webapp.checkpoints.v1.openset_entry``)."""
    features, numbers = train, None if bursts is None else np.asarray(bursts)
    if train_views is not None and len(train_views):
        features = np.concatenate([train, train_views])
        if numbers is not None:
            numbers = np.concatenate([numbers, np.asarray(view_bursts)])
    normal = scores.normalised(features)
    rows = np.arange(len(normal))
    if len(rows) > MAX_BANK:
        rows = np.linspace(0, len(rows) - 1, MAX_BANK).round().astype(int)
    bank = normal[rows]
    held = val if val_views is None or not len(val_views) else np.concatenate([val, val_views])
    distances = scores.knn_distance(bank, held, k)
    crossed = np.zeros(0)
    if numbers is not None:
        crossed = other_burst_distances(normal, numbers, rows, k)
    calibration = np.concatenate([distances, crossed])
    threshold = scores.keeping(calibration, keep, low_is_known=True, conformal=True)
    return {"method": "knn", "k": int(k), "threshold": round(threshold, 6),
            "keep": keep, "validation_images": int(len(val)),
            "validation_views": 0 if val_views is None else int(len(val_views)),
            "training_views": 0 if train_views is None else int(len(train_views)),
            "other_burst_images": int(len(crossed)),
            "kept": round(float(np.mean(calibration <= threshold)), 4),
            "layer": layer, "bank": bank.astype(np.float16)}


def other_burst_distances(normal: np.ndarray, bursts: np.ndarray, rows: np.ndarray,
                          k: int, chunk: int = 512) -> np.ndarray:
    """For each training picture in a burst (``bursts`` >= 0), the distance from its
    normalised feature to its ``k``-th nearest bank row (``normal[rows]``) of another
    burst: what a new burst's picture would measure."""
    k = max(1, min(int(k), len(rows)))
    mine = np.flatnonzero(bursts >= 0)
    bank, bank_bursts = normal[rows], bursts[rows]
    out = []
    for start in range(0, len(mine), chunk):
        part = mine[start:start + chunk]
        similarity = normal[part] @ bank.T
        similarity[bank_bursts[None, :] == bursts[part][:, None]] = -np.inf
        distances = scores.kth_distance(similarity, k)
        out.append(distances[np.isfinite(distances)])  # fewer than k others: not measured
    return np.concatenate(out) if out else np.zeros(0)


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


def example_views(photo) -> list:
    """``EXAMPLE_VIEWS`` (22) views of one photo, as a camera or an upload might frame
    it: whole, and the centre and each corner at 80 % and at 60 % of its size, each also
    mirrored."""
    from PIL import ImageOps

    out = []
    for img in (photo, ImageOps.mirror(photo)):
        width, height = img.size
        out.append(img)
        for frac in (0.8, 0.6):
            w, h = int(width * frac), int(height * frac)
            for fx, fy in ((0.5, 0.5), (0, 0), (1, 0), (0, 1), (1, 1)):
                x, y = int((width - w) * fx), int((height - h) * fy)
                out.append(img.crop((x, y, x + w, y + h)))
    return out


def example_batch(input_size: int, resize: int, mean, std) -> np.ndarray | None:
    """``example_views`` of every ``example_photos()``, preprocessed as served: the
    pictures a score criterion's clip and threshold are measured on (None: no photo)."""
    arrays = [preprocess_array(view, resize, input_size, mean, std)
              for photo in example_photos() for view in example_views(photo)]
    return np.stack(arrays) if arrays else None


@torch.no_grad()
def imagenet_criterion(module: nn.Module, head: tuple[np.ndarray, np.ndarray],
                       input_size: int, mean, std, *, keep: float = scores.KEEP,
                       score: str = SCORE, percentile: float = REACT_PERCENTILE
                       ) -> dict | None:
    """The criterion of an ImageNet model with a linear head (its weight and bias):
    ReAct's clip at the ``percentile`` percentile of the pooled activations on
    ``example_batch()``, and the ``score`` (``max_logit``) that keeps ``keep`` of new
    pictures like those views (the split-conformal threshold, as for a Teach model).
    None when there is no photo to measure on."""
    batch = example_batch(input_size, round(input_size / CROP_RATIO), mean, std)
    if batch is None:
        return None
    layer, network = extractor(module, input_size)
    batch = torch.from_numpy(batch)
    features = pooled_features(network, [batch[i:i + 16] for i in range(0, len(batch), 16)])
    clip = float(np.percentile(features, percentile))
    rated = scores.SCORES[score](features, head[0], head[1], clip)
    threshold = scores.keeping(rated, keep, low_is_known=False, conformal=True)
    return {"method": score, "clip": round(clip, 6), "clip_percentile": percentile,
            "threshold": round(threshold, 6), "keep": keep,
            "photos": len(batch) // EXAMPLE_VIEWS, "views": len(batch), "layer": layer}
