"""Small labelled image datasets drawn on the fly (for the fine-tuning tests and bench):
a filled circle, square or triangle of a random colour, size and position on a random
background, with a little noise -- easy for a pretrained network, impossible by accident."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle")


def _colour(rng: random.Random, avoid=None) -> tuple[int, int, int]:
    while True:
        colour = tuple(rng.randrange(256) for _ in range(3))
        if avoid is None or sum(abs(a - b) for a, b in zip(colour, avoid)) > 200:
            return colour


def draw(shape: str, rng: random.Random, size: int = 80) -> Image.Image:
    background = _colour(rng)
    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    side = rng.uniform(0.45, 0.75) * size
    cx = rng.uniform(side / 2, size - side / 2)
    cy = rng.uniform(side / 2, size - side / 2)
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    fill = _colour(rng, avoid=background)
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.regular_polygon((cx, cy, side / 2 * 0.95), 4, rotation=rng.uniform(0, 90), fill=fill)
    elif shape == "triangle":
        d.regular_polygon((cx, cy, side / 2 * 1.05), 3, rotation=rng.uniform(0, 120), fill=fill)
    else:
        raise ValueError(shape)
    return img.filter(ImageFilter.GaussianBlur(0.6))


def make_dataset(root: Path, per_class: int | dict[str, int] = 30, *, seed: int = 0,
                 size: int = 80, shapes=SHAPES, fmt: str = "PNG") -> Path:
    """``root/<shape>/<n>.png`` for every shape; ``per_class`` may differ per shape."""
    rng = random.Random(seed)
    counts = per_class if isinstance(per_class, dict) else {s: per_class for s in shapes}
    for shape, count in counts.items():
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(count):
            suffix = "png" if fmt == "PNG" else "jpg"
            draw(shape, rng, size).save(folder / f"{shape}-{seed}-{n}.{suffix}", fmt)
    return root
