"""How close the server's decoding and preprocessing keep a model's answers to torchvision's
on large photos: each test photo made large (shorter side 600 to 3024 px, bicubic, with
mild sensor-like noise, JPEG quality 90, and PNG), decoded the way /predict decodes it
(``webapp.imaging.load``: JPEG draft or box reduction, keeping ``DECODE_GAP``)
and preprocessed (``preprocess_array``), against Pillow's full decode + torchvision's
Resize/CenterCrop/ToTensor/Normalize.  Reported per size: the largest pixel difference
(0-255) and the largest change of any class's probability on the bundled
EfficientNet-Lite0 (the real ImageNet model that ships; its scores are the ones that
move most here), and how often the top-1 stayed the same.

    .venv/bin/python -m bench.decode_fidelity            # ~1 min
    .venv/bin/python -m bench.decode_fidelity --noise 0 --gap 2
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np


def main() -> int:
    import torch
    from PIL import Image
    from torchvision import transforms

    import model_loader
    from testkit.photos import real_photos
    from webapp import imaging
    from webapp.checkpoints.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_array

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, default=4.0, help="sensor-like noise (sigma)")
    parser.add_argument("--sizes", default="600,1200,2000,3024,4032")
    parser.add_argument("--gap", type=int, default=imaging.DRAFT_GAP,
                        help="try another DECODE_GAP (0: always decode in full)")
    args = parser.parse_args()
    gap = args.gap or 10**6
    model = model_loader.load_bundled().module.eval()
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                    transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    rng = np.random.default_rng(0)
    print(f"decode gap {args.gap}, noise sigma {args.noise:g}")
    for short in (int(s) for s in args.sizes.split(",")):
        for fmt in ("JPEG", "PNG"):
            worst_px = worst_p = 0.0
            same = 0
            for photo in real_photos():
                w, h = photo.image.size
                s = short / min(w, h)
                big = np.asarray(photo.image.resize((round(w * s), round(h * s)),
                                                    Image.Resampling.BICUBIC), np.float32)
                big = big + rng.normal(0, args.noise, big.shape) if args.noise else big
                buf = io.BytesIO()
                Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(
                    buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
                data = buf.getvalue()
                want = reference(Image.open(io.BytesIO(data)).convert("RGB"))
                img = imaging.load(data, max_pixels=10**9, min_side=256, gap=gap)
                got = torch.from_numpy(preprocess_array(img, 256, 224, IMAGENET_MEAN,
                                                        IMAGENET_STD))
                worst_px = max(worst_px, float((got - want).abs().max()) * 0.229 * 255)
                with torch.inference_mode():
                    p_want, p_got = model(torch.stack([want, got])).softmax(1)
                worst_p = max(worst_p, float((p_want - p_got).abs().max()))
                same += int(p_want.argmax() == p_got.argmax())
            print(f"shorter side {short:5d} {fmt:4s} decoded at 1/{img.info['scale']}: "
                  f"max |pixel| {worst_px:5.1f}  max |p| {worst_p:.4f}  "
                  f"top-1 same {same}/{len(real_photos())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
