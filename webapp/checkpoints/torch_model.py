"""The validated PyTorch model from what a file holds (``Contents``) and what the
person said (``Given``): architecture, head and class names reconciled, the weights
fitted strictly, one probe inference."""

from __future__ import annotations

from pathlib import Path

from webapp.checkpoints.architectures import (
    build_model,
    detect_arch,
    fit_head,
    fit_state_dict,
    probe,
)
from webapp.checkpoints.fields import Given, agree, parse_input_size, vec3
from webapp.checkpoints.files import check_storage
from webapp.checkpoints.labels import imagenet_labels
from webapp.checkpoints.loaded import CHECKPOINT_FORMAT, Contents, LoadedModel, ModelLoadError
from webapp.checkpoints.preprocess import IMAGENET_MEAN, IMAGENET_STD
from webapp.checkpoints.v1 import guard_images, openset_entry
from webapp.messages import Message


def build_from_contents(contents: Contents, given: Given, what: str, *, path: Path,
                        kind: str, name: str | None, version: str, source_kind: str,
                        run_probe: bool = True) -> LoadedModel:
    """The validated fp32 model from what the file holds and what the person said."""
    details = {"kind": "safetensors" if kind == "safetensors" else "pytorch",
               **contents.details}
    arch, head, layers = _arch_and_head(contents, given, what, details)
    names = _class_names(contents, given, head, what, details)
    input_size = agree("input_size", given.input_size, contents.input_size, 224,
                       Message("the input_size field"), what)
    input_size = parse_input_size(input_size, what)
    mean = agree("mean", given.mean, vec3(contents.mean, None, "mean", what),
                 IMAGENET_MEAN, Message("the mean field"), what)
    std = agree("std", given.std, vec3(contents.std, None, "std", what),
                IMAGENET_STD, Message("the std field"), what)

    check_storage(contents.state_dict, what)
    module = build_model(arch, len(names))
    if layers is not None:  # a Sequential head: built as its keys describe it
        module.set_submodule(layers.path, layers.build())
        details["head"] = f"{layers.path} ({layers.describe()})"
        if any(layer[0] in ("relu", "gelu") for layer in layers.layers) and not given.activation:
            details["head_activation"] = "ReLU"
    _fit(module, contents.state_dict, what, arch, details)
    module.eval()
    if run_probe:
        probe(module, input_size, len(names), what)
    fine_tuned = details.get("format") == CHECKPOINT_FORMAT or len(names) != 1000
    return LoadedModel(
        module=module, arch=arch, labels=list(names),
        name=name or (f"{arch} fine-tuned ({len(names)} classes)" if fine_tuned
                      else f"{arch} (ImageNet)"),
        version=version, source=str(path), source_kind=source_kind,
        input_size=input_size, mean=tuple(mean), std=tuple(std),
        metrics=contents.metrics, created=contents.created,
        guard=(guard_images(contents.extras["guard"], input_size, what)
               if "guard" in contents.extras else None),
        openset=(openset_entry(contents.extras["openset"], what)
                 if "openset" in contents.extras else None),
        kind=details["kind"], details={k: v for k, v in details.items() if v},
    )


ARCH_FIELD = Message("the arch field")


def _arch_and_head(contents: Contents, given: Given, what: str, details: dict):
    """(architecture, its head size in the weights, a Sequential head or None): the
    person's and the file's architecture must agree; else it is detected from the
    weights.  The head size is None when the head's tensors are missing or disagree.
    ``details`` learns where the architecture came from."""
    activation = given.activation or "relu"
    arch = agree("arch", given.arch, contents.arch, None, ARCH_FIELD, what)
    if arch is None:
        arch, head, layers = detect_arch(contents.state_dict, what, activation)
        details["arch_from"] = "detected"
        return arch, head, layers
    details["arch_from"] = "the arch field" if given.arch else "the file"
    found = fit_head(arch, contents.state_dict, activation)
    if found is None:  # the tensors do not fit: say what does not fit
        _fit(build_model(arch, len(contents.classes or given.classes or []) or 1000),
             contents.state_dict, what, arch, details)
        return arch, None, None
    return arch, *found


def _fit(module, state_dict: dict, what: str, arch: str, details: dict) -> None:
    """``fit_state_dict``; when the person named the architecture, the refusal says
    how to have it detected instead."""
    try:
        fit_state_dict(module, state_dict, what, arch)
    except ModelLoadError as exc:
        if details["arch_from"] == "the arch field":
            raise ModelLoadError(Message("%(reason)s. Leave the architecture on auto to "
                                         "have it detected from the weights",
                                         reason=exc.args[0])) from None
        raise


def _class_names(contents: Contents, given: Given, head: int | None, what: str,
                 details: dict) -> list[str]:
    """The class names in output order: the person's and the file's must agree; a
    1000-way head without names is ImageNet's; either way as many as the head has."""
    names = agree("classes", given.classes, contents.classes, None,
                  given.classes_from or "", what)
    if given.classes is not None:
        details["classes_from"] = given.classes_from
    if names is None:
        if head != 1000:
            raise ModelLoadError(Message(
                "%(what)s: the file does not name its classes and its head has %(head)s "
                "outputs; give the %(head)s class names in output order (the classes "
                "field, comma-separated or one a line, or a labels file: one name a line, "
                "a JSON list, or a JSON class_to_idx; or write a checkpoint that has them: "
                "python -m model_loader convert FILE --classes a,b,... --out model.pt)",
                what=what, head=head))
        names = imagenet_labels()
        details["classes_from"] = Message("ImageNet (a 1000-way head without names)")
    if head is not None and head != len(names):
        raise ModelLoadError(Message(
            "%(what)s: the classification head has %(head)s outputs but %(source)s names "
            "%(count)s classes", what=what, head=head,
            source=details.get("classes_from") or Message("the checkpoint"),
            count=len(names)))
    return names
