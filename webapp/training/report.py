"""What a training run reports: classification metrics (confusion matrix, per-class
precision / recall / F1) computed with torch, the JSON report, and two PNGs drawn with
matplotlib's object API (no pyplot global state, so it is safe in a background thread):
the confusion matrix and the loss / accuracy curves per epoch."""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import torch

from webapp import durable
from webapp.messages import Message, catalog_gettext, render
from webapp.training.caveat import MIN_SUPPORT
from webapp.training.caveat import facts as caveat_facts
from webapp.training.caveat import message as caveat_message

log = logging.getLogger(__name__)



def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int):
    """``cm[t][p]`` = how many images of true class ``t`` were predicted as ``p``."""
    targets = targets.long().flatten()
    predictions = predictions.long().flatten()
    flat = torch.bincount(targets * num_classes + predictions, minlength=num_classes**2)
    return flat.reshape(num_classes, num_classes)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def classification_metrics(cm: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy, per-class precision / recall / F1 / support and their macro and
    support-weighted averages, from a confusion matrix (a class never predicted has
    precision 0, like scikit-learn's ``zero_division=0``)."""
    cm = cm.double()
    true_pos = cm.diag()
    support = cm.sum(dim=1)
    predicted = cm.sum(dim=0)
    per_class = {}
    for i, name in enumerate(classes):
        precision = _ratio(true_pos[i], predicted[i])
        recall = _ratio(true_pos[i], support[i])
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class[name] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": int(support[i]),
        }
    total = float(support.sum())
    present = [c for c in classes if per_class[c]["support"] > 0] or classes

    def macro(key):
        return round(sum(per_class[c][key] for c in present) / len(present), 4)

    def weighted(key):
        return round(
            _ratio(sum(per_class[c][key] * per_class[c]["support"] for c in classes), total),
            4,
        )

    return {
        "accuracy": round(_ratio(true_pos.sum(), total), 4),
        "images": int(total),
        # Classes the scores say little about (name -> images): see ``headline``.
        "thin_classes": {c: v["support"] for c, v in per_class.items()
                         if v["support"] < MIN_SUPPORT},
        "per_class": per_class,
        "macro_avg": {k: macro(k) for k in ("precision", "recall", "f1")},
        "weighted_avg": {k: weighted(k) for k in ("precision", "recall", "f1")},
        "confusion_matrix": cm.long().tolist(),
    }


def caveat(evaluation: dict) -> Message | None:
    """What the evaluation could not measure, in words, or None (``webapp.training.
    caveat``: the same for a model's metrics, in a web worker)."""
    return caveat_message(caveat_facts(evaluation))


def headline(evaluation: dict) -> str:
    """The line that sums up an evaluation: accuracy and macro F1, and what they cannot
    vouch for (``caveat``) instead of a bare "accuracy 1.000, macro F1 1.000"."""
    name = "Test" if evaluation["split"] == "test" else "Validation (no test images)"
    text = (f"{name}: accuracy {evaluation['accuracy']:.3f}, macro F1 "
            f"{evaluation['macro_avg']['f1']:.3f} on {evaluation['images']} images")
    warning = caveat(evaluation)
    return text + (f", but {warning}." if warning else ".")


def write_json(path: Path, report: dict) -> Path:
    durable.write_json(path, report, default=str)
    return path


# Fonts for the text of the pictures, tried glyph by glyph (matplotlib's font fallback):
# its own DejaVu Sans first, then whichever of these fonts for Chinese, Japanese and Korean
# the machine has (fonts-noto-cjk on Debian: `make system-deps`, the Dockerfile).
CJK_FONT_FILES = ("NotoSansCJK", "NotoSerifCJK", "SourceHanSans", "wqy-zenhei", "wqy-microhei",
                  "DroidSansFallback", "uming", "ukai")


# One font file may hold a face per region (Noto Sans CJK: JP, KR, SC, TC, HK); the same
# character is drawn a little differently in each, so Simplified Chinese comes first.
_REGIONS = ("SC", "CN", "TC", "HK", "TW", "JP", "KR")


def _font_order(name: str) -> tuple:
    words = name.split()
    region = next((i for i, r in enumerate(_REGIONS) if r in words), len(_REGIONS))
    return ("Mono" in words, "Serif" in name, region, name)


@functools.lru_cache(maxsize=1)
def font_families() -> tuple[str, ...]:
    """DejaVu Sans, then every CJK font found on the machine (sans serif first,
    Simplified Chinese first), as font families.  The fonts are added to matplotlib's
    list by their files: its cached list of the machine's fonts is made once and knows
    nothing of a font installed since (Chinese class names were drawn as boxes on a
    machine that had the fonts)."""
    from matplotlib import font_manager

    found = set()
    for path in sorted(font_manager.findSystemFonts()):
        if not any(marker.lower() in Path(path).name.lower() for marker in CJK_FONT_FILES):
            continue
        if not any(f.fname == path for f in font_manager.fontManager.ttflist):
            try:
                font_manager.fontManager.addfont(path)  # every face of a collection
            except (OSError, RuntimeError, ValueError) as exc:
                log.warning("font %s cannot be used: %s", path, exc)
                continue
        found.update(f.name for f in font_manager.fontManager.ttflist if f.fname == path)
    if not found:
        log.info("no font for Chinese, Japanese or Korean on this machine (Debian: "
                 "fonts-noto-cjk): such class names would be drawn as boxes")
    return ("DejaVu Sans", *sorted(found, key=_font_order))


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _drawing():
    """The settings every picture is drawn with: the fonts above."""
    import matplotlib

    return matplotlib.rc_context({"font.family": list(font_families())})


def plot_confusion_matrix(path: Path, cm: list[list[int]], classes: list[str], title: str,
                          language: str | None = None):
    """Rows = true class, columns = predicted; colour = share of the row, text = count.
    Its words in ``language`` (a locale; None: English)."""
    words = functools.partial(render, gettext=catalog_gettext(language))
    n = len(classes)
    side = min(4 + 0.45 * n, 24)
    with _drawing():
        fig = _figure(side + 1, side)
        ax = fig.add_subplot()
        counts = torch.tensor(cm, dtype=torch.float64)
        rows = counts.sum(dim=1, keepdim=True).clamp(min=1)
        shares = (counts / rows).numpy()
        image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                     label=words(Message("share of the true class")))
        ax.set_xticks(range(n), labels=classes, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(n), labels=classes)
        ax.set_xlabel(words(Message("predicted class")))
        ax.set_ylabel(words(Message("true class")))
        ax.set_title(words(title))
        if n <= 30:
            for t in range(n):
                for p in range(n):
                    ax.text(
                        p, t, str(int(counts[t, p])), ha="center", va="center", fontsize=9,
                        color="white" if shares[t, p] > 0.5 else "black",
                    )
        fig.savefig(path, format="png")
    return path


