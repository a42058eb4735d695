"""Where the weights sit in files other people's training code wrote: bare, inside a
training checkpoint (``WEIGHT_KEYS``, EMA weights under ``EMA_KEYS``), behind wrapper
prefixes (``KEY_PREFIXES``) or one other name, dynamically quantized, in another
library's key names (``webapp.checkpoints.hugging_face``), with class names, the
architecture and the preprocessing perhaps kept beside them."""

from __future__ import annotations

from webapp.checkpoints.architectures import named_like_an_architecture, supported_archs
from webapp.checkpoints.hugging_face import from_other_libraries
from webapp.checkpoints.labels import names_in
from webapp.checkpoints.loaded import CHECKPOINT_FORMAT, Contents, ModelLoadError
from webapp.messages import Message

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


# Where EMA weights are kept beside the trained ones (timm's train.py: state_dict_ema).
EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema")


def _is_quantized(obj: object) -> bool:
    """torch.ao quantized weights: packed params, scales and zero points, qint tensors."""
    import torch

    return isinstance(obj, dict) and any(
        (isinstance(k, str) and k.endswith(("_packed_params", "_packed_params.dtype")))
        or (isinstance(v, torch.Tensor) and v.is_quantized)
        for k, v in obj.items()
    )


_PACKED = "._packed_params._packed_params"


def dequantize_dynamic(state_dict: dict) -> tuple[dict, list[str]] | None:
    """A state_dict of torch's dynamic quantization (``quantize_dynamic(model,
    {nn.Linear}, dtype=torch.qint8)``: its Linear layers packed as int8, everything else
    fp32) with those layers' weights dequantized to plain fp32 tensors, and the layers;
    None when other tensors are quantized too (static quantization)."""
    import torch

    packed = {k[:-len(_PACKED)] for k in state_dict if isinstance(k, str) and k.endswith(_PACKED)}
    out, layers = {}, []
    for key, value in state_dict.items():
        base = key[:-len(_PACKED)] if key.endswith(_PACKED) else None
        if base is not None:
            if not (isinstance(value, tuple) and len(value) == 2
                    and isinstance(value[0], torch.Tensor)):
                return None
            weight, bias = value
            out[f"{base}.weight"] = (weight.dequantize() if weight.is_quantized
                                     else weight).detach().float()
            if isinstance(bias, torch.Tensor):
                out[f"{base}.bias"] = bias.detach().float()
            layers.append(base)
        elif key.rsplit(".", 1)[0] in packed or key.endswith("._packed_params.dtype"):
            continue  # the packed layer's output scale, zero point and dtype
        elif isinstance(value, torch.Tensor) and not value.is_quantized:
            out[key] = value
        else:
            return None
    return (out, layers) if layers else None


def unwrap(obj: object, what: str, ema: bool | None = None
           ) -> tuple[dict, dict, str | None, dict]:
    """(state_dict, the dict that held it, the key it was under, notes for people) for
    a bare state_dict (then the holder is empty) or one inside a training checkpoint
    (``WEIGHT_KEYS``, or the EMA weights under ``EMA_KEYS`` unless ``ema`` is False;
    optimizer, epoch and the like are ignored).  Dynamically quantized Linear layers
    are dequantized (the notes say which)."""
    holder, key, notes = {}, None, {}
    for _ in range(2):  # {"model": {"state_dict": ...}} at most
        if not isinstance(obj, dict) or is_state_dict(obj) or _is_quantized(obj):
            break
        keys = (EMA_KEYS if ema is not False else ()) + WEIGHT_KEYS
        inner = next((k for k in keys if isinstance(obj.get(k), dict) and obj[k]
                      and (is_state_dict(obj[k]) or _is_quantized(obj[k])
                           or k in WEIGHT_KEYS)), None)
        if inner is None:
            break
        if inner in EMA_KEYS:
            notes["ema"] = inner
        holder, key, obj = obj, inner, obj[inner]
    if _is_quantized(obj):
        found = dequantize_dynamic(obj)
        if found is None:
            raise ModelLoadError(Message(
                "%(what)s: it holds static-quantized weights (torch.ao quantization: fused "
                "and converted layers, which cannot be turned back into the original "
                "network); upload the fp32 weights instead (model.state_dict() before "
                "prepare and convert): the server quantizes for its own engine", what=what))
        obj, layers = found
        notes["dequantized"] = ", ".join(layers)
    if not is_state_dict(obj):
        raise ModelLoadError(Message("%(what)s: %(reason)s", what=what,
                                     reason=_not_weights(obj)))
    return obj, holder, key, notes


