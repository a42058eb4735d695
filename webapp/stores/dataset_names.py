"""The names a Teach dataset is made of, checked before any of them becomes a path: the
dataset's slug, its class names (what the model will answer) and when a picture was
taken; and the one error every dataset operation raises."""

from __future__ import annotations

import math
import re
import time
import unicodedata

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
    """``"Pens & Cups!"`` -> ``"pens-cups"`` (for the error message and the page)."""
    text = unicodedata.normalize("NFKD", raw or "").encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-_")
    return slug[:MAX_DATASET_NAME].rstrip("-_") or "my-dataset"


def is_dataset_name(name) -> bool:
    """Whether ``name`` could be a dataset's folder (for names read back from disk or a
    URL: no message, just yes or no)."""
    return isinstance(name, str) and len(name) <= MAX_DATASET_NAME \
        and bool(_DATASET_RE.match(name))


def check_dataset_name(raw) -> str:
    """A dataset name is a slug: lowercase letters, digits, ``-`` and ``_``, and not a name
    Windows keeps for a device (as for class names)."""
    if not isinstance(raw, str) or not raw.strip():
        raise DatasetStoreError(400, "bad_name", "Give the dataset a name, e.g. 'pens-and-cups'.")
    name = raw.strip()
    if len(name) > MAX_DATASET_NAME or not _DATASET_RE.match(name):
        raise DatasetStoreError(
            400, "bad_name", f"The dataset name {name[:60]!r} is not accepted: use up to "
            f"{MAX_DATASET_NAME} lowercase letters, digits, '-' and '_', starting with a "
            f"letter or digit, e.g. {suggest_slug(name)!r}.",
        )
    if name.upper() in _WINDOWS_DEVICES:
        raise DatasetStoreError(
            400, "bad_name", f"The dataset name {name!r} is not accepted: Windows keeps it "
            "for a device (like CON, NUL or COM1), so an exported dataset would not unzip "
            f"there. Use e.g. {name + '-pictures'!r}.",
        )
    return name


def check_class_name(raw) -> str:
    """A class name is what the model will answer: up to 40 characters, any language,
    no path characters, no control characters, no leading or trailing dot, no name
    Windows keeps for a device (an export must unzip everywhere)."""
    if not isinstance(raw, str):
        raise DatasetStoreError(400, "bad_class", "A class name must be text, e.g. 'pen'.")
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    problem = None
    if not name:
        problem = "it is empty"
    elif len(name) > MAX_CLASS_NAME:
        problem = f"it is {len(name)} characters long (at most {MAX_CLASS_NAME})"
    elif any(unicodedata.category(ch).startswith("C") for ch in name):
        problem = "it contains control characters"
    elif _FORBIDDEN_IN_CLASS & set(name) or name.startswith(".") or ".." in name:
        problem = "it contains / \\ < > : \" | ? * .. or starts with a dot"
    elif name.split(".")[0].rstrip().upper() in _WINDOWS_DEVICES or name.endswith("."):
        problem = ("Windows cannot make a folder of that name (a device name such as CON "
                   "or NUL, or a dot at the end), so an exported dataset would not unzip")
    if problem:
        raise DatasetStoreError(
            400, "bad_class", f"The class name {name[:60]!r} is not accepted: {problem}. "
            "Use a short label such as 'pen' or 'red cup'.",
        )
    return name


def check_classes(raw) -> list[str]:
    if isinstance(raw, str):
        raw = [c for c in raw.split(",")]
    if not isinstance(raw, list | tuple):
        raise DatasetStoreError(400, "bad_class", "Send the classes as a list of names, "
                                "e.g. [\"pen\", \"cup\"].")
    classes = [check_class_name(c) for c in raw if not (isinstance(c, str) and not c.strip())]
    if len(classes) > MAX_CLASSES:
        raise DatasetStoreError(400, "too_many_classes",
                                f"{len(classes)} classes; at most {MAX_CLASSES}.")
    seen: dict[str, str] = {}
    for c in classes:
        key = c.casefold()
        if key in seen:
            raise DatasetStoreError(400, "duplicate_class", f"The class {c!r} is given twice "
                                    f"(names differing only in case count as the same).")
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
        raise DatasetStoreError(400, "bad_taken", "'taken' is when the picture was taken, in "
                                "milliseconds since 1970 (JavaScript's Date.now()), and not "
                                "in the future; leave it out to use the time of the upload.")
    return seconds
