"""The names a Teach dataset is made of, checked before any of them becomes a path: the
dataset's name (what the teacher typed, in any script) and its id (a safe slug, the
folder and the address), its class names (what the model will answer, in any script,
typed with any of the separators people use) and when a picture was taken; and the one
error every dataset operation raises."""

from __future__ import annotations

import math
import re
import time
import unicodedata

from webapp.checkpoints.labels import NAME_SEPARATORS, split_names
from webapp.messages import Message

MAX_CLASSES = 50
MAX_CLASS_NAME = 40
MAX_DATASET_NAME = 48
_DATASET_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_FORBIDDEN_IN_CLASS = set('/\\<>:"|?*')  # path separators, and what Windows refuses
# Names Windows keeps for devices, whatever the extension: an exported dataset with a
# class folder "CON" or "nul.txt" cannot be unzipped there.
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                    *(f"{port}{n}" for port in ("COM", "LPT") for n in "123456789¹²³")}
EARLIEST_TAKEN = 946684800.0  # 2000-01-01: older camera times are clocks never set


class DatasetStoreError(Exception):
    """Something the caller asked for cannot be done; ``status`` is the HTTP status."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def suggest_slug(raw: str) -> str:
    """``"Pens & Cups!"`` -> ``"pens-cups"``; a name without Latin letters or digits
    (第一课) -> ``"dataset"``: the id of a dataset (its folder and address)."""
    text = unicodedata.normalize("NFKD", raw or "").encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-_")
    return slug[:MAX_DATASET_NAME - 4].rstrip("-_") or "dataset"


def check_display_name(raw) -> str:
    """A dataset's name as the teacher typed it, in any script: up to 48 characters, no
    control characters (it is shown, never used as a path: the id is)."""
    if not isinstance(raw, str) or not raw.strip():
        raise DatasetStoreError(400, "bad_name", Message(
            "Give the dataset a name, e.g. 'pens and cups'."))
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    if any(unicodedata.category(ch).startswith("C") for ch in raw.strip()):
        raise DatasetStoreError(400, "bad_name", Message(
            "The dataset name %(name)s is not accepted: it contains control characters.",
            name=repr(name[:60])))
    if len(name) > MAX_DATASET_NAME:
        raise DatasetStoreError(400, "bad_name", Message(
            "The dataset name is %(length)s characters long; at most %(limit)s.",
            length=len(name), limit=MAX_DATASET_NAME))
    return name


def is_dataset_name(name) -> bool:
    """Whether ``name`` could be a dataset's folder (for names read back from disk or a
    URL: no message, just yes or no)."""
    return isinstance(name, str) and len(name) <= MAX_DATASET_NAME \
        and bool(_DATASET_RE.match(name))


def is_windows_device(name: str) -> bool:
    """Whether Windows keeps ``name`` for a device (CON, NUL, COM1 ...): no file or
    folder may have it there."""
    return name.split(".")[0].rstrip().upper() in _WINDOWS_DEVICES


def check_class_name(raw) -> str:
    """A class name is what the model will answer: up to 40 characters, any language,
    no path characters, no control characters, no leading or trailing dot, no name
    Windows keeps for a device (an export must unzip everywhere)."""
    if not isinstance(raw, str):
        raise DatasetStoreError(400, "bad_class", Message(
            "A class name must be text, e.g. 'pen'."))
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    problem = None
    if not name:
        problem = Message("it is empty")
    elif len(name) > MAX_CLASS_NAME:
        problem = Message("it is %(length)s characters long (at most %(limit)s)",
                          length=len(name), limit=MAX_CLASS_NAME)
    elif any(unicodedata.category(ch).startswith("C") for ch in name):
        problem = Message("it contains control characters")
    elif NAME_SEPARATORS.search(name):
        problem = Message("it contains , ， 、 ; or ； (they separate class names)")
    elif _FORBIDDEN_IN_CLASS & set(name) or name.startswith(".") or ".." in name:
        problem = Message("it contains / \\ < > : \" | ? * .. or starts with a dot")
    elif is_windows_device(name) or name.endswith("."):
        problem = Message("Windows cannot make a folder of that name (a device name such as "
                          "CON or NUL, or a dot at the end), so an exported dataset would "
                          "not unzip")
    if problem:
        raise DatasetStoreError(400, "bad_class", Message(
            "The class name %(name)s is not accepted: %(problem)s. Use a short label such "
            "as 'pen' or 'red cup'.", name=repr(name[:60]), problem=problem))
    return name


def check_classes(raw) -> list[str]:
    """Class names from a list, or from one typed field (``split_names``: one a line, or
    all on one line separated by , ， 、 ; ；)."""
    if isinstance(raw, str):
        raw = split_names(raw)
    if not isinstance(raw, list | tuple):
        raise DatasetStoreError(400, "bad_class", Message(
            'Send the classes as a list of names, e.g. ["pen", "cup"].'))
    classes = [check_class_name(c) for c in raw if not (isinstance(c, str) and not c.strip())]
    if len(classes) > MAX_CLASSES:
        raise DatasetStoreError(400, "too_many_classes", Message(
            "%(count)s classes; at most %(limit)s.", count=len(classes), limit=MAX_CLASSES))
    seen: dict[str, str] = {}
    for c in classes:
        key = c.casefold()
        if key in seen:
            raise DatasetStoreError(400, "duplicate_class", Message(
                "The class %(name)s is given twice (names differing only in case count as "
                "the same).", name=repr(c)))
        seen[key] = c
    return classes


def check_taken(raw) -> float | None:
    """When a picture was taken, as the Teach page sends it: milliseconds since 1970 (a
    JavaScript time), or nothing.  Seconds since 1970, or a 400 naming the field."""
    if raw is None or raw == "":
        return None
    try:
        seconds = float(raw) / 1000
    except (TypeError, ValueError):
        seconds = math.nan
    if not EARLIEST_TAKEN <= seconds <= time.time() + 86400:
        raise DatasetStoreError(400, "bad_taken", Message(
            "'taken' is when the picture was taken, in milliseconds since 1970 "
            "(JavaScript's Date.now()), and not in the future; leave it out to use the time "
            "of the upload."))
    return seconds
