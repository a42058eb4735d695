"""Labelled image folders on disk -> train / val / test samples.

Two layouts are understood (torchvision ``ImageFolder`` conventions: one folder per class,
named after the class, images anywhere below it):

* ``DATA/train/<class>/...``, ``DATA/val/<class>/...`` and optionally ``DATA/test/<class>/...``
  -- the splits the user made;
* ``DATA/<class>/...`` -- then every class is split 70/15/15 into train/val/test,
  stratified (per class), with a fixed seed, so the same folders give the same split,
  and by *bursts*: pictures taken together (within 2 s of each other, by their file
  times) stay in the same part, so a model is never tested on near-copies of what it
  trained on (``webapp.training.bursts``).

Every file is checked with the server's own decoder (``webapp.imaging``: same format
allow-list, pixel limit, EXIF and mode handling).  Files that cannot be used are skipped
and counted, with the reason; a layout that cannot be trained (no folder, fewer than two
classes, a class without a single usable image) is a ``DatasetError`` that says what to fix.

The loaders at the end feed the training loop: the augmented training images and the
evaluation images, preprocessed exactly as the server does.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from webapp import imaging
from webapp.checkpoints.preprocess import CROP_RATIO
from webapp.config import setting
from webapp.training import bursts as burst_split
from webapp.training.options import DEFAULT_FRACTIONS, FinetuneOptions, progress_bars
from webapp.training.transforms import ServingPreprocess, new_view, train_transform

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"val": ("val", "valid", "validation"), "test": ("test",), "train": ("train",)}


class DatasetError(ValueError):
    """The folders cannot be trained on; the message says why and what to do."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class Skipped:
    path: Path
    reason: str


@dataclass
class DatasetSplits:
    """What ``scan`` found: class names (sorted), samples per split, files skipped."""

    root: Path
    layout: str  # "split-folders" | "class-folders"
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    split_seed: int | None = None  # set when we made the split
    fractions: tuple[float, float, float] | None = None
    notes: list[str] = field(default_factory=list)  # things the user should hear about
    # When we made the split: how the file times were read (``bursts.MODES``) and, per
    # class, how many bursts its pictures form and whether its test pictures come from
    # bursts it is not trained on.
    burst_mode: str | None = None
    bursts: dict[str, dict] = field(default_factory=dict)

    @property
    def untested(self) -> list[str]:
        """Classes not tested on a burst they never trained on (too few bursts, or file
        times that show none)."""
        return [c for c, b in self.bursts.items() if not b["tested"]]

    def split(self, name: str) -> list[Sample]:
        return getattr(self, name)

    def counts(self, name: str) -> dict[str, int]:
        tally = Counter(s.label for s in self.split(name))
        return {c: tally.get(i, 0) for i, c in enumerate(self.classes)}

    def describe(self) -> dict:
        """JSON-friendly summary for the training report."""
        return {
            "root": str(self.root),
            "layout": self.layout,
            "classes": list(self.classes),
            "split_seed": self.split_seed,
            "split_fractions": list(self.fractions) if self.fractions else None,
            "counts": {name: self.counts(name) for name in SPLITS},
            "burst_mode": self.burst_mode,
            "bursts": {c: dict(b) for c, b in self.bursts.items()},
            "skipped_count": len(self.skipped),
            "skipped": [
                {"path": str(s.path), "reason": s.reason} for s in self.skipped[:100]
            ],
            "notes": list(self.notes),
        }


def max_image_pixels() -> int:
    """The server's MAX_IMAGE_PIXELS setting (same limit for training images)."""
    return setting("MAX_IMAGE_PIXELS")


def load_image(path: Path, *, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """Decode one file exactly as the server decodes an upload (RGB, upright)."""
    return imaging.load(path.read_bytes(), max_pixels=max_pixels, min_side=min_side)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name
    )


