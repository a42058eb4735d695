"""How the model sees a photo: its preprocessing steps as pictures, and a heatmap of where
it looked for one class.  No Flask and no torch here: ``explain(classifier, image)``
returns an ``Explanation`` of PIL images and numbers; the route turns it into JSON or a PNG.

* **Grad-CAM without gradients.**  The models served here end in global average pooling
  and one linear layer (ResNet, EfficientNet(-Lite), their fine-tuned versions; the
  builder checks it numerically, ``webapp.engines.build.linear_head``).  For such a head
  the gradient of a class score with respect to each feature-map cell is that class's
  head weight divided by the number of cells, so Grad-CAM at the last feature map is CAM:
  ``relu(W[class] · features)``.  The engine returns the feature map as a second output of
  the same pass that answers, so the heatmap costs one matrix product.  Models whose head
  is more than that (an MLP, a LayerNorm) are refused with ``ExplainUnsupported``.
* **Exactly what the model saw.**  The input is the classifier's own ``preprocess()``
  output (this model's input size, mean and std); the "cropped" picture is that array
  de-normalised, and the numbers picture is drawn from it.
* **The class explained** is the top-1 of that pass (the bar the user sees), unless
  another class index is asked for.
* **The layer** is the last module whose output is an N×C×H×W feature map with H, W ≥ 2
  (``layer4`` for ResNets, the head activation ``_swish`` for the bundled
  EfficientNet-Lite0), found by the builder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from webapp.checkpoints.preprocess import MAX_ASPECT
from webapp.messages import Message
from webapp.serving.classifier import Classifier, Prediction, softmax

# Two sentences a 12-year-old understands; {label} is the class the heatmap is for, as the
# page names it (``Explanation.sentences``; the kiosk fills it in itself).
EXPLANATION_TEMPLATE = Message(
    "Before it looks, the computer shrinks your photo, cuts out the square in the middle "
    "and turns every dot into three numbers (how red, how green, how blue it is), because "
    "numbers are all it can read. "
    "The heatmap shows which parts of that square made it think \u201c{label}\u201d: red "
    "and yellow parts mattered most, blue parts hardly at all."
)

ORIGINAL_MAX_SIDE = 448  # the "original" step is shown as a thumbnail


class ExplainUnsupported(Exception):
    """The model has no heatmap to show (no feature map, or a head that is not one linear
    layer after global average pooling); the message says why."""


@dataclass
class Step:
    name: str  # original | resized | cropped | tensor
    title: Message  # words for people, shown in their language (webapp.i18n.translate)
    caption: Message
    image: Image.Image


@dataclass
class Explanation:
    target: Prediction  # the class the heatmap is for
    predictions: list[Prediction]  # the serving engine's top-k, as /predict answers
    layer: str  # the module whose feature map the heatmap comes from
    grid: tuple[int, int]  # its spatial size, e.g. (7, 7)
    heatmap: np.ndarray  # float32 input_size × input_size, 0..1 (1 = mattered most)
    steps: list[Step]
    overlay: Image.Image  # the heatmap over the cropped picture
    heatmap_image: Image.Image  # the heatmap alone, coloured
    timings_ms: dict[str, float] = field(default_factory=dict)

    def sentences(self, label: str | None = None, template: str = EXPLANATION_TEMPLATE) -> str:
        """The explanation for ``label`` (the class as the page names it; by default its
        label), from ``template`` (the translated ``EXPLANATION_TEMPLATE``)."""
        return template.replace("{label}", label or self.target.label)


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
    """Grid map -> size × size, 0..1: bilinear with half-pixel centres (what torch's
    ``interpolate(..., align_corners=False)`` does, as Grad-CAM is usually drawn)."""

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(size) + 0.5) * (n_in / size) - 0.5, 0, n_in - 1)
        low = np.floor(src).astype(int)
        return low, np.minimum(low + 1, n_in - 1), (src - low).astype(np.float32)

    (y0, y1, fy), (x0, x1, fx) = axis(cam.shape[0]), axis(cam.shape[1])
    rows = cam[y0] * (1 - fy)[:, None] + cam[y1] * fy[:, None]
    big = rows[:, x0] * (1 - fx)[None] + rows[:, x1] * fx[None]
    peak = float(big.max())
    return (big / peak if peak > 0 else np.zeros_like(big)).astype(np.float32)


def denormalise(array: np.ndarray, mean, std) -> Image.Image:
    """The normalised 3×H×W input turned back into the picture the model was given."""
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]
    std = np.asarray(std, dtype=np.float32)[:, None, None]
    pixels = np.clip(np.round((array * std + mean) * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels.transpose(1, 2, 0), "RGB")


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
    (red, green, blue) written on it.  ``tensor`` is the normalised 3×H×W input (a NumPy
    array); mean/std turn it back into the colours.  NumPy/Pillow only."""
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
    """torchvision's ``Resize(resize_size)`` of a PIL image: the shorter side becomes
    ``resize_size``, the longer one keeps the aspect ratio (truncated)."""
    img = _trim(img)
    size = classifier.loaded.resize_size
    width, height = img.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    return img.resize(new, Image.Resampling.BILINEAR)


