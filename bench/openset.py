""""I'm not sure what this is", measured in one run on real photos.

For each small dataset, a class is taught the way the Teach page teaches it: holds of
the capture button (``testkit/holds.py``: four near-copies from one viewpoint per hold,
the webcam's 640x480) stored through the Teach page's store with the moment the button
was pressed, then trained by the Teach job's code (``finetune.train`` with
``jobs.TEACH_DEFAULTS``, the burst-keeping split) and served the way a worker serves it
(OpenVINO, the kNN criterion read from the engine cache).  Then:

* **kept**: share of fresh in-class pictures (new viewpoints of the taught photos, never
  trained on) answered with the right class and *not* unknown -- target >= 95 %;
* **new views**: share of pictures of the taught photos shown the way a teacher shows a
  taught object again, further from how it was taught (``testkit/holds.new_views``: closer,
  farther on a desk, in a corner, turned a quarter or half turn, another light) answered
  with the right class and not unknown -- target >= 90 %; also how many of them had the
  right class at all (``right``), and the rate per kind of view;
* **flagged**: share of unrelated real photos (every other photo the project has, from
  several viewpoints) answered unknown -- target >= 90 %.

And the same two figures for the built-in ImageNet model (its max-logit criterion): kept =
views of testkit/photos.py's photos not flagged (the photos are ImageNet things; "right
class" is not asked here), flagged = drawings, textures and noise (``testkit/holds.py``).

    python -m bench.openset [--views 12] [--new-views 20] [--holds 5]
                            [--quantize none|static] [--json]

Prints a table (and JSON with --json).  Training takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from testkit.holds import hold, new_views, not_photos, project_photos, views

# Two small datasets: the cat-and-mug class, and three things of a science room.
DATASETS = {
    "cat & mug": {"cat": "chelsea", "mug": "coffee"},
    "rocket, camera & motorbike": {"rocket": "rocket", "camera": "camera",
                                   "motorbike": "motorcycle"},
}


def jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def decoded(img):
    from PIL import Image

    return Image.open(io.BytesIO(jpeg(img))).convert("RGB")


def teach(base: Path, classes: dict[str, str], photos: dict, holds: int, rng):
    """The dataset captured through the Teach page's store, then trained as its job does;
    the checkpoint's path."""
    from webapp.stores.datasets import DatasetStore
    from webapp.training.jobs import TEACH_DEFAULTS
    from webapp.training.options import FinetuneOptions
    from webapp.training.recipe import train

    store = DatasetStore(base / "data")
    store.create("class", list(classes))
    pressed = time.time() - 3600
    for label, name in classes.items():
        for _ in range(holds):
            pressed += 30  # the next hold, half a minute later
            for frame in hold(photos[name], rng):
                store.add_image("class", label, jpeg(frame), pressed)
    data = base / "snapshot"
    store.snapshot("class", data)
    options = FinetuneOptions(**TEACH_DEFAULTS, workers=0)
    result = train(data, base / "class.pt", options, say=lambda _m: None)
    return result.checkpoint, result.report


def served(loaded, cache_dir: str, quantize: str = "none"):
    from webapp.engines import EngineSettings, build
    from webapp.serving.classifier import Classifier

    settings = EngineSettings(engine="openvino", quantize=quantize, cache_dir=cache_dir,
                              threads=2)
    return Classifier(*build.serve_loaded(loaded, settings))


def answers(classifier, images) -> list[tuple[str, bool]]:
    out = []
    for n in range(0, len(images), 16):
        preds, unknown, _ = classifier.answer([decoded(i) for i in images[n:n + 16]], 1)
        out += [(p[0].label, u) for p, u in zip(preds, unknown)]
    return out