def _not_weights(obj: object) -> Message:
    """What a loaded object that holds no state_dict is, and what to send instead."""
    if isinstance(obj, dict) and {"state", "param_groups"} <= set(obj):
        return Message("this is an optimizer's state (optimizer.state_dict(): its 'state' "
                       "and 'param_groups'), not the model's weights; save "
                       "model.state_dict() and upload that with its class names")
    found = type(obj).__name__
    if isinstance(obj, dict):
        found = Message("a dict with %(keys)s", keys=", ".join(repr(k) for k in list(obj)[:8])
                        ) if obj else Message("an empty dict")
    return Message("expected a state_dict (a dict of tensors), a training checkpoint with "
                   "one under %(keys)s, or a checkpoint in format %(format)s; found "
                   "%(found)s. Save model.state_dict() and upload that with its class names",
                   keys=" / ".join(repr(k) for k in WEIGHT_KEYS),
                   format=repr(CHECKPOINT_FORMAT), found=found)


def strip_prefixes(state_dict: dict) -> tuple[dict, str]:
    """Remove ``KEY_PREFIXES`` that every key carries (repeatedly: ``_orig_mod.module.``),
    then any other one name every key starts with (``backbone.``, ``encoder.``, ``net.``)
    when what remains is named like a supported architecture; return the prefix removed
    ("" for none)."""
    removed = ""
    while True:
        prefix = next((p for p in KEY_PREFIXES if all(k.startswith(p) for k in state_dict)
                       and not all(k == p for k in state_dict)), None)
        if prefix is None:
            prefix = _common_prefix(state_dict)
            if prefix is None or not named_like_an_architecture(
                    {k[len(prefix):] for k in state_dict}):
                return state_dict, removed
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
        removed += prefix


def _common_prefix(state_dict: dict) -> str | None:
    """``"name."`` when every key starts with that one name (and goes on after it)."""
    first = {k.split(".", 1)[0] for k in state_dict}
    if len(first) != 1 or not all("." in k for k in state_dict):
        return None
    return f"{first.pop()}."


def read_container(obj: object, what: str, metadata: dict | None = None,
                   ema: bool | None = None) -> Contents:
    """What a loaded weights object in anyone's layout holds (a file in format v1 is read
    by ``webapp.checkpoints.v1.read_v1`` instead).  ``metadata``: a safetensors file's
    header metadata (the same keys as a dict's); ``ema``: whether EMA weights beside
    the trained ones are used (None: yes)."""
    state_dict, holder, key, notes = unwrap(obj, what, ema)
    state_dict, layout = from_other_libraries(state_dict)
    state_dict, prefix = strip_prefixes(state_dict)
    facts = {**_timm_args(holder), **holder, **(metadata or {})}
    names, names_key = names_in(facts, what)
    arch = _first(facts, ARCH_KEYS)
    metrics = {k: facts[k] for k in ("epoch", "best_acc", "accuracy", "val_acc", "val_accuracy",
                                     "best_accuracy") if isinstance(facts.get(k), int | float)}
    return Contents(
        state_dict, names, arch if isinstance(arch, str) and arch in supported_archs() else None,
        facts.get("input_size"), facts.get("mean"), facts.get("std"), metrics, None,
        {"container": None if notes.get("ema") else key, "prefix": prefix, "layout": layout,
         **notes, **({"classes_from": Message("the file's %(key)s", key=repr(names_key))}
                     if names_key else {})})


def _timm_args(holder: dict) -> dict:
    """The preprocessing timm's train.py was run with (its ``args``, an
    ``argparse.Namespace`` read as plain data): ``img_size`` / ``input_size``, ``mean``,
    ``std`` when they were set."""
    args = holder.get("args")
    values = getattr(args, "__dict__", None)
    if not isinstance(values, dict):
        return {}
    out = {}
    size = values.get("input_size") or values.get("img_size")
    if isinstance(size, list | tuple) and size:
        size = size[-1]
    if isinstance(size, int) and not isinstance(size, bool):
        out["input_size"] = size
    for key in ("mean", "std"):
        if isinstance(values.get(key), list | tuple) and len(values[key]) == 3:
            out[key] = list(values[key])
    return out


def _first(container: dict, keys) -> object:
    return next((container[k] for k in keys if container.get(k) is not None), None)
