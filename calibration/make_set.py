"""Regenerate the calibration photos from the packages that ship them (dev requirements):
``python calibration/make_set.py``.  Sources and licences: calibration/README.md."""

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SKIMAGE = ("astronaut", "hubble_deep_field", "retina", "immunohistochemistry", "coins",
           "clock", "brick", "grass", "gravel")


def main() -> None:
    from skimage import data
    from sklearn.datasets import load_sample_image

    images = {name: np.asarray(getattr(data, name)()) for name in SKIMAGE}
    images["flower"] = load_sample_image("flower.jpg")
    for name, array in images.items():
        img = Image.fromarray(array).convert("RGB")
        img.thumbnail((400, 400), Image.Resampling.LANCZOS)  # shorter side >= 256 kept
        img.save(HERE / f"{name}.jpg", quality=90, optimize=True)


if __name__ == "__main__":
    main()