def plot_curves(path: Path, epochs: list[dict], best_epoch: int | None, title: str,
                language: str | None = None):
    """Loss and accuracy per epoch, train and validation, with the kept epoch marked.
    Its words in ``language`` (a locale; None: English)."""
    words = functools.partial(render, gettext=catalog_gettext(language))
    with _drawing():
        fig = _figure(10, 4)
        loss_ax, acc_ax = fig.subplots(1, 2)
        xs = [e["epoch"] for e in epochs]
        for ax, key, label in ((loss_ax, "loss", Message("loss")),
                               (acc_ax, "acc", Message("accuracy"))):
            for split, style, name in (("train", "o-", Message("train")),
                                       ("val", "s-", Message("val"))):
                ys = [e.get(f"{split}_{key}") for e in epochs]
                ys = [math.nan if y is None else y for y in ys]
                ax.plot(xs, ys, style, label=words(name), markersize=4)
            if best_epoch is not None:
                ax.axvline(best_epoch, color="grey", linestyle="--", label=words(Message(
                    "kept (epoch %(epoch)s)", epoch=best_epoch)))
            ax.set_xlabel(words(Message("epoch")))
            ax.set_ylabel(words(label))
            ax.grid(True, alpha=0.3)
            if xs:
                ax.set_xticks(xs if len(xs) <= 20 else xs[:: max(1, len(xs) // 10)])
        loss_ax.set_title(words(Message(
            "loss (train: on augmented images, with label smoothing)")), fontsize=9)
        acc_ax.set_title(words(Message("accuracy")), fontsize=9)
        acc_ax.set_ylim(-0.02, 1.02)
        loss_ax.legend()
        fig.suptitle(words(title))
        fig.savefig(path, format="png")
    return path
