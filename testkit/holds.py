"""What a webcam sees when a real photo is held in front of it, for the tests and
bench/openset.py: a *hold* of the Teach page's capture button is a few frames of one
viewpoint (the object a little closer or farther, turned, lit differently) with the small
shake of a hand between frames; another hold is another viewpoint.  Also pictures that
are clearly not photos of anything: drawings, textures and noise.  All deterministic for
a given ``random.Random``."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from testkit import ROOT

FRAME = (640, 480)  # what the Teach page and the kiosk ask the camera for


def _viewpoint(rng: random.Random) -> dict:
    return {"zoom": rng.uniform(0.55, 0.95), "cx": rng.uniform(0.35, 0.65),
            "cy": rng.uniform(0.35, 0.65), "angle": rng.uniform(-12, 12),
            "light": rng.uniform(0.75, 1.25), "mirror": rng.random() < 0.3}


def _frame(photo: Image.Image, view: dict, size=FRAME) -> Image.Image:
    """``photo`` filmed from ``view``: the box around (cx, cy) covering ``zoom`` of the
    photo's shorter side, in the frame's aspect, turned and lit."""
    width, height = photo.size
    aspect = size[0] / size[1]
    box_h = min(height, width / aspect) * view["zoom"]
    box_w = box_h * aspect
    left = min(max(view["cx"] * width - box_w / 2, 0), width - box_w)
    top = min(max(view["cy"] * height - box_h / 2, 0), height - box_h)
    crop = photo.rotate(view["angle"], resample=Image.BICUBIC,
                        center=(left + box_w / 2, top + box_h / 2))
    frame = crop.crop((round(left), round(top), round(left + box_w), round(top + box_h)))
    frame = frame.resize(size, Image.BICUBIC)
    if view["mirror"]:
        frame = frame.transpose(Image.FLIP_LEFT_RIGHT)
    return ImageEnhance.Brightness(frame).enhance(view["light"])


def hold(photo: Image.Image, rng: random.Random, frames: int = 4,
         size=FRAME) -> list[Image.Image]:
    """One hold of the capture button: ``frames`` near-copies from one viewpoint."""
    base = _viewpoint(rng)
    pictures = []
    for _ in range(frames):
        shaken = {**base, "zoom": base["zoom"] * rng.uniform(0.98, 1.02),
                  "cx": base["cx"] + rng.uniform(-0.01, 0.01),
                  "cy": base["cy"] + rng.uniform(-0.01, 0.01),
                  "angle": base["angle"] + rng.uniform(-1, 1)}
        pictures.append(_frame(photo, shaken, size))
    return pictures


def views(photo: Image.Image, rng: random.Random, count: int, size=FRAME) -> list[Image.Image]:
    """``count`` pictures of ``photo``, each from a viewpoint of its own."""
    return [_frame(photo, _viewpoint(rng), size) for _ in range(count)]


# --------------------------------------------------------------------------- new views

NEW_VIEW_KINDS = ("closer", "farther", "corner", "turned", "light")


def _desk(rng: random.Random, size) -> Image.Image:
    """A plain surface (a desk, a wall): one muted colour, a gentle gradient, some grain."""
    w, h = size
    base = np.array([rng.randrange(90, 200) for _ in range(3)], np.float32)
    shade = np.linspace(rng.uniform(0.85, 1.0), rng.uniform(1.0, 1.15), h)[:, None, None]
    grain = np.random.default_rng(rng.randrange(2**32)).normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(base * shade + grain, 0, 255).astype(np.uint8))


def new_view(photo: Image.Image, rng: random.Random, kind: str, size=FRAME) -> Image.Image:
    """``photo`` as a teacher shows a taught object again, further from how it was
    taught than ``views``: ``closer`` (a part of it fills the frame), ``farther`` (small,
    on a desk), ``corner`` (small, in a corner of the frame), ``turned`` (a quarter or
    half turn), ``light`` (much darker or brighter, a warm or cold cast)."""
    view = {**_viewpoint(rng), "zoom": rng.uniform(0.8, 1.0), "angle": rng.uniform(-6, 6),
            "light": rng.uniform(0.9, 1.1)}
    if kind == "closer":
        return _frame(photo, {**view, "zoom": rng.uniform(0.35, 0.5),
                              "cx": rng.uniform(0.4, 0.6), "cy": rng.uniform(0.4, 0.6)}, size)
    if kind in ("farther", "corner"):
        scale = rng.uniform(0.4, 0.55) if kind == "farther" else rng.uniform(0.45, 0.6)
        small = (round(size[0] * scale), round(size[1] * scale))
        thing = _frame(photo, view, small)
        desk = _desk(rng, size)
        if kind == "farther":
            x = round((size[0] - small[0]) * rng.uniform(0.35, 0.65))
            y = round((size[1] - small[1]) * rng.uniform(0.35, 0.65))
        else:
            x = round((size[0] - small[0]) * rng.choice((rng.uniform(0, 0.1),
                                                         rng.uniform(0.9, 1))))
            y = round((size[1] - small[1]) * rng.choice((rng.uniform(0, 0.1),
                                                         rng.uniform(0.9, 1))))
        desk.paste(thing, (x, y))
        return desk
    if kind == "turned":
        turn = rng.choice((Image.ROTATE_90, Image.ROTATE_270, Image.ROTATE_180))
        frame = _frame(photo, view, size if turn == Image.ROTATE_180 else size[::-1])
        return frame.transpose(turn)
    if kind == "light":
        frame = _frame(photo, {**view, "light": rng.choice((rng.uniform(0.45, 0.6),
                                                            rng.uniform(1.4, 1.6)))}, size)
        cast = rng.choice(((1.15, 1.0, 0.8), (0.8, 0.95, 1.15)))
        pixels = np.asarray(frame, np.float32) * np.asarray(cast, np.float32)
        frame = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        return ImageEnhance.Contrast(frame).enhance(rng.uniform(0.7, 0.85))
    raise ValueError(f"unknown kind of view: {kind}")


def new_views(photo: Image.Image, rng: random.Random, count: int,
              size=FRAME) -> list[tuple[str, Image.Image]]:
    """``count`` new views of ``photo`` (``new_view``), the kinds in turn."""
    kinds = [NEW_VIEW_KINDS[n % len(NEW_VIEW_KINDS)] for n in range(count)]
    return [(kind, new_view(photo, rng, kind, size)) for kind in kinds]


# --------------------------------------------------------------------------- not photos


def drawing(rng: random.Random, size=FRAME) -> Image.Image:
    """Lines, boxes, blobs and words on paper."""
    paper = tuple(rng.randrange(215, 256) for _ in range(3))
    img = Image.new("RGB", size, paper)
    d = ImageDraw.Draw(img)
    w, h = size
    for _ in range(rng.randint(3, 12)):
        colour = tuple(rng.randrange(200) for _ in range(3))
        x0, x1 = sorted(rng.randrange(w) for _ in range(2))
        y0, y1 = sorted(rng.randrange(h) for _ in range(2))
        kind = rng.choice(("line", "box", "blob", "words"))
        if kind == "line":
            d.line([(rng.randrange(w), rng.randrange(h)) for _ in range(rng.randint(2, 5))],
                   fill=colour, width=rng.randint(2, 8))
        elif kind == "box":
            d.rectangle((x0, y0, x1, y1), outline=colour, width=rng.randint(2, 6))
        elif kind == "blob":
            d.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            d.text((x0, y0), rng.choice(("hello", "my drawing", "A B C", "1 2 3")),
                   fill=colour)
    return img


def texture(rng: random.Random, size=FRAME) -> Image.Image:
    """Stripes, checks, rings or a smooth marbled pattern in two colours."""
    w, h = size
    x = np.linspace(0, w / h, w)[None, :]
    y = np.linspace(0, 1, h)[:, None]
    f = rng.uniform(3, 30)
    kind = rng.choice(("stripes", "checks", "rings", "marble"))
    if kind == "stripes":
        a = rng.uniform(0, np.pi)
        pattern = np.sin(2 * np.pi * f * (x * np.cos(a) + y * np.sin(a)))
    elif kind == "checks":
        pattern = np.sign(np.sin(2 * np.pi * f * x) * np.sin(2 * np.pi * f * y))
    elif kind == "rings":
        pattern = np.sin(2 * np.pi * f * np.hypot(x - 0.6, y - 0.5))
    else:
        pattern = sum(np.sin(2 * np.pi * rng.uniform(1, 8) * 2**o * x + rng.uniform(0, 6))
                      * np.cos(2 * np.pi * rng.uniform(1, 8) * 2**o * y) / 2**o
                      for o in range(5))
    t = ((pattern - pattern.min()) / (np.ptp(pattern) + 1e-9))[..., None]
    one, two = (np.array([rng.randrange(256) for _ in range(3)]) for _ in range(2))
    return Image.fromarray((one * t + two * (1 - t)).astype(np.uint8))


def noise(rng: random.Random, size=FRAME) -> Image.Image:
    """Snow, grain or big coloured squares."""
    w, h = size
    gen = np.random.default_rng(rng.randrange(2**32))
    kind = rng.choice(("snow", "grain", "squares"))
    if kind == "snow":
        pixels = gen.integers(0, 256, (h, w, 3))
    elif kind == "grain":
        pixels = np.clip(gen.normal(128, 50, (h, w, 3)), 0, 255)
    else:
        pixels = np.kron(gen.integers(0, 256, (h // 40 + 1, w // 40 + 1, 3)),
                         np.ones((40, 40, 1)))[:h, :w]
    img = Image.fromarray(pixels.astype(np.uint8))
    return img.filter(ImageFilter.GaussianBlur(rng.choice((0, 0, 1))))


def not_photos(rng: random.Random, count: int, size=FRAME) -> list[tuple[str, Image.Image]]:
    """``count`` pictures that are no photo of anything, a third of each kind."""
    makers = (("drawing", drawing), ("texture", texture), ("noise", noise))
    return [(makers[n % 3][0], makers[n % 3][1](rng, size)) for n in range(count)]


def project_photos() -> dict[str, Image.Image]:
    """Every real photo the project has: testkit/photos.py, the upload page's examples (the
    same cat, coffee and rocket) and the calibration photos, by name."""
    from testkit.photos import real_photos

    photos = {p.name: p.image for p in real_photos()}
    for path in sorted((ROOT / "calibration").glob("*.jpg")):
        with Image.open(path) as img:
            photos[path.stem] = img.convert("RGB")
    return photos
