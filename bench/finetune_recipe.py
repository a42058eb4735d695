"""Fine-tuning recipe, measured in one run: each strategy (and batch-norm statistics frozen
vs updated) on the same drawn-shapes dataset from the bundled pretrained EfficientNet-Lite0,
a fixed number of epochs without early stopping.  Prints validation loss / accuracy and
seconds per epoch as a ratio to ``--strategy head``.

    python -m bench.finetune_recipe [--per-class 30] [--epochs 8] [--image-size 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from testkit.shapes import make_dataset
from webapp.training import data, recipe
from webapp.training.options import FinetuneOptions

VARIANTS = (
    ("head", dict(strategy="head")),
    ("full", dict(strategy="full")),
    ("full, BN stats updated", dict(strategy="full", update_bn_stats=True)),
    ("progressive", dict(strategy="progressive")),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_dataset(Path(tmp) / "shapes", args.per_class, seed=11, size=96)
        splits = data.scan(root)
        rows = []
        for name, overrides in VARIANTS:
            options = FinetuneOptions(
                epochs=args.epochs, patience=0, image_size=args.image_size, batch_size=16,
                **overrides,
            )
            result = recipe.train(splits, Path(tmp) / f"{len(rows)}.pt", options,
                                    say=lambda _m: None)
            report = result.report
            per_epoch = sum(e["seconds"] for e in report["epochs"]) / report["epochs_run"]
            last = report["epochs"][-1]
            rows.append((name, per_epoch, report["val"], last, report["test_accuracy"]))
    base = rows[0][1]
    print(f"{len(splits.train)} training images, {args.image_size}px, {args.epochs} epochs")
    print(f"{'variant':<24} {'s/epoch':>8} {'× head':>7} {'best val loss':>14} "
          f"{'last val loss':>14} {'val acc':>8} {'test acc':>9}")
    for name, per_epoch, best, last, test_acc in rows:
        print(f"{name:<24} {per_epoch:8.2f} {per_epoch / base:7.2f} {best['loss']:14.4f} "
              f"{last['val_loss']:14.4f} {best['accuracy']:8.3f} {test_acc:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
