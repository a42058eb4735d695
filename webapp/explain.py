"""How the model sees a photo: its preprocessing steps as pictures, and a Grad-CAM heatmap
of where it looked for one class.  No Flask here: ``explain(classifier, image)`` returns
an ``Explanation`` of PIL images and numbers; the route turns it into JSON or a PNG.

* **Always on fp32.**  ``LoadedModel.engine`` serves predictions and may be quantized or
  compiled (no gradients there); ``LoadedModel.module`` is the fp32 network.  Each
  ``Explainer`` keeps its *own* deep copy of that module, so its temporary hooks and
  backward passes never touch what serves ``/predict`` and never take its lock.
* **Exactly what the model saw.**  The input tensor is the classifier's own
  ``preprocess()`` output (this model's input size, mean and std); the "cropped" picture is
  that tensor de-normalised, and the tensor picture is drawn from it.
* **The class explained** is the serving engine's top-1 (the bar the user sees), unless
  another class index is asked for.
* **Target layer, chosen generically**: the last module, in execution order, whose output
  is an N×C×H×W feature map with H, W ≥ 2 -- the final convolutional features right
  before global pooling (``layer4`` for ResNets, ``features`` for torchvision's
  EfficientNet/MobileNet/DenseNet/VGG/ConvNeXt, the head activation ``_swish`` after
  ``_conv_head`` for the bundled EfficientNet-Lite0).  Transformers whose tokens have no
  N×C×H×W map (``vit_*``, ``swin_*``) are refused with ``ExplainUnsupported``.
"""

from __future__ import annotations

import copy
import threading
import time
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from model_loader import MAX_ASPECT
from webapp.classifier import Classifier, Prediction

UNSUPPORTED_PREFIXES = ("vit_", "swin_")

# Two sentences a 12-year-old understands; {label} is the class the heatmap is for.
EXPLANATION_TEMPLATE = (
    "Before it looks, the computer shrinks your photo, cuts out the square in the middle "
    "and turns every dot into three numbers (how red, how green, how blue it is), because "
    "numbers are all it can read. "
    "The heatmap shows which parts of that square made it think \u201c{label}\u201d: red "
    "and yellow parts mattered most, blue parts hardly at all."
)

ORIGINAL_MAX_SIDE = 448  # the "original" step is shown as a thumbnail


class ExplainUnsupported(Exception):
    """The model has no spatial feature map to explain with Grad-CAM."""


@dataclass
class Step:
    name: str  # original | resized | cropped | tensor
    title: str
    caption: str
    image: Image.Image


@dataclass
class Explanation:
    target: Prediction  # the class the heatmap is for
    predictions: list[Prediction]  # the serving engine's top-k, as /predict answers
    layer: str  # the module Grad-CAM looked at
    grid: tuple[int, int]  # its spatial size, e.g. (7, 7)
    heatmap: np.ndarray  # float32 input_size × input_size, 0..1 (1 = mattered most)
    steps: list[Step]
    overlay: Image.Image  # the heatmap over the cropped picture
    heatmap_image: Image.Image  # the heatmap alone, coloured
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def sentences(self) -> str:
        return EXPLANATION_TEMPLATE.format(label=self.target.label)


# --------------------------------------------------------------------------- target layer


def find_target_layer(module: nn.Module, input_size: int) -> tuple[str, nn.Module]:
    """The last module (in the order forward passes finish) whose output is an N×C×H×W
    tensor with H, W ≥ 2, found with one probe forward pass on a blank image."""
    seen: list[tuple[str, nn.Module]] = []

    def record(name):
        def hook(mod, args, output):
            if torch.is_tensor(output) and output.dim() == 4 and min(output.shape[2:]) >= 2:
                seen.append((name, mod))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in module.named_modules() if n]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, input_size, input_size))
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ExplainUnsupported("the model has no convolutional feature map to explain")
    return seen[-1]


