"""Scores from a network's outputs: the probabilities the API reports (``softmax``) and
"I'm not sure what this is", telling a picture unlike anything a model was taught from one
it knows.  NumPy only (workers import this; training and the builder use the same maths).

A classifier of N classes always picks one of them: taught "cat" and "mug", it calls an
astronaut a mug.  Each answer therefore also says ``unknown``, decided from the same pass
that answers (the penultimate-layer feature: the network's ``features`` output, pooled),
by one of two established out-of-distribution criteria, chosen when the model is made and
kept in its model card:

* ``knn`` -- deep k-nearest neighbours (Sun et al., "Out-of-distribution detection with
  deep nearest neighbors", ICML 2022), for models trained here: the picture's feature,
  normalised to length 1, is compared with the normalised features of the training
  pictures (the *bank*, kept in the checkpoint); if its ``k``-th nearest training feature
  is farther than ``threshold``, the picture is unknown.  The threshold is set when the
  model is trained, to keep ``KEEP`` (95 %) of new pictures like the validation pictures
  (of the taught classes, from bursts the model did not train on) and the training
  pictures measured against the other bursts.
* ``max_logit`` -- for the built-in ImageNet model, which has no training pictures here:
  the largest logit (Hendrycks et al., "Scaling out-of-distribution detection for
  real-world settings", ICML 2022) recomputed from the feature with its largest
  activations clipped (ReAct, Sun et al., NeurIPS 2021); below ``threshold`` is unknown.
  The clip and the threshold are set when the model is built, from views of the real
  photos that ship with the project (``webapp/engines/openset.py``).  ``energy`` (Liu et
  al., NeurIPS 2020: the log of the sum of the exponentiated logits) is the same with
  another score, which it replaced (``bench/openset_choice.py`` compares them).

A model without a criterion (an uploaded file, an older checkpoint, a network with no
feature output) answers as before, never unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KEEP = 0.95  # share of in-class validation pictures a threshold keeps (not unknown)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (the scores the API reports)."""
    logits = np.asarray(logits, dtype=np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


METHODS = ("knn", "max_logit", "energy")


def pooled(features: np.ndarray) -> np.ndarray:
    """The penultimate-layer feature of each picture: the last feature map (N, C, H, W),
    averaged over its grid (what global average pooling hands to the head), float32."""
    features = np.asarray(features, dtype=np.float32)
    return features.mean(axis=(2, 3)) if features.ndim == 4 else features


def normalised(vectors: np.ndarray) -> np.ndarray:
    """Each row divided by its length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    length = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(length, 1e-12)


def knn_distance(bank: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Distance from each normalised query to its ``k``-th nearest row of the normalised
    ``bank`` (Euclidean: between 0, the same direction, and 2, opposite)."""
    k = max(1, min(int(k), len(bank)))
    return kth_distance(normalised(queries) @ np.asarray(bank, dtype=np.float32).T, k)


def kth_distance(similarity: np.ndarray, k: int) -> np.ndarray:
    """Per row of cosine ``similarity`` (queries × bank), the Euclidean distance between
    unit vectors to its ``k``-th most similar bank row (-inf similarities never count;
    a row with fewer than ``k`` others gets inf)."""
    kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
    return np.where(np.isfinite(kth), np.sqrt(np.clip(2.0 - 2.0 * kth, 0.0, 4.0)), np.inf)


def _clipped_logits(pooled_features: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                    clip: float) -> np.ndarray:
    """ReAct: the logits of the feature with every activation above ``clip`` cut to it."""
    h = np.minimum(np.asarray(pooled_features, dtype=np.float64), clip)
    return h @ np.asarray(weight, dtype=np.float64).T + np.asarray(bias, dtype=np.float64)


def max_logit(pooled_features: np.ndarray, weight: np.ndarray, bias: np.ndarray,
              clip: float) -> np.ndarray:
    """ReAct max logit: ``max(W · min(h, clip) + b)`` per picture (higher = more like
    what the model was trained on)."""
    return _clipped_logits(pooled_features, weight, bias, clip).max(axis=1)


def energy(pooled_features: np.ndarray, weight: np.ndarray, bias: np.ndarray,
           clip: float) -> np.ndarray:
    """ReAct energy: ``logsumexp(W · min(h, clip) + b)`` per picture (higher = more like
    what the model was trained on)."""
    logits = _clipped_logits(pooled_features, weight, bias, clip)
    top = logits.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]


