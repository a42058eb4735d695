"""What the network sees: the training augmentation preset and, for evaluation, the
server's own preprocessing (one function shared by serving, training and calibration)."""

from __future__ import annotations

import torch
from torchvision import transforms

from webapp.checkpoints.preprocess import CROP_RATIO, preprocess_array
from webapp.training.options import FinetuneOptions


class ServingPreprocess:
    """The server's own preprocessing (``Classifier.preprocess``: resize the shorter side
    to input_size / 0.875, centre-crop, normalise) for evaluation, so a model is validated
    on exactly what it will see when served.  Picklable, for DataLoader workers."""

    def __init__(self, input_size: int, mean, std):
        self.input_size, self.resize_size = input_size, round(input_size / CROP_RATIO)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, img):
        return torch.from_numpy(preprocess_array(
            img, self.resize_size, self.input_size, self.mean, self.std))


def train_transform(options: FinetuneOptions, mean, std):
    """The augmentation preset: random resized crop (50–100 % of the image), horizontal
    flip, mild colour jitter (off with ``--no-color-jitter`` when colour is the signal)."""
    steps = [transforms.RandomResizedCrop(options.image_size, scale=(0.5, 1.0), antialias=True)]
    if options.flip:
        steps.append(transforms.RandomHorizontalFlip())
    if options.color_jitter:
        steps.append(transforms.ColorJitter(0.2, 0.2, 0.2, 0.02))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


# The kinds of ``new_view``: how a taught object is shown again, further from how it was
# taught than the training augmentation goes.
NEW_VIEW_KINDS = ("closer", "farther", "corner", "turned", "light")


def new_view(img, rng):
    """``img`` (PIL, RGB) as a teacher may show the object again later, one change of
    ``NEW_VIEW_KINDS`` chosen by ``rng`` (a ``random.Random``): closer (a part of it,
    35-60 % of each side, fills the picture), farther (shrunk to 40-70 % on a plain
    ground: its own mean colour, each channel moved by up to 60, with a camera's noise of
    3 grey levels), in a corner (the same, at a corner), turned (a quarter or half turn),
    another light (darker or brighter, less or more contrast and colour).  The "I'm not
    sure" criterion of a Teach model is made with such views
    (``webapp.training.recipe.open_set``)."""
    import numpy as np
    from PIL import Image, ImageEnhance, ImageStat

    width, height = img.size
    kind = rng.choice(NEW_VIEW_KINDS)
    if kind == "closer":
        share = rng.uniform(0.35, 0.6)
        w, h = max(1, round(width * share)), max(1, round(height * share))
        x, y = rng.randint(0, width - w), rng.randint(0, height - h)
        return img.crop((x, y, x + w, y + h)).resize((width, height), Image.BILINEAR)
    if kind in ("farther", "corner"):
        share = rng.uniform(0.4, 0.7)
        w, h = max(1, round(width * share)), max(1, round(height * share))
        colour = [c + rng.uniform(-60, 60) for c in ImageStat.Stat(img).mean[:3]]
        noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 3, (height, width, 3))
        ground = Image.fromarray(np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8))
        if kind == "farther":
            x = round((width - w) * rng.uniform(0.3, 0.7))
            y = round((height - h) * rng.uniform(0.3, 0.7))
        else:
            x, y = rng.choice((0, width - w)), rng.choice((0, height - h))
        ground.paste(img.resize((w, h), Image.BILINEAR), (x, y))
        return ground
    if kind == "turned":
        return img.transpose(rng.choice((Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270)))
    light = rng.choice((rng.uniform(0.45, 0.7), rng.uniform(1.3, 1.6)))
    img = ImageEnhance.Brightness(img).enhance(light)
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.1))
    return ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.3))
