"""Class names: from a file's own fields, the ``classes`` form field or a labels file;
checked (at least two, no duplicates, no control characters) and put in output order."""

from __future__ import annotations

import json
import unicodedata

from webapp.checkpoints.loaded import ModelLoadError

# Where class names are kept: a list in output order, or a class_to_idx / idx_to_class map.
NAME_KEYS = ("classes", "class_names", "labels", "class_to_idx", "idx_to_class")


MAX_CLASS_NAME = 200


def class_names(value: object, source: str, what: str) -> list[str]:
    """Class names in output order from a list, a ``class_to_idx`` dict (name -> index)
    or an ``idx_to_class`` dict (index -> name); ``ModelLoadError`` naming ``source``
    when they are not usable."""
    names = value
    if isinstance(value, dict) and value:
        items = list(value.items())
        if all(isinstance(i, int) and not isinstance(i, bool) for _, i in items):
            by_index = {i: n for n, i in items}  # class_to_idx
        elif all(str(i).strip().isdigit() for i, _ in items):
            by_index = {int(str(i).strip()): n for i, n in items}  # idx_to_class
        else:
            raise ModelLoadError(f"{what}: {source} maps names to {items[0][1]!r}; expected "
                                 "indices (class_to_idx) or names by index (idx_to_class)")
        if sorted(by_index) != list(range(len(by_index))):
            raise ModelLoadError(f"{what}: the indices in {source} are not 0 to "
                                 f"{len(by_index) - 1}, each once")
        names = [by_index[i] for i in range(len(by_index))]
    if isinstance(names, tuple):
        names = list(names)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelLoadError(f"{what}: {source} must be a list of class names, a "
                             "class_to_idx or an idx_to_class mapping")
    names = [unicodedata.normalize("NFC", n).strip() for n in names]
    problem = None
    if len(names) < 2:
        problem = "must name at least two classes"
    elif not all(names):
        problem = "contains an empty name"
    elif any(len(n) > MAX_CLASS_NAME for n in names):
        problem = f"contains a name longer than {MAX_CLASS_NAME} characters"
    elif any(unicodedata.category(c).startswith("C") for n in names for c in n):
        problem = "contains control characters"
    elif len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        problem = f"contains duplicate names ({', '.join(dupes[:5])})"
    if problem:
        raise ModelLoadError(f"{what}: {source} {problem}")
    return names


def parse_classes_field(text: str, what: str) -> list[str]:
    """The ``classes`` field: names in output order, one a line or comma-separated."""
    parts = text.splitlines() if "\n" in text.strip() else text.split(",")
    return class_names([p for p in (s.strip() for s in parts) if p], "the classes field", what)


def parse_labels_file(data: bytes | str, what: str) -> list[str]:
    """A labels file: a JSON list, a JSON class_to_idx / idx_to_class, or one name a line."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ModelLoadError(f"{what}: the labels file is not UTF-8 text") from None
    text = data.strip()
    if text[:1] in ("[", "{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ModelLoadError(f"{what}: the labels file looks like JSON but is not "
                                 f"valid JSON ({exc})") from None
        return class_names(value, "the labels file", what)
    lines = [line.strip() for line in text.splitlines()]
    return class_names([line for line in lines if line], "the labels file", what)


def names_in(container: dict, what: str) -> tuple[list[str] | None, str | None]:
    """Class names kept in a file (``NAME_KEYS``, also under Lightning's hyper_parameters)."""
    for place in (container, container.get("hyper_parameters"), container.get("hparams")):
        if not isinstance(place, dict):
            continue
        for key in NAME_KEYS:
            if key in place and place[key] is not None:
                return class_names(place[key], f"the file's {key!r}", what), key
    return None, None


def imagenet_labels() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