def _files_below(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return found


def _find_split_dir(root: Path, split: str) -> Path | None:
    for name in SPLIT_ALIASES[split]:
        if (root / name).is_dir():
            return root / name
    return None


def scan(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    check: Callable[[Path], None] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    bursts: str = "auto",
    burst_gap: float = burst_split.GAP_SECONDS,
) -> DatasetSplits:
    """Find the classes and images under ``root`` and split them (see module docstring).

    ``check(path)`` decodes a file and raises ``imaging.ImageError`` when it is unusable
    (default: the server's decoder at a small draft size); ``progress`` wraps the file
    iterable (e.g. ``tqdm``); ``bursts`` and ``burst_gap``: how file times group the
    pictures of class folders (``webapp.training.bursts``)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected a folder of class folders)")
    limit = max_image_pixels()
    check = check or (lambda p: load_image(p, max_pixels=limit, min_side=64))
    progress = progress or (lambda it: it)

    train_dir = _find_split_dir(root, "train")
    val_dir = _find_split_dir(root, "val")
    test_dir = _find_split_dir(root, "test")
    if train_dir or val_dir:
        if not train_dir:
            raise DatasetError(
                f"{root} has a {val_dir.name}/ folder but no train/ folder. Use either "
                "train/ val/ [test/] folders of class folders, or only class folders."
            )
        if not val_dir:
            raise DatasetError(
                f"{root} has a train/ folder but no val/ folder: the validation images "
                "decide when to stop and which epoch to keep. Add val/ (same class "
                "folders), or put the class folders directly in the folder to have them "
                "split 70/15/15 automatically."
            )
        return _scan_split_folders(root, train_dir, val_dir, test_dir, check, progress)
    return _scan_class_folders(root, seed, fractions, check, progress, bursts, burst_gap)


def _classes_of(folder: Path, where: str) -> list[str]:
    classes = [d.name for d in _class_dirs(folder)]
    if not classes:
        loose = [f.name for f in folder.iterdir() if f.is_file() and _visible(f)][:3]
        hint = f" (found files such as {', '.join(loose)} directly in it)" if loose else ""
        raise DatasetError(
            f"{where} contains no class folders{hint}. Put the images of each class in a "
            f"folder named after the class, e.g. {where}/cat/1.jpg, {where}/dog/2.jpg."
        )
    if len(classes) < 2:
        raise DatasetError(
            f"{where} has only one class folder ({classes[0]}); a classifier needs at "
            "least 2 classes."
        )
    return classes


def _usable_file(path: Path, check, skipped: list[Skipped]) -> bool:
    try:
        check(path)
    except imaging.ImageError as exc:
        skipped.append(Skipped(path, exc.message))
    except OSError as exc:  # unreadable: permissions, vanished, I/O error
        skipped.append(Skipped(path, f"could not be read ({exc.strerror or exc})"))
    else:
        return True
    return False


def _collect(folder: Path, classes: list[str], check, progress, skipped) -> dict[str, list]:
    """Usable files per class under ``folder/<class>`` (missing class folders -> [])."""
    listing = {c: _files_below(folder / c) if (folder / c).is_dir() else [] for c in classes}
    good: dict[str, list] = {c: [] for c in classes}
    pairs = [(cls, path) for cls in classes for path in listing[cls]]
    for cls, path in progress(pairs):
        if _usable_file(path, check, skipped):
            good[cls].append(path)
    return good


def _no_images_error(where: Path, cls: str, skipped: list[Skipped]) -> DatasetError:
    bad = [s for s in skipped if (where / cls) in s.path.parents]
    detail = (
        f" ({len(bad)} file(s) could not be used, e.g. {bad[0].path.name}: {bad[0].reason})"
        if bad
        else ""
    )
    return DatasetError(
        f"class '{cls}' has no usable images in {where / cls}{detail}. Add images or "
        "remove the folder."
    )


def _scan_split_folders(root, train_dir, val_dir, test_dir, check, progress) -> DatasetSplits:
    classes = _classes_of(train_dir, str(train_dir))
    notes = []
    for other in (val_dir, test_dir):
        if other is None:
            continue
        extra = sorted({d.name for d in _class_dirs(other)} - set(classes))
        if extra:
            raise DatasetError(
                f"{other} has class folder(s) that train/ does not have: {', '.join(extra)}. "
                "Every class must have training images."
            )
    skipped: list[Skipped] = []
    per_split = {}
    for name, folder in (("train", train_dir), ("val", val_dir), ("test", test_dir)):
        if folder is None:
            per_split[name] = []
            continue
        good = _collect(folder, classes, check, progress, skipped)
        for c in classes:
            if name == "train" and not good[c]:
                raise _no_images_error(folder, c, skipped)
            if name != "train" and not good[c]:
                notes.append(f"{folder.name}/ has no usable images of class '{c}'")
        per_split[name] = [
            Sample(p, i) for i, c in enumerate(classes) for p in good[c]
        ]
    if not per_split["val"]:
        raise DatasetError(f"{val_dir} contains no usable images.")
    if test_dir is None:
        notes.append("no test/ folder: the final evaluation is on the validation images")
    return DatasetSplits(
        root=root,
        layout="split-folders",
        classes=classes,
        train=per_split["train"],
        val=per_split["val"],
        test=per_split["test"],
        skipped=skipped,
        notes=notes,
    )


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """How many of a class's ``n`` images go to train, val, test.  Small classes still
    get one validation image (from 2 images) and one test image (from 3)."""
    _, f_val, f_test = fractions
    n_val = max(1 if n >= 2 else 0, math.floor(n * f_val + 0.5))  # 4.5 -> 5, not 4
    n_test = max(1 if n >= 3 else 0, math.floor(n * f_test + 0.5))
    return n - n_val - n_test, n_val, n_test


def _scan_class_folders(root, seed, fractions, check, progress, bursts, gap) -> DatasetSplits:
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise DatasetError(f"split fractions must be three numbers adding up to 1: {fractions}")
    if bursts not in burst_split.MODES:
        raise DatasetError(f"bursts must be one of {', '.join(burst_split.MODES)}")
    classes = _classes_of(root, str(root))
    skipped: list[Skipped] = []
    good = _collect(root, classes, check, progress, skipped)
    splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    how = {"off": "", "auto": ", keeping pictures taken within 2 s of each other together",
           "times": ", keeping each burst of pictures together"}[bursts]
    notes = [
        f"no train/ val/ folders: the images of each class were split "
        f"{round(fractions[0] * 100)}/{round(fractions[1] * 100)}/{round(fractions[2] * 100)} "
        f"into train/val/test (stratified{how}, seed {seed}; the same files give the same "
        "split)"
    ]
    groups = {}
    for label, cls in enumerate(classes):
        files = good[cls]
        if not files:
            raise _no_images_error(root, cls, skipped)
        part = burst_split.split(files, lambda n: split_counts(n, fractions),
                                 random.Random(f"{seed}:{cls}"), mode=bursts, gap=gap)
        if not part.val:
            notes.append(f"class '{cls}' has a single image: it is used for training only")
        groups[cls] = {"bursts": part.bursts, "by_burst": part.by_burst,
                       "tested": part.tested_on_new_bursts}
        splits["train"] += [Sample(p, label) for p in part.train]
        splits["val"] += [Sample(p, label) for p in part.val]
        splits["test"] += [Sample(p, label) for p in part.test]
    if bursts != "off":
        notes += burst_notes(groups)
    return DatasetSplits(
        root=root,
        layout="class-folders",
        classes=classes,
        skipped=skipped,
        split_seed=seed,
        fractions=tuple(fractions),
        notes=notes,
        burst_mode=bursts,
        bursts=groups,
        **splits,
    )


def _names(classes: list[str]) -> str:
    return ("class " if len(classes) == 1 else "classes ") + ", ".join(
        f"'{c}'" for c in classes)


def burst_notes(groups: dict[str, dict]) -> list[str]:
    """What the user should hear about classes that could not be split by bursts."""
    need = burst_split.MIN_BURSTS_TO_TEST
    unknown = [c for c, g in groups.items() if not g["by_burst"]]
    once = [c for c, g in groups.items() if g["by_burst"] and g["bursts"] == 1]
    few = [c for c, g in groups.items() if g["by_burst"] and 1 < g["bursts"] < need]
    notes = []
    if unknown:
        notes.append(f"the file times of {_names(unknown)} show no bursts (all within 2 s "
                     "of each other: copied together?), so their pictures were split one by "
                     "one; if some are near-copies of others, the test accuracy counts "
                     "pictures like those the model trained on")
    if once:
        notes.append(f"{_names(once)} {'was' if len(once) == 1 else 'were each'} taken in "
                     "one burst: no test pictures (they would be near-copies of training "
                     f"pictures); take pictures at {need - 1} other moments to test "
                     + ("it" if len(once) == 1 else "them"))
    if few:
        counts = " or ".join(sorted({str(groups[c]["bursts"]) for c in few}))
        notes.append(f"{_names(few)} {'has' if len(few) == 1 else 'have'} pictures from only "
                     f"{counts} bursts: {need} are needed to test a class on a burst it never "
                     "trained on, so " + ("it has" if len(few) == 1 else "they have")
                     + " no test pictures")
    return notes


class ImageSamples(torch.utils.data.Dataset):
    """A torch Dataset over ``samples``: decode with the server's decoder, then
    ``transform`` (PIL image -> tensor).  Returns ``(tensor, label)``."""

    def __init__(self, samples: list[Sample], transform, *, min_side: int | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.min_side = min_side
        self.max_pixels = max_image_pixels()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return self.transform(self.load(index)), self.samples[index].label

    def load(self, index: int) -> Image.Image:
        sample = self.samples[index]
        try:
            return load_image(sample.path, max_pixels=self.max_pixels, min_side=self.min_side)
        except (imaging.ImageError, OSError) as exc:
            # It decoded when the folders were scanned: it changed while training.
            raise DatasetError(f"{sample.path} can no longer be read: {exc}") from None

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]


class NewViews(ImageSamples):
    """``per_picture`` new views of each of ``samples`` (``transforms.new_view``: closer,
    farther, in a corner, turned, another light), then ``transform``; view ``n`` of the
    dataset is the same for the same ``seed``, whatever the number of loader workers."""

    def __init__(self, samples: list[Sample], per_picture: int, transform, *, seed: int,
                 min_side: int | None = None):
        super().__init__(samples, transform, min_side=min_side)
        self.per_picture, self.seed = per_picture, seed

    def __len__(self) -> int:
        return len(self.samples) * self.per_picture

    def __getitem__(self, index: int):
        picture = index // self.per_picture
        view = new_view(self.load(picture), random.Random(f"{self.seed}:{index}"))
        return self.transform(view), self.samples[picture].label


# --------------------------------------------------------------------------- loaders


def train_loader(samples, options, mean, std, device) -> torch.utils.data.DataLoader:
    dataset = ImageSamples(samples, train_transform(options, mean, std),
                           min_side=2 * options.image_size)
    generator = torch.Generator().manual_seed(options.seed)
    sampler = None
    if options.sampler == "weighted":
        labels = dataset.labels
        tally = torch.bincount(torch.tensor(labels))
        weights = (1.0 / tally.double())[torch.tensor(labels)]
        sampler = torch.utils.data.WeightedRandomSampler(
            weights, num_samples=len(labels), replacement=True, generator=generator
        )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=options.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=options.workers,
        pin_memory=device.type == "cuda",
        # A last batch of one image breaks batch norm in training mode.
        drop_last=len(dataset) % options.batch_size == 1 and len(dataset) > 1,
        persistent_workers=options.workers > 0,
    )


def eval_loader(samples, options, mean, std, device) -> torch.utils.data.DataLoader:
    preprocess = ServingPreprocess(options.image_size, mean, std)
    dataset = ImageSamples(samples, preprocess, min_side=round(options.image_size / CROP_RATIO))
    return torch.utils.data.DataLoader(
        dataset, batch_size=options.batch_size, shuffle=False,
        num_workers=options.workers, pin_memory=device.type == "cuda",
        persistent_workers=options.workers > 0,
    )



def views_loader(samples, per_picture, options, mean, std, device
                 ) -> torch.utils.data.DataLoader:
    """``NewViews`` of ``samples``, preprocessed as the server does (in order: the
    views of the first picture, then of the second, ...)."""
    preprocess = ServingPreprocess(options.image_size, mean, std)
    dataset = NewViews(samples, per_picture, preprocess, seed=options.seed,
                       min_side=2 * options.image_size)  # "closer" enlarges a part
    return torch.utils.data.DataLoader(
        dataset, batch_size=options.batch_size, shuffle=False,
        num_workers=options.workers, pin_memory=device.type == "cuda",
        persistent_workers=options.workers > 0,
    )


def load_splits(data, options: FinetuneOptions, say) -> DatasetSplits:
    if isinstance(data, DatasetSplits):
        splits = data
    else:
        bar = progress_bars(options, desc="checking images", unit="img")
        splits = scan(data, seed=options.seed, fractions=tuple(options.split),
                               progress=bar, bursts=options.bursts,
                               burst_gap=options.burst_gap)
    for note in splits.notes:
        say(f"Data: {note}.")
    if splits.skipped:
        examples = "; ".join(f"{s.path.name}: {s.reason}" for s in splits.skipped[:3])
        say(f"Data: skipped {len(splits.skipped)} file(s) that are not usable images "
            f"(e.g. {examples}); the report lists them.")
    if not splits.train or not splits.val:
        raise DatasetError(
            f"{splits.root}: too few images to train and validate ({len(splits.train)} for "
            f"training, {len(splits.val)} for validation); every class needs at least 2."
        )
    counts = splits.counts("train")
    say(f"Data: {len(splits.classes)} classes; train/val/test images: {len(splits.train)}/"
        f"{len(splits.val)}/{len(splits.test)}; training images per class: "
        + ", ".join(f"{c} {n}" for c, n in counts.items()) + ".")
    return splits

