"""What the person uploading a file says about it (class names, architecture,
preprocessing), parsed and checked, and how it must agree with what the file says."""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass

from webapp.checkpoints.architectures import (
    ACTIVATIONS,
    supported_archs,
    unsupported_arch_message,
)
from webapp.checkpoints.labels import (
    CLASSES_FIELD,
    ENCODING_NAMES,
    LABELS_FILE,
    class_names,
    parse_classes_field,
    parse_labels_file,
    read_labels_file,
)
from webapp.checkpoints.loaded import ModelLoadError
from webapp.messages import Message


@dataclass
class Given:
    """What the person uploading said about the file (all optional): class names from
    the ``classes`` field and/or a labels file, the architecture, the preprocessing."""

    classes: list[str] | None = None
    classes_from: str | None = None
    arch: str | None = None
    input_size: int | None = None
    mean: tuple | None = None
    std: tuple | None = None
    activation: str | None = None  # a Sequential head's layers without weights
    ema: bool | None = None  # a file with EMA weights: use them (None: yes)

    @classmethod
    def parse(cls, what: str, *, classes=None, labels=None, arch=None, input_size=None,
              mean=None, std=None, activation=None, ema=None) -> Given:
        """``classes``: the field's text or a list; ``labels``: a labels file's bytes
        (or ``{"base64": ...}`` of them, as a child process gets them) or text;
        ``arch``: a name, or ``auto``/empty/None for "find out"; ``activation``: what
        the layers without weights of a Sequential head are (``relu``, the default, or
        ``gelu``); ``ema``: yes/no, use a file's EMA weights (default yes)."""
        from_field = from_file = None
        file_from = LABELS_FILE
        if isinstance(labels, dict) and isinstance(labels.get("base64"), str):
            labels = base64.b64decode(labels["base64"])
        if isinstance(classes, list | tuple):
            from_field = class_names(list(classes), CLASSES_FIELD, what)
        elif isinstance(classes, str) and classes.strip():
            from_field = parse_classes_field(classes, what)
        if isinstance(labels, bytes) and labels.strip():
            from_file, encoding = read_labels_file(labels, what)
            if encoding in ENCODING_NAMES:  # said, so a misread file is noticed
                file_from = Message("the labels file (read as %(encoding)s)",
                                    encoding=ENCODING_NAMES[encoding])
        elif isinstance(labels, str) and labels.strip():
            from_file = parse_labels_file(labels, what)
        if from_field and from_file and from_field != from_file:
            raise ModelLoadError(Message(
                "%(what)s: the classes field (%(field)s) and the labels file (%(file)s) name "
                "different classes; send one of them", what=what,
                field=_shorten(from_field), file=_shorten(from_file)))
        arch = str(arch or "").strip()
        if arch in ("", "auto"):
            arch = None
        elif arch not in supported_archs() and arch != "onnx":
            raise ModelLoadError(Message("%(what)s: %(reason)s", what=what,
                                         reason=unsupported_arch_message(arch)))
        activation = str(activation or "").strip().lower() or None
        if activation not in (None, *ACTIVATIONS):
            raise ModelLoadError(Message("%(what)s: 'activation' must be one of %(choices)s, "
                                         "not %(value)s", what=what,
                                         choices=", ".join(ACTIVATIONS),
                                         value=repr(activation)))
        return cls(
            activation=activation, ema=parse_yes_no(ema, "ema", what),
            classes=from_field or from_file,
            classes_from=(CLASSES_FIELD if from_field else
                          file_from if from_file else None),
            arch=arch,
            input_size=None if input_size in (None, "") else parse_input_size(input_size, what),
            mean=vec3(mean, None, "mean", what),
            std=vec3(std, None, "std", what),
        )


def parse_yes_no(value, key: str, what: str) -> bool | None:
    """A yes/no field (``1``, ``yes``, ``true``, ``on`` / ``0``, ``no``, ...); None when
    empty."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if not text:
        return None
    if text in ("1", "yes", "true", "on"):
        return True
    if text in ("0", "no", "false", "off"):
        return False
    raise ModelLoadError(Message("%(what)s: %(key)s must be yes or no, not %(value)s",
                                 what=what, key=repr(key), value=repr(value)))


def _shorten(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)})" if len(names) > limit else "")


def parse_input_size(value, what: str) -> int:
    try:
        size = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        size = 0
    if isinstance(value, bool) or not 16 <= size <= 1024:
        raise ModelLoadError(Message("%(what)s: 'input_size' must be an integer from 16 to "
                                     "1024", what=what))
    return size


def vec3(value, default, key: str, what: str):
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value.strip().strip("[]()")) if v]
    try:
        vec = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        vec = ()
    if len(vec) != 3 or not all(math.isfinite(x) for x in vec) or (
            key == "std" and min(vec) <= 0):
        raise ModelLoadError(
            Message("%(what)s: %(key)s must be three numbers greater than 0", what=what,
                    key=repr(key)) if key == "std" else
            Message("%(what)s: %(key)s must be three numbers", what=what, key=repr(key)))
    return vec


def agree(key: str, given, found, default, given_from: str, what: str):
    """The value of ``key``: what the file says, what the person said (they must agree
    when both speak), else ``default``."""
    if given is not None and found is not None and given != found:
        shown = (_shorten(given), _shorten(found)) if key == "classes" else (given, found)
        raise ModelLoadError(Message(
            "%(what)s: %(given_from)s says %(key)s %(given)s but the file says %(found)s; "
            "leave the field empty to use the file's, or fix the one that is wrong",
            what=what, given_from=given_from, key=key, given=shown[0], found=shown[1]))
    return given if given is not None else found if found is not None else default
