"""The photos static int8 quantization is calibrated on, preprocessed exactly as the server
does.  No torch here: the worker names the int8 cache entry from the calibration set's
digest, the child process builds it.

The set: the photos in ``calibration/`` that ship with the project (public-domain/CC
images, see its README) or the images in ``CALIBRATION_DIR``, each seen as several
deterministic views (crops, flips, scales), preprocessed with the model's own size, mean
and std.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from webapp.checkpoints.files import sha256_file
from webapp.checkpoints.loaded import ModelLoadError
from webapp.checkpoints.preprocess import CROP_RATIO, preprocess_array

log = logging.getLogger(__name__)

CALIBRATION_DIR = Path(__file__).resolve().parent.parent.parent / "calibration"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_CALIBRATION_SAMPLES = 96


def calibration_files(directory: str | os.PathLike | None = None) -> list[Path]:
    root = Path(directory) if directory else CALIBRATION_DIR
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ModelLoadError(f"no calibration images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return files


def calibration_digest(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"|" + sha256_file(path).encode())
    return digest.hexdigest()


def int8_name(key: str, directory: str | os.PathLike | None = None) -> str:
    """The cache entry of a model's static int8 network for this calibration set (a set
    without images gets a name too: building it fails, and the reason is kept beside)."""
    try:
        digest = calibration_digest(calibration_files(directory))[:16]
    except ModelLoadError:
        digest = "no-photos"
    return f"{key}-{digest}.int8.onnx"


def views(img, input_size: int) -> list:
    """Deterministic views of one photo, as a server would see it: whole, mirrored,
    zoomed into the centre and into each corner."""
    from PIL import ImageOps

    width, height = img.size
    out = [img, ImageOps.mirror(img)]
    for frac in (0.7, 0.5):
        w, h = int(width * frac), int(height * frac)
        if min(w, h) < input_size // 2:
            continue
        boxes = [((width - w) // 2, (height - h) // 2)]
        if frac == 0.7:
            boxes += [(0, 0), (width - w, height - h)]
        out += [img.crop((x, y, x + w, y + h)) for x, y in boxes]
    return out


def calibration_arrays(files: list[Path], input_size: int, mean, std,
                       limit: int = MAX_CALIBRATION_SAMPLES) -> list[np.ndarray]:
    """Preprocessed (1, 3, S, S) float32 arrays of the calibration set, at most ``limit``
    spread evenly over it."""
    from PIL import Image

    resize = round(input_size / CROP_RATIO)
    arrays = []
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except Exception as exc:
            log.warning("calibration image %s skipped: %s", path, exc)
            continue
        for view in views(img, input_size):
            arrays.append(preprocess_array(view, resize, input_size, mean, std)[None])
    if not arrays:
        raise ModelLoadError("none of the calibration images could be read")
    step = max(1, len(arrays) // limit)
    return arrays[::step][:limit]
