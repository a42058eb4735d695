"""Bursts: pictures of one class taken together, kept together when a dataset is split.

Holding the Teach page's capture button takes about four pictures a second of the same
thing from the same place: near-copies of each other.  A model tested on one of them after
training on its neighbours is tested on what it has seen, and its "accuracy on pictures it
never trained on" says nothing.  So a dataset is split by *bursts*, not by pictures:

* a burst is the pictures of one class whose times are within ``GAP_SECONDS`` (2 s) of
  the one before (the time of a file is its modification time: the Teach page's store sets
  it to the moment the capture button was pressed -- the same for every picture of one
  hold -- or to a dropped file's own time; a zip import keeps its members' times; for a
  folder of your own, it is when the files were written);
* the test pictures of a class come from bursts none of whose pictures is trained on,
  and so do its validation pictures when the class has two bursts or more; a class needs
  ``MIN_BURSTS_TO_TEST`` bursts (one to train on, one to validate with, one to test) to
  be tested at all.

How the times are read (``MODES``):

* ``times`` -- trust them (Teach datasets: the store wrote them);
* ``auto`` -- trust them where they show bursts: a class whose files all fall into one
  burst is taken as files copied together (their times say nothing), and split picture by
  picture as before (the command line's default);
* ``off`` -- every picture on its own.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

GAP_SECONDS = 2.0
MIN_BURSTS_TO_TEST = 3
MODES = ("auto", "times", "off")


def taken(path: Path) -> float:
    """When the picture was taken, as far as the file says (its modification time)."""
    return os.stat(path).st_mtime


def group(paths: Sequence[Path], gap: float = GAP_SECONDS) -> list[list[Path]]:
    """``paths`` in bursts, oldest first: a new burst starts where a picture was taken more
    than ``gap`` seconds after the one before it (``gap`` 0 or less: one burst per
    picture)."""
    if gap <= 0:
        return [[p] for p in sorted(paths)]
    timed = sorted((taken(p), p) for p in paths)
    bursts: list[list[Path]] = []
    last = -math.inf
    for when, path in timed:
        if when - last > gap or not bursts:
            bursts.append([])
        bursts[-1].append(path)
        last = when
    return bursts


@dataclass
class ClassSplit:
    """One class's pictures in train/val/test, and what the split could promise."""

    train: list[Path] = field(default_factory=list)
    val: list[Path] = field(default_factory=list)
    test: list[Path] = field(default_factory=list)
    bursts: int = 0  # how many bursts the class's pictures form (as counted)
    by_burst: bool = True  # False: split picture by picture (see ``split``)

    @property
    def tested_on_new_bursts(self) -> bool:
        return self.by_burst and bool(self.test)


def split(paths: Sequence[Path], counts, rng: random.Random, *, mode: str = "auto",
          gap: float = GAP_SECONDS) -> ClassSplit:
    """Split one class's pictures.  ``counts(n)`` gives how many of ``n`` items go to
    (train, val, test) (``data.split_counts``); ``rng`` shuffles the bursts.

    By bursts (``mode`` ``times``, or ``auto`` with two bursts or more): the bursts are
    shuffled, test bursts are taken from the end until the test share is reached, then
    validation bursts, the rest is trained on; the training part always keeps a burst,
    and there is no test burst below ``MIN_BURSTS_TO_TEST`` bursts.  A class whose
    pictures are all one burst is split picture by picture for training and validation
    (there is nothing else to validate on) and, under ``times``, gets no test pictures:
    they would be near-copies of its training pictures."""
    if mode not in MODES:
        raise ValueError(f"bursts must be one of {', '.join(MODES)}")
    bursts = group(paths, gap if mode != "off" else 0)
    if mode == "off" or (mode == "auto" and len(bursts) < 2):
        return _picture_by_picture(paths, counts, rng, len(bursts), mode == "off")
    if len(bursts) == 1:  # mode "times": one hold of the button
        result = _picture_by_picture(paths, counts, rng, 1, False)
        result.train += result.test
        result.test = []
        return result
    bursts = [sorted(b) for b in bursts]
    rng.shuffle(bursts)
    total = sum(len(b) for b in bursts)
    _, n_val, n_test = counts(total)
    result = ClassSplit(bursts=len(bursts))
    for part, wanted, keep in ((result.test, n_test, 2), (result.val, n_val, 1)):
        if part is result.test and len(bursts) < MIN_BURSTS_TO_TEST:
            continue
        while bursts and len(bursts) > keep and len(part) < max(1, wanted):
            part.extend(bursts.pop())
    result.train = [p for b in bursts for p in b]
    return result


def _picture_by_picture(paths, counts, rng, bursts: int, off: bool) -> ClassSplit:
    files = sorted(paths)
    rng.shuffle(files)
    n_train, n_val, _ = counts(len(files))
    return ClassSplit(files[:n_train], files[n_train:n_train + n_val],
                      files[n_train + n_val:], bursts=len(files) if off else bursts,
                      by_burst=off)


def training_bursts(splits, gap: float = GAP_SECONDS) -> list[int] | None:
    """Per training picture of ``splits`` (a ``data.DatasetSplits`` we made), the number
    of its burst, for measuring each against the others (``engines.openset.fit_knn``);
    -1 for the pictures of a class with fewer than two training bursts, or split picture
    by picture because its times show none.  None when we did not split (train/ and val/
    folders of the user's own)."""
    if not splits.bursts:
        return None
    gap = 0 if splits.burst_mode == "off" else gap
    numbers = [-1] * len(splits.train)
    first = 0
    for label, name in enumerate(splits.classes):
        if not splits.bursts.get(name, {}).get("by_burst"):
            continue
        mine = [n for n, sample in enumerate(splits.train) if sample.label == label]
        bursts = group([splits.train[n].path for n in mine], gap)
        if len(bursts) < 2:
            continue
        which = {path: b for b, burst in enumerate(bursts) for path in burst}
        for n in mine:
            numbers[n] = first + which[splits.train[n].path]
        first += len(bursts)
    return numbers
