"""Real photographs with known ImageNet classes that ship inside Python packages
(scikit-image, scikit-learn, matplotlib), and ``encode``: an image as the bytes of a file."""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}


@dataclass(frozen=True)
class Photo:
    name: str
    image: Image.Image
    top1: frozenset  # the top-1 answer must be one of these ...
    top3: frozenset  # ... or, where the photo is ambiguous, one of these in the top 3


def _skimage(name: str) -> Image.Image:
    from skimage import data

    array = getattr(data, name)()
    if name == "stereo_motorcycle":
        array = array[0]
    return Image.fromarray(np.asarray(array)).convert("RGB")


@functools.cache
def real_photos() -> tuple[Photo, ...]:
    import matplotlib.cbook
    from sklearn.datasets import load_sample_image

    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    china = Image.fromarray(load_sample_image("china.jpg"))
    return (
        Photo("chelsea", _skimage("chelsea"), frozenset(CAT_CLASSES), frozenset(CAT_CLASSES)),
        Photo("coffee", _skimage("coffee"), frozenset({"espresso"}), frozenset({"espresso"})),
        Photo("camera", _skimage("camera"), frozenset({"tripod"}), frozenset({"tripod"})),
        Photo("rocket", _skimage("rocket"), frozenset({"missile", "projectile",
              "space shuttle"}), frozenset({"missile", "projectile"})),
        Photo("motorcycle", _skimage("stereo_motorcycle"),
              frozenset({"moped", "motor scooter", "crash helmet"}),
              frozenset({"moped", "motor scooter"})),
        Photo("china", china, frozenset({"palace", "bell cote", "monastery", "pagoda"}),
              frozenset({"palace"})),
        Photo("grace_hopper", hopper, frozenset({"military uniform", "academic gown",
              "mortarboard", "suit", "Windsor tie"}),
              frozenset({"military uniform", "academic gown", "mortarboard"})),
    )


def photo(name: str) -> Photo:
    return next(p for p in real_photos() if p.name == name)


def chinese_names(labels) -> set[str]:
    """What the pages call these ImageNet classes (English labels) in Chinese: the names
    that ship in translations/imagenet/, looked up by class index."""
    from webapp.checkpoints.labels import imagenet_labels
    from webapp.stores.label_names import shipped_names

    order, names = imagenet_labels(), shipped_names("zh")
    return {names[order.index(label)] for label in labels if label in order}