class Explainer:
    """Grad-CAM on a private fp32 copy of one loaded model.  Thread-safe (one explanation
    at a time per model)."""

    def __init__(self, classifier: Classifier):
        loaded = classifier.loaded
        if loaded.arch.startswith(UNSUPPORTED_PREFIXES):
            raise ExplainUnsupported(
                f"heatmaps are not available for {loaded.arch}: it is a transformer without "
                "a convolutional feature map"
            )
        self.module = copy.deepcopy(loaded.module).float().eval()
        for param in self.module.parameters():
            param.requires_grad_(False)  # gradients flow to the input only
        self.layer_name, self.layer = find_target_layer(self.module, loaded.input_size)
        self._lock = threading.Lock()

    def gradcam(self, batch: torch.Tensor, index: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Grad-CAM map (grid resolution, ≥ 0, not normalised) for class ``index``."""
        captured: list[torch.Tensor] = []

        def hook(mod, args, output):
            captured.append(output)
            return output + 0  # later in-place ops (ReLU(inplace)) change the copy only

        with self._lock:
            handle = self.layer.register_forward_hook(hook)
            try:
                with torch.enable_grad():
                    x = batch.detach().float().requires_grad_(True)
                    logits = self.module(x)
                    activation = captured[-1]  # a module may run more than once
                    (grads,) = torch.autograd.grad(logits[0, index], activation)
            finally:
                handle.remove()
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * activation.detach()).sum(dim=1))[0]
        return cam.numpy().astype(np.float32), tuple(cam.shape)


_explainers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_explainers_lock = threading.Lock()


def explainer_for(classifier: Classifier) -> Explainer:
    """One Explainer per loaded model (made on first use, dropped with the model)."""
    key = classifier.loaded.module
    with _explainers_lock:
        explainer = _explainers.get(key)
        if explainer is None:
            explainer = _explainers[key] = Explainer(classifier)
        return explainer


# --------------------------------------------------------------------------- pictures


# A perceptually ordered blue -> cyan -> green -> yellow -> red ramp ("jet"-like).
_RAMP = np.array(
    [[0.19, 0.07, 0.55], [0.12, 0.47, 0.96], [0.10, 0.80, 0.80], [0.35, 0.85, 0.25],
     [0.98, 0.85, 0.15], [0.95, 0.40, 0.10], [0.80, 0.05, 0.05]],
    dtype=np.float32,
)


def colourise(heat: np.ndarray) -> np.ndarray:
    """0..1 floats (H×W) -> uint8 RGB (H×W×3) along the ramp."""
    pos = np.clip(heat, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(pos).astype(int)
    high = np.minimum(low + 1, len(_RAMP) - 1)
    frac = (pos - low)[..., None]
    rgb = _RAMP[low] * (1 - frac) + _RAMP[high] * frac
    return np.round(rgb * 255).astype(np.uint8)


def overlay(base: Image.Image, heat: np.ndarray) -> Image.Image:
    """The coloured heatmap over ``base``; cold areas stay visible."""
    colour = colourise(heat).astype(np.float32)
    picture = np.asarray(base.convert("RGB"), dtype=np.float32)
    alpha = (0.30 + 0.40 * np.clip(heat, 0, 1))[..., None]
    out = picture * (1 - alpha) + colour * alpha
    return Image.fromarray(np.round(out).astype(np.uint8), "RGB")


def upsample(cam: np.ndarray, size: int) -> np.ndarray:
    """Grid map -> size × size, 0..1 (bilinear, as Grad-CAM is usually drawn)."""
    tensor = torch.from_numpy(cam)[None, None]
    big = torch.nn.functional.interpolate(
        tensor, size=(size, size), mode="bilinear", align_corners=False
    )[0, 0]
    peak = float(big.max())
    return (big / peak if peak > 0 else torch.zeros_like(big)).numpy().astype(np.float32)


def denormalise(tensor: torch.Tensor, mean, std) -> Image.Image:
    """The normalised 3×H×W input turned back into the picture the model was given."""
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    pixels = (tensor * std_t + mean_t).mul(255).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")


def shrunk_picture(original_size: tuple[int, int], resized: Image.Image,
                   max_side: int = ORIGINAL_MAX_SIDE) -> Image.Image:
    """The resized photo drawn to the same scale as the photo it came from, in the corner
    of a grey frame of the original's size: a phone photo's copy is the small picture it
    really is (drawn at the original's size it would look like the original); a small
    photo that was enlarged overflows its frame.  NumPy/Pillow only."""
    (ow, oh), (rw, rh) = original_size, resized.size
    width, height = max(ow, rw), max(oh, rh)
    scale = min(1.0, max_side / max(width, height))

    def fit(n):
        return max(1, round(n * scale))

    canvas = Image.new("RGBA", (fit(width), fit(height)), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, fit(ow) - 1, fit(oh) - 1), fill=(96, 104, 118, 255),
                   outline=(222, 226, 230, 255), width=2)
    canvas.paste(resized.convert("RGB").resize((fit(rw), fit(rh)), Image.BILINEAR), (0, 0))
    draw.rectangle((0, 0, fit(rw) - 1, fit(rh) - 1), outline=(255, 210, 63, 255), width=2)
    if rw > ow or rh > oh:  # enlarged: the original's frame on top, so it shows
        draw.rectangle((0, 0, fit(ow) - 1, fit(oh) - 1), outline=(222, 226, 230, 255), width=2)
    return canvas


def numbers_picture(tensor, mean, std, dots: int = 2, cell: int = 160) -> Image.Image:
    """The numbers the model gets, readable: the ``dots`` × ``dots`` dots in the very
    middle of its input, each drawn as a big square of its colour with its three numbers
    (red, green, blue) written on it.  ``tensor`` is the normalised 3×H×W input (torch or
    NumPy); mean/std turn it back into the colours.  NumPy/Pillow only."""
    values = np.asarray(tensor, dtype=np.float32)
    _, height, width = values.shape
    top, left = (height - dots) // 2, (width - dots) // 2
    patch = values[:, top:top + dots, left:left + dots]
    colours = patch * np.asarray(std, np.float32)[:, None, None] \
        + np.asarray(mean, np.float32)[:, None, None]
    colours = np.clip(np.round(colours * 255), 0, 255).astype(np.uint8)
    canvas = Image.new("RGB", (dots * cell, dots * cell), (33, 37, 41))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=cell // 5)
    for row in range(dots):
        for col in range(dots):
            rgb = tuple(int(c) for c in colours[:, row, col])
            x, y = col * cell, row * cell
            draw.rectangle((x + 2, y + 2, x + cell - 3, y + cell - 3), fill=rgb)
            light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140
            ink, halo = ((0, 0, 0), (255, 255, 255)) if light else ((255, 255, 255), (0, 0, 0))
            text = "\n".join(f"{name} {patch[n, row, col]:+.2f}"
                             for n, name in enumerate("RGB"))
            draw.multiline_text((x + cell // 2, y + cell // 2), text, font=font, fill=ink,
                                anchor="mm", align="left", spacing=cell // 20,
                                stroke_width=2, stroke_fill=halo)
    return canvas


def _trim(img: Image.Image) -> Image.Image:
    """The classifier's 3:1 trim of very elongated images (see Classifier.preprocess)."""
    width, height = img.size
    short, long_ = min(width, height), max(width, height)
    if long_ <= short * MAX_ASPECT:
        return img
    keep = short * MAX_ASPECT
    if width > height:
        left = (width - keep) // 2
        return img.crop((left, 0, left + keep, height))
    top = (height - keep) // 2
    return img.crop((0, top, width, top + keep))


def _resized(classifier: Classifier, img: Image.Image) -> Image.Image:
    return TF.resize(
        _trim(img), classifier.loaded.resize_size, InterpolationMode.BILINEAR, antialias=True
    )


# --------------------------------------------------------------------------- explain


def explain(
    classifier: Classifier,
    img: Image.Image,
    *,
    index: int | None = None,
    k: int = 3,
) -> Explanation:
    """Preprocessing steps and a Grad-CAM heatmap for ``img``.

    ``index``: the class to explain (default: the serving engine's top-1)."""
    t0 = time.perf_counter()
    explainer = explainer_for(classifier)
    loaded = classifier.loaded
    (predictions,), _ = classifier.predict([img], k)
    t1 = time.perf_counter()
    tensor = classifier.preprocess(img)  # exactly what /predict feeds the model
    index = predictions[0].index if index is None else int(index)
    cam, grid = explainer.gradcam(tensor.unsqueeze(0), index)
    t2 = time.perf_counter()
    target = next((p for p in predictions if p.index == index), None)
    if target is None:  # a class outside the top k: its score from the serving engine
        (every,), _ = classifier.predict([img], classifier.num_classes)
        target = next(p for p in every if p.index == index)

    size = loaded.input_size
    heat = upsample(cam, size)
    cropped = denormalise(tensor, loaded.mean, loaded.std)
    resized = _resized(classifier, img)
    original = img.copy()
    original.thumbnail((ORIGINAL_MAX_SIDE, ORIGINAL_MAX_SIDE))
    low, high = float(tensor.min()), float(tensor.max())
    shrunk = resized.width <= img.width
    steps = [
        Step("original", "Your photo",
             f"The photo as it arrived: {img.width} × {img.height} pixels.", original),
        Step("resized", "Shrunk" if shrunk else "Made bigger",
             f"{'Shrunk' if shrunk else 'Made bigger'} so the short side is "
             f"{loaded.resize_size} pixels: {resized.width} × {resized.height}. The grey "
             "frame is your photo's size.",
             shrunk_picture(img.size, resized)),
        Step("cropped", "Square from the middle",
             f"The {size} × {size} square from the middle: all the model ever sees.", cropped),
        Step("tensor", "Numbers",
             f"What the model really gets: 3 grids of {size} × {size} numbers (red, green, "
             f"blue), from {low:.2f} to {high:.2f}. Here are the 4 dots in the very middle, "
             "drawn big, with their numbers.",
             numbers_picture(tensor, loaded.mean, loaded.std)),
    ]
    t3 = time.perf_counter()
    return Explanation(
        target=target,
        predictions=predictions,
        layer=explainer.layer_name,
        grid=grid,
        heatmap=heat,
        steps=steps,
        overlay=overlay(cropped, heat),
        heatmap_image=Image.fromarray(colourise(heat), "RGB"),
        timings_ms={
            "predict": (t1 - t0) * 1000,
            "gradcam": (t2 - t1) * 1000,
            "pictures": (t3 - t2) * 1000,
        },
    )