def cam(classifier: Classifier, features: np.ndarray, index: int) -> np.ndarray:
    """``relu(W[index] · features)`` on the feature map's grid (Grad-CAM for a pooled
    linear head, see the module docstring)."""
    weight = classifier.engine.cam_weight
    channels, height, width = features.shape
    grid = weight[index] @ features.reshape(channels, height * width).astype(np.float32)
    return np.maximum(grid, 0).reshape(height, width).astype(np.float32)


# --------------------------------------------------------------------------- explain


def explain(
    classifier: Classifier,
    img: Image.Image,
    *,
    index: int | None = None,
    k: int = 3,
) -> Explanation:
    """Preprocessing steps and a heatmap for ``img``.

    ``index``: the class to explain (default: the top-1 of the same pass)."""
    loaded = classifier.loaded
    if classifier.engine.cam_weight is None or not loaded.cam:
        raise ExplainUnsupported(Message(
            "heatmaps are not available for this model (%(arch)s): %(reason)s",
            arch=loaded.arch,
            reason=loaded.cam_unavailable or Message("it has no feature map to explain")))
    t0 = time.perf_counter()
    array = classifier.preprocess(img)  # exactly what /predict feeds the model
    logits, features = classifier.features(array[None])
    probs = softmax(logits)[0]
    order = np.argsort(-probs, kind="stable")
    predictions = [Prediction(classifier.labels[i], int(i), float(probs[i]))
                   for i in order[:max(1, min(k, classifier.num_classes))]]
    index = predictions[0].index if index is None else int(index)
    target = Prediction(classifier.labels[index], index, float(probs[index]))
    t1 = time.perf_counter()
    grid_map = cam(classifier, features[0], index)
    t2 = time.perf_counter()

    heat = upsample(grid_map, loaded.input_size)
    cropped = denormalise(array, loaded.mean, loaded.std)
    steps = _steps(classifier, img, array, cropped)
    t3 = time.perf_counter()
    return Explanation(
        target=target,
        predictions=predictions,
        layer=loaded.cam["layer"],
        grid=tuple(grid_map.shape),
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


def _steps(classifier: Classifier, img: Image.Image, array: np.ndarray,
           cropped: Image.Image) -> list[Step]:
    """The four pictures of what happens to the photo before the model sees it."""
    loaded, size = classifier.loaded, classifier.loaded.input_size
    resized = _resized(classifier, img)
    original = img.copy()
    original.thumbnail((ORIGINAL_MAX_SIDE, ORIGINAL_MAX_SIDE))
    low, high = float(array.min()), float(array.max())
    shrunk = resized.width <= img.width
    resize = {"side": loaded.resize_size, "width": resized.width, "height": resized.height}
    return [
        Step("original", Message("Your photo"),
             Message("The photo as it arrived: %(width)s × %(height)s pixels.",
                     width=img.width, height=img.height), original),
        Step("resized", Message("Shrunk") if shrunk else Message("Made bigger"),
             Message("Shrunk so the short side is %(side)s pixels: %(width)s × %(height)s. "
                     "The grey frame is your photo's size.", **resize) if shrunk else
             Message("Made bigger so the short side is %(side)s pixels: %(width)s × "
                     "%(height)s. The grey frame is your photo's size.", **resize),
             shrunk_picture(img.size, resized)),
        Step("cropped", Message("Square from the middle"),
             Message("The %(size)s × %(size)s square from the middle: all the model ever "
                     "sees.", size=size), cropped),
        Step("tensor", Message("Numbers"),
             Message("What the model really gets: 3 grids of %(size)s × %(size)s numbers "
                     "(red, green, blue), from %(low)s to %(high)s. Here are the 4 dots in "
                     "the very middle, drawn big, with their numbers.",
                     size=size, low=f"{low:.2f}", high=f"{high:.2f}"),
             numbers_picture(array, loaded.mean, loaded.std)),
    ]
