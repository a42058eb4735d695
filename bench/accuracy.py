"""Agreement with fp32 on real photos (the built-in ImageNet model: ResNet18 when its
weights are in the torchvision cache, else the bundled EfficientNet-Lite0): top-1
agreement and mean top-5 overlap per engine, on ~100 photos (testkit/photos.py and
deterministic variants).  Also how much JPEG draft decoding and the box reduction of
other formats change the scores.  Prints JSON.

    python -m bench.accuracy"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import warnings

from bench.photoset import photo_set

ENGINES = [("torch", "dynamic"), ("torch", "static"), ("onnxruntime", "none"),
           ("onnxruntime", "static"), ("openvino", "none"), ("openvino", "bf16"),
           ("openvino", "static")]


def agreement(logits, reference) -> dict:
    top1 = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
    a, b = logits.topk(5, 1).indices.tolist(), reference.topk(5, 1).indices.tolist()
    overlap = sum(len(set(x) & set(y)) for x, y in zip(a, b)) / (5 * len(a))
    return {"top1_agreement": top1, "top5_overlap": overlap, "n": len(a)}


def served(loaded, engine: str, mode: str, cache_dir: str):
    from webapp.engines import EngineSettings, build
    from webapp.serving.classifier import Classifier

    settings = EngineSettings(engine=engine, quantize=mode, cache_dir=cache_dir, threads=2)
    return Classifier(*build.serve_loaded(loaded, settings))


def engines_agreement(loaded, cache_dir: str) -> dict:
    import numpy as np
    import torch

    classifier = served(loaded, "openvino", "none", cache_dir)
    photos = photo_set()
    batch = np.stack([classifier.preprocess(img) for _, img in photos])
    with torch.inference_mode():
        reference = loaded.module(torch.from_numpy(batch))
    out = {}
    for engine, mode in ENGINES:
        try:
            run = served(loaded, engine, mode, cache_dir).run
            logits = torch.from_numpy(np.concatenate([run(batch[i:i + 16])[0]
                                                      for i in range(0, len(batch), 16)]))
        except Exception as exc:  # e.g. bf16 on a CPU without it
            out[f"{engine} {mode}"] = {"error": str(exc).strip().splitlines()[-1][:160]}
            continue
        out[f"{engine} {mode}"] = agreement(logits, reference)
    # For scale: fp32 itself, on the same photos saved once as JPEG quality 85.
    from PIL import Image

    def jpeg(img):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    recoded = torch.from_numpy(np.stack([classifier.preprocess(jpeg(img)) for _, img in photos]))
    with torch.inference_mode():
        out["fp32 on the photos re-saved as JPEG q85"] = agreement(loaded.module(recoded),
                                                                   reference)
    return out


def decoding_drift(loaded, cache_dir: str) -> dict:
    """Each photo upscaled to 12 MP (4000×3000-ish), saved as JPEG and PNG, decoded the
    server's way (draft / reduce) vs decoded in full; same classifier."""
    import numpy as np
    from PIL import Image

    from testkit.photos import real_photos
    from webapp import imaging
    from webapp.scores import softmax

    classifier = served(loaded, "openvino", "none", cache_dir)
    rows = {"JPEG (draft)": [], "PNG (reduce)": []}
    for photo in real_photos():
        img = photo.image
        scale = (12e6 / (img.width * img.height)) ** 0.5
        big = img.resize((round(img.width * scale), round(img.height * scale)),
                         Image.Resampling.BICUBIC)
        for fmt, key in (("JPEG", "JPEG (draft)"), ("PNG", "PNG (reduce)")):
            buf = io.BytesIO()
            big.save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {"compress_level": 1}))
            data = buf.getvalue()
            fast = imaging.load(data, max_pixels=10**9, min_side=classifier.resize_size)
            full = imaging.load(data, max_pixels=10**9)
            batch = np.stack([classifier.preprocess(fast), classifier.preprocess(full)])
            probs = softmax(classifier.run(batch)[0])
            rows[key].append({
                "photo": photo.name, "decoded": list(fast.size), "full": list(full.size),
                "same_top1": bool(probs[0].argmax() == probs[1].argmax()),
                "max_score_drift": float(np.abs(probs[0] - probs[1]).max()),
            })
    return {key: {"same_top1": sum(r["same_top1"] for r in v), "n": len(v),
                  "max_score_drift": max(r["max_score_drift"] for r in v), "rows": v}
            for key, v in rows.items()}


def main() -> None:
    warnings.simplefilter("ignore")
    cache_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="bench-acc-")
    import model_loader

    loaded = model_loader.load_imagenet_model()
    print(json.dumps({"model": loaded.name, "engines": engines_agreement(loaded, cache_dir),
                      "decoding": decoding_drift(loaded, cache_dir)}))


if __name__ == "__main__":
    main()