SCORES = {"max_logit": max_logit, "energy": energy}  # scores of a linear head's logits


def keeping(values: np.ndarray, keep: float = KEEP, *, low_is_known: bool,
            conformal: bool = False) -> float:
    """The threshold that keeps ``keep`` of ``values`` on the known side: the ``keep``
    quantile for distances (``low_is_known``), the ``1 - keep`` quantile for scores.

    ``conformal``: split-conformal calibration (Angelopoulos & Bates, "A gentle
    introduction to conformal prediction", 2021): the ``ceil((n + 1) keep) / n`` order
    statistic of the ``n`` values, so that a *new* picture exchangeable with them is kept
    with probability at least ``keep``.  The plain quantile keeps ``keep`` of these values
    only, and fewer of new ones when ``n`` is small (a Teach model has tens of validation
    pictures).  Below ``1 / (1 - keep) - 1`` values (19 for 95 %) the guarantee would need
    an infinite threshold (never "unknown"); the largest value is used instead, keeping
    ``n / (n + 1)`` of new pictures, and the report says how many pictures it had."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    if conformal and len(values):
        rank = min(len(values), math.ceil((len(values) + 1) * keep))  # 1-based
        return float(values[rank - 1] if low_is_known else values[len(values) - rank])
    return float(np.quantile(values, keep if low_is_known else 1.0 - keep))


@dataclass
class OpenSet:
    """A model's criterion, ready to apply to the engine's output."""

    method: str
    threshold: float
    k: int = 1
    bank: np.ndarray | None = None  # knn: normalised training features, (M, C) float32
    weight: np.ndarray | None = None  # max_logit, energy: the linear head
    bias: np.ndarray | None = None
    clip: float = np.inf
    info: dict | None = None  # what the card says about it (shown in /readyz)

    def familiarity(self, features: np.ndarray) -> np.ndarray:
        """Per picture, how far from (knn: distance) or how like (a score) what the
        model knows, from the engine's feature map."""
        h = pooled(features)
        if self.method == "knn":
            return knn_distance(self.bank, h, self.k)
        return SCORES[self.method](h, self.weight, self.bias, self.clip)

    def unknown(self, features: np.ndarray) -> np.ndarray:
        """Per picture: True when it is unlike what the model knows."""
        values = self.familiarity(features)
        if self.method == "knn":
            return values > self.threshold
        return values < self.threshold

    def describe(self) -> dict:
        return dict(self.info or {"method": self.method, "threshold": self.threshold})


def load(card, cache) -> OpenSet | None:
    """The criterion of ``card`` (``card.openset``, its bank or head from the engine
    cache), or None when the model has none."""
    spec = getattr(card, "openset", None)
    if not spec or spec.get("method") not in METHODS:
        return None
    info = {key: value for key, value in spec.items() if key != "file"}
    if spec["method"] == "knn":
        bank = np.load(cache.path(spec["file"])).astype(np.float32)
        return OpenSet("knn", float(spec["threshold"]), k=int(spec["k"]),
                       bank=normalised(bank), info=info)
    if not card.cam:
        return None
    with np.load(cache.path(card.cam["head"])) as head:
        # float64 once here, not a 2 MB conversion in every answer.
        weight, bias = head["weight"].astype(np.float64), head["bias"].astype(np.float64)
    return OpenSet(spec["method"], float(spec["threshold"]), weight=weight, bias=bias,
                   clip=float(spec["clip"]), info=info)
