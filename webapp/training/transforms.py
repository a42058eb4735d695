"""What the network sees: the training augmentation preset and, for evaluation, the
server's own preprocessing (one function shared by serving, training and calibration)."""

from __future__ import annotations

import torch
from torchvision import transforms

from model_loader import CROP_RATIO, preprocess_array
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
