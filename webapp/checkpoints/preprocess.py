"""The model's input: torchvision's ImageNet eval transform, without torch.  One function
shared by serving, fine-tuning and calibration, so a model is always fed the way it was
trained and checked."""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


CROP_RATIO = 0.875  # resize the shorter side to input_size / 0.875, then centre-crop


MAX_ASPECT = 3  # longest side kept at most this many times the shortest (preprocess)


def preprocess_array(img: Image.Image, resize_size: int, input_size: int, mean, std
                     ) -> np.ndarray:
    """torchvision's ImageNet eval transform (Resize(resize_size), CenterCrop(input_size),
    ToTensor, Normalize(mean, std)) as a (3, input_size, input_size) float32 array,
    computed without torch: torch's OpenMP threads, once woken, spin for a while and
    would take the cores from the engine's own threads (measured: OpenVINO's 4 ms
    inference became 7.5 ms).

    The resize and the centre crop are one Pillow resize of just the region the crop
    keeps (``box``): the same sampling positions and filter as resizing the whole image
    and cropping, for about half the work (the same pixels, but for a rare rounding of
    one 8-bit level).

    A very elongated image (say 30000×1) is first trimmed to 3:1 around its centre,
    which the centre crop would discard anyway, so resizing it cannot allocate
    gigabytes."""
    scale = img.info.get("scale", 1)
    original = img.info.get("original_size")
    if img.mode != "RGB":
        img = img.convert("RGB")
    width, height = img.size
    short, long_ = min(width, height), max(width, height)
    if scale > 1 and original and max(original) <= min(original) * MAX_ASPECT:
        # Decoded at 1/scale (a JPEG draft, a box reduction: ``webapp.imaging``):
        # the resize and the crop are placed where they fall on the full-size image,
        # whose pixel x is the reduced image's x / scale.
        return _finish(_resized_crop(img, original, resize_size, input_size, scale),
                       mean, std)
    if long_ > short * MAX_ASPECT:
        keep = short * MAX_ASPECT
        if width > height:
            left = (width - keep) // 2
            img = img.crop((left, 0, left + keep, height))
        else:
            top = (height - keep) // 2
            img = img.crop((0, top, width, top + keep))
        width, height = img.size
    return _finish(_resized_crop(img, (width, height), resize_size, input_size), mean, std)


def _resized_crop(img: Image.Image, size_of: tuple[int, int], size: int, crop: int,
                  scale: int = 1) -> Image.Image:
    """torchvision's Resize(size) and CenterCrop(crop) of an image ``size_of`` large,
    of which ``img`` is the 1/``scale`` reduction."""
    width, height = size_of
    # torchvision's Resize(size): the shorter side becomes ``size``, the longer one
    # keeps the aspect ratio (truncated); then CenterCrop(crop), rounded offsets.
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    if crop <= min(new_w, new_h):
        left = int(round((new_w - crop) / 2.0))
        top = int(round((new_h - crop) / 2.0))
        sx, sy = width / new_w / scale, height / new_h / scale
        return img.resize((crop, crop), Image.Resampling.BILINEAR,
                          box=(left * sx, top * sy, (left + crop) * sx, (top + crop) * sy))
    # a model whose crop is larger than its resize: pad with black like torchvision
    return _center_crop_padded(img.resize((new_w, new_h), Image.Resampling.BILINEAR), crop)


def _finish(img: Image.Image, mean, std) -> np.ndarray:
    """ToTensor and Normalize(mean, std), as a (3, S, S) float32 array."""
    array = np.ascontiguousarray(np.asarray(img, dtype=np.float32).transpose(2, 0, 1))
    array /= np.float32(255.0)
    array -= np.asarray(mean, dtype=np.float32)[:, None, None]
    array /= np.asarray(std, dtype=np.float32)[:, None, None]
    return array


def _center_crop_padded(img: Image.Image, crop: int) -> Image.Image:
    """torchvision's ``CenterCrop(crop)`` of an image smaller than ``crop`` on a side:
    zero padding split as torchvision splits it, then the centred crop."""
    width, height = img.size
    pad_left = (crop - width) // 2 if crop > width else 0
    pad_top = (crop - height) // 2 if crop > height else 0
    padded_w = width + pad_left + ((crop - width + 1) // 2 if crop > width else 0)
    padded_h = height + pad_top + ((crop - height + 1) // 2 if crop > height else 0)
    canvas = Image.new(img.mode, (padded_w, padded_h))
    canvas.paste(img, (pad_left, pad_top))
    left = int(round((padded_w - crop) / 2.0))
    top = int(round((padded_h - crop) / 2.0))
    return canvas.crop((left, top, left + crop, top + crop))
