"""The validated PyTorch model from what a file holds (``Contents``) and what the
person said (``Given``): architecture, head and class names reconciled, the weights
fitted strictly, one probe inference."""

from __future__ import annotations

from pathlib import Path

from webapp.checkpoints.architectures import (
    build_model,
    detect_arch,
    fit_state_dict,
    head_size,
    probe,
)
from webapp.checkpoints.fields import Given, agree, parse_input_size, vec3
from webapp.checkpoints.files import check_storage
from webapp.checkpoints.labels import imagenet_labels
from webapp.checkpoints.loaded import CHECKPOINT_FORMAT, Contents, LoadedModel, ModelLoadError
from webapp.checkpoints.preprocess import IMAGENET_MEAN, IMAGENET_STD
from webapp.checkpoints.v1 import guard_images, openset_entry


def build_from_contents(contents: Contents, given: Given, what: str, *, path: Path,
                        kind: str, name: str | None, version: str, source_kind: str,
                        run_probe: bool = True) -> LoadedModel:
    """The validated fp32 model from what the file holds and what the person said."""
    details = {"kind": "safetensors" if kind == "safetensors" else "pytorch",
               **contents.details}
    arch, head = _arch_and_head(contents, given, what, details)
    names = _class_names(contents, given, head, what, details)
    input_size = agree("input_size", given.input_size, contents.input_size, 224,
                       "the input_size field", what)
    input_size = parse_input_size(input_size, what)
    mean = agree("mean", given.mean, vec3(contents.mean, None, "mean", what),
                 IMAGENET_MEAN, "the mean field", what)
    std = agree("std", given.std, vec3(contents.std, None, "std", what),
                IMAGENET_STD, "the std field", what)

    check_storage(contents.state_dict, what)
    module = build_model(arch, len(names))
    try:
        fit_state_dict(module, contents.state_dict, what, arch)
    except ModelLoadError as exc:
        if details["arch_from"] == "the arch field":
            raise ModelLoadError(f"{exc}. Leave the architecture on auto to have it "
                                 "detected from the weights") from None
        raise
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


def _arch_and_head(contents: Contents, given: Given, what: str, details: dict
                   ) -> tuple[str, int | None]:
    """The architecture (the person's and the file's must agree; else detected from the
    weights) and its head size in the weights (None: the head's tensors are missing or
    disagree).  ``details`` learns where the architecture came from."""
    arch = agree("arch", given.arch, contents.arch, None, "the arch field", what)
    if arch is None:
        arch, head = detect_arch(contents.state_dict, what)
        details["arch_from"] = "detected"
        return arch, head
    head = head_size(arch, contents.state_dict)
    details["arch_from"] = "the arch field" if given.arch else "the file"
    if head is None:  # the head's tensors are missing or disagree: say what does not fit
        fit_state_dict(build_model(arch, len(contents.classes or given.classes or [])
                                   or 1000), contents.state_dict, what, arch)
    return arch, head


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
            raise ModelLoadError(
                f"{what}: the file does not name its classes and its head has {head} "
                f"outputs; give the {head} class names in output order (the classes "
                "field, comma-separated or one a line, or a labels file: one name a line, "
                "a JSON list, or a JSON class_to_idx; or write a checkpoint that has them: "
                "python -m model_loader convert FILE --classes a,b,... --out model.pt)")
        names = imagenet_labels()
        details["classes_from"] = "ImageNet (a 1000-way head without names)"
    if head is not None and head != len(names):
        raise ModelLoadError(
            f"{what}: the classification head has {head} outputs but "
            f"{details.get('classes_from', 'the checkpoint')} names {len(names)} classes")
    return names
