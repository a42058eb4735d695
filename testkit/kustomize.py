"""Render a kustomization the way ``kustomize build`` (``kubectl kustomize``) does, for
the features deploy/kubernetes uses and no others: ``resources`` (files and directories
with their own kustomization), ``namespace``, ``patches`` (JSON 6902 operations on a
``target`` by kind and name, and ``$patch: delete`` of a whole object) and ``images``.
Anything else is refused with its name, so a kustomization that grows a feature fails
here instead of being rendered differently.

Why not only kubectl: the tests must run where no kubectl is installed (a developer's
machine, a CI image without it).  Where kubectl is, tests/deploy/test_kubernetes.py renders
both ways and requires the same objects, so this stays what kustomize does.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "patches", "images"}
TARGET_KEYS = {"kind", "name", "namespace"}
IMAGE_KEYS = {"name", "newName", "newTag", "digest"}


class KustomizeError(ValueError):
    """A kustomization this renderer does not understand, or a patch that does not fit."""


def render(directory: str | Path) -> list[dict]:
    """The objects ``kustomize build directory`` prints (in file order, not kustomize's
    kind order: compare them as sets)."""
    directory = Path(directory)
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(path.read_text("utf-8")) or {}
    unknown = set(spec) - KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeError(f"{path}: not supported here: {', '.join(sorted(unknown))}")
    objects = []
    for entry in spec.get("resources", []):
        source = (directory / entry).resolve()
        if source.is_dir():
            objects += render(source)
        else:
            objects += [doc for doc in yaml.safe_load_all(source.read_text("utf-8")) if doc]
    if "namespace" in spec:
        for obj in objects:
            obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for patch in spec.get("patches", []):
        objects = _apply_patch(objects, patch, path)
    for image in spec.get("images", []):
        _set_image(objects, image, path)
    return objects


def _matches(obj: dict, target: dict) -> bool:
    meta = obj.get("metadata", {})
    return (target.get("kind", obj["kind"]) == obj["kind"]
            and target.get("name", meta.get("name")) == meta.get("name")
            and target.get("namespace", meta.get("namespace")) == meta.get("namespace"))


def _apply_patch(objects: list[dict], patch: dict, where: Path) -> list[dict]:
    if set(patch) - {"target", "patch"}:
        raise KustomizeError(f"{where}: patches: only `target` and `patch` are supported")
    body = yaml.safe_load(patch["patch"])
    if isinstance(body, dict):  # a strategic-merge patch: only deleting an object
        if body.get("$patch") != "delete":
            raise KustomizeError(f"{where}: strategic-merge patches other than "
                                 "`$patch: delete` are not supported")
        target = {"kind": body["kind"], **{k: v for k, v in body["metadata"].items()
                                           if k in ("name", "namespace")}}
        kept = [o for o in objects if not _matches(o, target)]
        if len(kept) == len(objects):
            raise KustomizeError(f"{where}: nothing to delete for {target}")
        return kept
    target = patch.get("target") or {}
    if set(target) - TARGET_KEYS:
        raise KustomizeError(f"{where}: patch target: only {sorted(TARGET_KEYS)}")
    hits = [o for o in objects if _matches(o, target)]
    if not hits:
        raise KustomizeError(f"{where}: no object matches the patch target {target}")
    for obj in hits:
        for op in body:
            _json_patch(obj, op, where)
    return objects


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(obj: dict, op: dict, where: Path) -> None:
    """RFC 6902 add, replace and remove."""
    kind = op.get("op")
    if kind not in ("add", "replace", "remove"):
        raise KustomizeError(f"{where}: JSON patch op {kind!r} is not supported")
    *parents, last = _pointer(op["path"])
    node = obj
    try:
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            index = len(node) if (last == "-" and kind == "add") else int(last)
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            else:
                del node[index]
        else:
            if kind != "add" and last not in node:
                raise KeyError(last)
            if kind == "remove":
                del node[last]
            else:
                node[last] = copy.deepcopy(op["value"])
    except (KeyError, IndexError, ValueError, TypeError):
        raise KustomizeError(f"{where}: {kind} {op['path']}: no such place in "
                             f"{obj['kind']}/{obj['metadata']['name']}") from None


def _set_image(objects: list[dict], image: dict, where: Path) -> None:
    if set(image) - IMAGE_KEYS:
        raise KustomizeError(f"{where}: images: only {sorted(IMAGE_KEYS)}")
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, tag, digest = split_image(container["image"])
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            elif "newTag" in image:
                container["image"] = f"{name}:{image['newTag']}"
            else:
                container["image"] = name + (f":{tag}" if tag else "") + \
                    (f"@{digest}" if digest else "")


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """name, tag, digest of an image reference (a registry port is not a tag)."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = None
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest or None
