"""Where the weights sit in files other people's training code wrote: bare, inside a
training checkpoint (``WEIGHT_KEYS``), behind wrapper prefixes (``KEY_PREFIXES``), with
class names and the architecture perhaps kept beside them."""

from __future__ import annotations

from webapp.checkpoints.architectures import supported_archs
from webapp.checkpoints.labels import names_in
from webapp.checkpoints.loaded import CHECKPOINT_FORMAT, Contents, ModelLoadError

# Where training code keeps the weights inside a bigger dict (optimizer, epoch... beside).
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "model_state")


# Key prefixes of wrapped models: DataParallel, Lightning modules, torch.compile.
KEY_PREFIXES = ("module.", "model.", "_orig_mod.")


# Other facts a file may carry next to its weights.
ARCH_KEYS = ("arch", "architecture", "model_name")


def is_state_dict(obj: object) -> bool:
    import torch

    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _is_quantized(obj: object) -> bool:
    """torch.ao quantized weights: packed params, scales and zero points, qint tensors."""
    import torch

    return isinstance(obj, dict) and any(
        (isinstance(k, str) and k.endswith(("_packed_params", "_packed_params.dtype")))
        or (isinstance(v, torch.Tensor) and v.is_quantized)
        for k, v in obj.items()
    )


def unwrap(obj: object, what: str) -> tuple[dict, dict, str | None]:
    """(state_dict, the dict that held it, the key it was under) for a bare state_dict
    (then the holder is empty) or one inside a training checkpoint (``WEIGHT_KEYS``;
    optimizer, epoch and the like are ignored)."""
    holder, key = {}, None
    for _ in range(2):  # {"model": {"state_dict": ...}} at most
        if not isinstance(obj, dict) or is_state_dict(obj) or _is_quantized(obj):
            break
        inner = next((k for k in WEIGHT_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
        if inner is None:
            break
        holder, key, obj = obj, inner, obj[inner]
    if _is_quantized(obj):
        raise ModelLoadError(
            f"{what}: it holds quantized weights (torch.ao quantization); upload the fp32 "
            "weights (model.state_dict() before quantizing) instead: the server quantizes "
            "for its own engine (setting QUANTIZE=static or bf16)")
    if not is_state_dict(obj):
        found = type(obj).__name__
        if isinstance(obj, dict):
            found = ("a dict with " + ", ".join(repr(k) for k in list(obj)[:8])) if obj \
                else "an empty dict"
        raise ModelLoadError(
            f"{what}: expected a state_dict (a dict of tensors), a training checkpoint with "
            f"one under {' / '.join(repr(k) for k in WEIGHT_KEYS)}, or a checkpoint in "
            f"format {CHECKPOINT_FORMAT!r}; found {found}")
    return obj, holder, key


def strip_prefixes(state_dict: dict) -> tuple[dict, str]:
    """Remove ``KEY_PREFIXES`` that every key carries (repeatedly: ``_orig_mod.module.``)
    and return the prefix removed ("" for none)."""
    removed = ""
    while True:
        prefix = next((p for p in KEY_PREFIXES if all(k.startswith(p) for k in state_dict)
                       and not all(k == p for k in state_dict)), None)
        if prefix is None:
            return state_dict, removed
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
        removed += prefix


def read_container(obj: object, what: str, metadata: dict | None = None) -> Contents:
    """What a loaded weights object in anyone's layout holds (a file in format v1 is read
    by ``webapp.checkpoints.v1.read_v1`` instead).  ``metadata``: a safetensors file's
    header metadata (the same keys as a dict's)."""
    state_dict, holder, key = unwrap(obj, what)
    state_dict, prefix = strip_prefixes(state_dict)
    facts = {**holder, **(metadata or {})}
    names, names_key = names_in(facts, what)
    arch = _first(facts, ARCH_KEYS)
    metrics = {k: facts[k] for k in ("epoch", "best_acc", "accuracy", "val_acc", "val_accuracy",
                                     "best_accuracy") if isinstance(facts.get(k), int | float)}
    return Contents(
        state_dict, names, arch if isinstance(arch, str) and arch in supported_archs() else None,
        facts.get("input_size"), facts.get("mean"), facts.get("std"), metrics, None,
        {"container": key, "prefix": prefix,
         **({"classes_from": f"the file's {names_key!r}"} if names_key else {})})


def _first(container: dict, keys) -> object:
    return next((container[k] for k in keys if container.get(k) is not None), None)