def trained_rates(name: str, classes: dict[str, str], photos: dict, args, cache: str) -> dict:
    import model_loader

    rng = random.Random(f"openset:{name}")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, report = teach(Path(tmp), classes, photos, args.holds, rng)
        classifier = served(model_loader.load_checkpoint(checkpoint), cache)
    fresh = [(label, img) for label, photo in classes.items()
             for img in views(photos[photo], rng, args.views)]
    said = answers(classifier, [img for _, img in fresh])
    kept = sum(label == got and not unknown for (label, _), (got, unknown) in zip(fresh, said))
    shown = [(label, kind, img) for label, photo in classes.items()
             for kind, img in new_views(photos[photo], rng, args.new_views)]
    said_new = answers(classifier, [img for _, _, img in shown])
    by_kind: dict[str, list[bool]] = {}
    for (label, kind, _), (got, unknown) in zip(shown, said_new):
        by_kind.setdefault(kind, []).append(label == got and not unknown)
    others = [p for p in photos if p not in classes.values()]
    unrelated = [img for p in others for img in views(photos[p], rng, max(2, args.views // 3))]
    flagged = sum(unknown for _, unknown in answers(classifier, unrelated))
    criterion = classifier.openset.describe() if classifier.openset else {}
    return {"dataset": name, "classes": list(classes),
            "training_pictures": sum(report["data"]["counts"]["train"].values()),
            "test_accuracy_on_unseen_bursts": report["test_accuracy"],
            "criterion": {k: criterion.get(k) for k in ("method", "k", "threshold")},
            "kept": kept / len(fresh), "kept_n": len(fresh),
            "new_views_kept": sum(map(sum, by_kind.values())) / len(shown),
            "new_views_n": len(shown),
            "new_views_right": sum(label == got for (label, _, _), (got, _) in
                                   zip(shown, said_new)) / len(shown),
            "new_views_by_kind": {k: sum(v) / len(v) for k, v in by_kind.items()},
            "flagged": flagged / len(unrelated), "flagged_n": len(unrelated),
            "unrelated_photos": others}


def builtin_rates(photos: dict, args, cache: str) -> dict:
    import model_loader
    from testkit.photos import real_photos

    rng = random.Random("openset:builtin")
    loaded = model_loader.load_imagenet_model()
    classifier = served(loaded, cache, args.quantize)
    own = [img for p in real_photos() for img in views(p.image, rng, args.views)]
    kept = sum(not unknown for _, unknown in answers(classifier, own))
    odd = not_photos(rng, 3 * args.views * 3)
    said = answers(classifier, [img for _, img in odd])
    by_kind: dict[str, list[bool]] = {}
    for (kind, _), (_, unknown) in zip(odd, said):
        by_kind.setdefault(kind, []).append(unknown)
    return {"dataset": f"built-in ({loaded.name})",
            "criterion": classifier.openset.describe() if classifier.openset else None,
            "kept": kept / len(own), "kept_n": len(own),
            "flagged": sum(u for _, u in said) / len(said), "flagged_n": len(said),
            "flagged_by_kind": {k: sum(v) / len(v) for k, v in by_kind.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=12,
                        help="fresh viewpoints of each taught photo")
    parser.add_argument("--new-views", type=int, default=20,
                        help="new views of each taught photo (closer, farther, ...)")
    parser.add_argument("--holds", type=int, default=5, help="holds of the button per class")
    parser.add_argument("--quantize", default="none", choices=("none", "static"),
                        help="the built-in model's network: fp32, or int8 as QUANTIZE=auto "
                        "serves it where its guard allows")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    photos = project_photos()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name, classes in DATASETS.items():
            rows.append(trained_rates(name, classes, photos, args, cache))
        rows.append(builtin_rates(photos, args, cache))
    if args.json:
        print(json.dumps(rows, indent=1))
    print(f"{'model':34} {'kept (>=95%)':>14} {'new views (>=90%)':>18} "
          f"{'flagged (>=90%)':>16}  criterion")
    for row in rows:
        c = row["criterion"] or {}
        new = (f"{row['new_views_kept']:>10.1%} of {row['new_views_n']:<3}"
               if "new_views_kept" in row else f"{'':>17}")
        print(f"{row['dataset']:34} {row['kept']:>8.1%} of {row['kept_n']:<3} {new} "
              f"{row['flagged']:>9.1%} of {row['flagged_n']:<3}  {c.get('method')} "
              f"threshold {c.get('threshold')}")
        if "new_views_by_kind" in row:
            print(f"{'':34} new views with the right class: {row['new_views_right']:.1%}; "
                  "kept by kind: " + ", ".join(f"{k} {v:.0%}" for k, v in
                                               row["new_views_by_kind"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
