"""A set of about 100 real photos with deterministic variants (crops, flips, rescales,
rotations), built from testkit/photos.py -- for agreement numbers between engines."""

from __future__ import annotations

from PIL import Image, ImageEnhance, ImageOps


def variants(img: Image.Image) -> list[tuple[str, Image.Image]]:
    w, h = img.size
    out = [("orig", img), ("flip", ImageOps.mirror(img))]
    for frac in (0.8, 0.6):
        cw, ch = int(w * frac), int(h * frac)
        for tag, (x, y) in {"c": ((w - cw) // 2, (h - ch) // 2), "tl": (0, 0),
                            "br": (w - cw, h - ch)}.items():
            out.append((f"crop{frac}{tag}", img.crop((x, y, x + cw, y + ch))))
    for scale in (0.5, 1.5):
        out.append((f"scale{scale}", img.resize((int(w * scale), int(h * scale)),
                                                Image.Resampling.BICUBIC)))
    out.append(("rot90", img.rotate(90, expand=True)))
    out.append(("bright", ImageEnhance.Brightness(img).enhance(1.3)))
    out.append(("dark", ImageEnhance.Brightness(img).enhance(0.7)))
    out.append(("contrast", ImageEnhance.Contrast(img).enhance(0.7)))
    out.append(("grey", ImageOps.grayscale(img).convert("RGB")))
    return out




def photo_set() -> list[tuple[str, Image.Image]]:
    from testkit.photos import real_photos

    return [(f"{p.name}/{tag}", v) for p in real_photos() for tag, v in variants(p.image)]


if __name__ == "__main__":
    print(len(photo_set()))
