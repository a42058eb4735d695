"""The networks a file may hold: the supported names (without importing torchvision),
building one, what its state_dict looks like (``signature``, found by building it on the
meta device), which architecture some weights are (``detect_arch``), and whether they fit
and run (``fit_state_dict``, ``probe``)."""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from webapp.checkpoints.loaded import ModelLoadError
from webapp.messages import Message, MessageList

if TYPE_CHECKING:  # torch is imported where it is used: web workers never load it
    from torch import nn


# torchvision's classification models (``torchvision.models.list_models``) and the bundled
# EfficientNet-Lite0, written out so a web worker can check a name without importing
# torchvision; tests/checkpoints/test_model_loader.py keeps the list equal to torchvision's.
ARCHITECTURES = (
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny",
    "densenet121", "densenet161", "densenet169", "densenet201", "efficientnet_b0",
    "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_lite0",
    "efficientnet_v2_l", "efficientnet_v2_m", "efficientnet_v2_s", "googlenet",
    "inception_v3", "maxvit_t", "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3",
    "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_16gf",
    "regnet_x_1_6gf", "regnet_x_32gf", "regnet_x_3_2gf", "regnet_x_400mf", "regnet_x_800mf",
    "regnet_x_8gf", "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf", "regnet_y_32gf",
    "regnet_y_3_2gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_8gf", "resnet101",
    "resnet152", "resnet18", "resnet34", "resnet50", "resnext101_32x8d", "resnext101_64x4d",
    "resnext50_32x4d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0", "squeezenet1_0", "squeezenet1_1", "swin_b", "swin_s", "swin_t",
    "swin_v2_b", "swin_v2_s", "swin_v2_t", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16",
    "vgg16_bn", "vgg19", "vgg19_bn", "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16",
    "vit_l_32", "wide_resnet101_2", "wide_resnet50_2",
)


def supported_archs() -> frozenset[str]:
    return frozenset(ARCHITECTURES)


def unsupported_arch_message(arch) -> Message:
    return Message("architecture %(arch)s is not supported; use one of: %(supported)s",
                   arch=repr(arch), supported=", ".join(sorted(supported_archs())))


def build_model(arch: str, num_classes: int) -> nn.Module:
    """An untrained network of ``arch`` with a ``num_classes``-way head."""
    if arch == "efficientnet_lite0":
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    import torchvision

    if arch not in supported_archs():
        raise ModelLoadError(unsupported_arch_message(arch))
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def _skeleton():
    """A torch function mode that builds a network's structure without its memory or its
    initialisation: parameters are made on the meta device (``torch.empty``) and in-place
    initialisers on them are skipped.  Small real tensors (BatchNorm statistics, index
    tables) stay real, because some constructors compute with them (RegNet's widths).
    Torch function modes are per thread: nothing else in the process is affected."""
    import torch
    from torch.overrides import TorchFunctionMode

    class Skeleton(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.empty:
                kwargs = {**kwargs, "device": "meta"}
            elif (re.fullmatch(r"[a-z]\w*_", getattr(func, "__name__", "")) and args
                  and isinstance(args[0], torch.Tensor) and args[0].is_meta):
                return args[0]  # nn.init.* and friends: nothing to initialise
            return func(*args, **kwargs)

    return Skeleton()


@dataclass(frozen=True)
class Signature:
    """What an architecture's state_dict looks like: every key with its shape (for a
    ``HEAD_PROBE``-way head), and which tensors form the classification head (key ->
    the dimension that is the number of classes).  The head is found by building the
    network, not guessed from key names or their order."""

    arch: str
    shapes: dict
    head: dict


HEAD_PROBE = 1009  # a head width no torchvision layer has, so only head tensors show it


OPTIONAL_KEYS = ("num_batches_tracked",)  # BatchNorm counters some savers leave out


@functools.cache
def signature(arch: str) -> Signature:
    with warnings.catch_warnings(), _skeleton():
        warnings.simplefilter("ignore")
        shapes = {k: tuple(v.shape) for k, v in build_model(arch, HEAD_PROBE).state_dict().items()}
    head = {k: shape.index(HEAD_PROBE) for k, shape in shapes.items() if HEAD_PROBE in shape}
    return Signature(arch, shapes, head)


def head_size(arch: str, state_dict: dict) -> int | None:
    """Number of outputs of ``arch``'s classification head in ``state_dict`` (None when
    the head's tensors are missing or disagree)."""
    import torch

    sizes = set()
    for key, dim in signature(arch).head.items():
        tensor = state_dict.get(key)
        if not isinstance(tensor, torch.Tensor) or tensor.dim() <= dim:
            return None
        sizes.add(int(tensor.shape[dim]))
    return sizes.pop() if len(sizes) == 1 else None


def _fits(sig: Signature, state_dict: dict) -> int | None:
    """The head size if ``state_dict`` is exactly ``sig``'s network with some head."""
    keys = state_dict.keys()
    required = {k for k in sig.shapes if not k.endswith(OPTIONAL_KEYS)}
    if not required <= keys or not keys <= sig.shapes.keys():
        return None
    for key, tensor in state_dict.items():
        shape, expected = tuple(tensor.shape), sig.shapes[key]
        if key in sig.head:
            dim = sig.head[key]
            shape = shape[:dim] + (HEAD_PROBE,) + shape[dim + 1:]
        if shape != expected:
            return None
    return head_size(sig.arch, state_dict)


# Layers without weights a Sequential head may have between the ones with weights.
ACTIVATIONS = ("relu", "gelu")


@dataclass(frozen=True)
class Head:
    """A classification head written as a ``Sequential`` (``fc = nn.Sequential(
    nn.Dropout(0.5), nn.Linear(512, n))``, an MLP), as the keys under the architecture's
    head module describe it (``fc.1.weight``, ``fc.0.*`` and ``fc.3.*``...): built in
    place of that module's one Linear layer.  ``layers``: ``("linear", in, out, bias)``,
    ``("batchnorm", n)``, or a layer without weights: ``("dropout",)``, ``("relu",)``,
    ``("gelu",)``."""

    path: str
    layers: tuple

    def describe(self) -> str:
        words = {"dropout": "Dropout", "relu": "ReLU", "gelu": "GELU"}
        return ", ".join(
            f"Linear {layer[1]}→{layer[2]}" if layer[0] == "linear"
            else f"BatchNorm1d {layer[1]}" if layer[0] == "batchnorm" else words[layer[0]]
            for layer in self.layers)

    def build(self) -> nn.Module:
        from torch import nn

        made = {"dropout": nn.Dropout, "relu": nn.ReLU, "gelu": nn.GELU}
        return nn.Sequential(*[
            nn.Linear(layer[1], layer[2], bias=layer[3]) if layer[0] == "linear"
            else nn.BatchNorm1d(layer[1]) if layer[0] == "batchnorm" else made[layer[0]]()
            for layer in self.layers])


def _head_module(sig: Signature) -> tuple[str, int] | None:
    """(path, input width) of the architecture's head when it is one Linear layer."""
    paths = {key.rsplit(".", 1)[0] for key in sig.head}
    if len(paths) != 1:
        return None
    path = paths.pop()
    weight = sig.shapes.get(f"{path}.weight")
    return (path, weight[1]) if weight is not None and len(weight) == 2 else None


_BATCHNORM = {"weight", "bias", "running_mean", "running_var"}


def sequential_head(sig: Signature, state_dict: dict, activation: str = "relu"
                    ) -> tuple[Head, int] | None:
    """The ``Head`` the keys under ``sig``'s head module describe, and its number of
    outputs, when every other tensor fits ``sig`` exactly; else None.  Between a Linear
    layer and the next layer with weights, the first layer without weights is taken as
    the ``activation`` and any others as Dropout (which does nothing when serving);
    before the first Linear layer, as Dropout."""
    found = _head_module(sig)
    if found is None:
        return None
    path, width = found
    prefix = f"{path}."
    body = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    expected = {k: shape for k, shape in sig.shapes.items() if k not in sig.head}
    required = {k for k in expected if not k.endswith(OPTIONAL_KEYS)}
    if not required <= body.keys() or not body.keys() <= expected.keys() or any(
            tuple(tensor.shape) != expected[key] for key, tensor in body.items()):
        return None
    groups: dict[int, dict] = {}
    for key, tensor in state_dict.items():
        if key.startswith(prefix):
            index, _, param = key[len(prefix):].partition(".")
            if not index.isdigit() or not param or "." in param:
                return None
            groups.setdefault(int(index), {})[param] = tensor
    if not groups or max(groups) > 32:
        return None
    layers, features, activated = [], width, True
    for index in range(max(groups) + 1):
        params = groups.get(index)
        if params is None:
            layers.append(("dropout",) if activated else (activation,))
            activated = True
            continue
        names = set(params) - {"num_batches_tracked"}
        weight = params.get("weight")
        if names in ({"weight"}, {"weight", "bias"}) and weight.dim() == 2:
            out, width_in = (int(n) for n in weight.shape)
            if width_in != features or ("bias" in params and tuple(params["bias"].shape)
                                        != (out,)):
                return None
            layers.append(("linear", width_in, out, "bias" in params))
            features, activated = out, False
        elif names == _BATCHNORM and all(tuple(params[n].shape) == (features,)
                                         for n in _BATCHNORM):
            layers.append(("batchnorm", features))
        else:
            return None
    if layers[-1][0] != "linear":
        return None
    return Head(path, tuple(layers)), features


def fit_head(arch: str, state_dict: dict, activation: str = "relu"
             ) -> tuple[int, Head | None] | None:
    """(number of outputs, the Sequential head or None for the architecture's own) when
    ``state_dict`` is ``arch``'s network with some head; else None."""
    sig = signature(arch)
    size = _fits(sig, state_dict)
    if size:
        return size, None
    found = sequential_head(sig, state_dict, activation)
    return (found[1], found[0]) if found else None


# Tried first by ``detect_arch`` (what fine-tuning recipes use most); then the rest.
COMMON_ARCHS = ("resnet18", "resnet50", "resnet34", "mobilenet_v3_large", "mobilenet_v2",
                "efficientnet_b0", "mobilenet_v3_small", "convnext_tiny", "efficientnet_lite0",
                "resnet101", "densenet121", "vit_b_16", "vgg16", "efficientnet_v2_s")


def detect_arch(state_dict: dict, what: str, activation: str = "relu"
                ) -> tuple[str, int, Head | None]:
    """The supported architecture whose every tensor and head fit ``state_dict`` exactly
    (its own head, or a ``Sequential`` one: ``sequential_head``), its head size and that
    head.  Common architectures are tried first and the first that fits wins (no two
    supported architectures have the same tensors, so at most one can)."""
    ordered = [a for a in COMMON_ARCHS if a in supported_archs()]
    ordered += sorted(supported_archs() - set(ordered))
    for arch in ordered:
        found = fit_head(arch, state_dict, activation)
        if found:
            return arch, *found
    raise ModelLoadError(Message("%(what)s: %(reason)s", what=what,
                                 reason=fits_none(state_dict, ordered)))


def named_like_an_architecture(keys: set[str]) -> bool:
    """Whether ``keys`` hold every tensor name of a supported architecture's network
    (its head aside) and nothing outside it and its head module: what tells that a
    prefix every key carried was a wrapper's, not the network's."""
    for arch in [*COMMON_ARCHS, *sorted(supported_archs() - set(COMMON_ARCHS))]:
        sig = signature(arch)
        found = _head_module(sig)
        head = f"{found[0]}." if found else None
        body = {k for k in sig.shapes if k not in sig.head}
        required = {k for k in body if not k.endswith(OPTIONAL_KEYS)}
        if required <= keys and all(k in sig.shapes or (head and k.startswith(head))
                                    for k in keys):
            return True
    return False


# "The closest is ..." only when that architecture has at least this share of the keys.
CLOSEST_SHARE = 0.5


def fits_none(state_dict: dict, ordered) -> Message:
    """Why weights fit none of the architectures, and what to do: the closest
    architecture and what differs when it shares most of the keys, else what the keys
    look like and the way in for other networks (ONNX)."""
    keys = set(state_dict)

    def overlap(arch):
        known = set(signature(arch).shapes)
        return len(keys & known) / len(keys | known)

    closest = max(ordered, key=overlap)
    supported = ", ".join(sorted(supported_archs()))
    if overlap(closest) >= CLOSEST_SHARE:
        problems = _fit_problems(signature(closest).shapes, state_dict,
                                 skip=signature(closest).head)
        return Message(
            "the weights fit none of the %(count)s supported architectures. The closest is "
            "%(closest)s: %(problems)s. If the model is one of them, choose it as the "
            "architecture to see exactly what does not fit; supported: %(supported)s",
            count=len(ordered), closest=closest,
            problems=problems or Message("its head does not fit"), supported=supported)
    sample = ", ".join(sorted(keys)[:3])
    return Message(
        "the weights are not those of a supported architecture (their %(count)s tensors are "
        "named like %(sample)s). If the model is one of torchvision's classifiers, save the "
        "torchvision model's state_dict; for any other network, export it to ONNX "
        "(torch.onnx.export(model, torch.zeros(1, 3, 224, 224), 'model.onnx')) and upload "
        "the .onnx file. Supported: %(supported)s", count=len(keys), sample=sample,
        supported=supported)


def fit_state_dict(module: nn.Module, state_dict: dict, what: str, arch: str = "") -> None:
    """Load ``state_dict`` strictly, with a readable error listing what does not fit
    (BatchNorm's ``num_batches_tracked`` counters may be missing: they start at 0)."""
    expected = module.state_dict()
    state_dict = {**{k: v for k, v in expected.items() if k.endswith(OPTIONAL_KEYS)},
                  **state_dict}
    problems = _fit_problems({k: tuple(v.shape) for k, v in expected.items()}, state_dict)
    if problems:
        raise ModelLoadError(
            Message("%(what)s does not fit the architecture %(arch)s: %(problems)s",
                    what=what, arch=arch, problems=problems) if arch else
            Message("%(what)s does not fit the architecture: %(problems)s", what=what,
                    problems=problems))
    module.load_state_dict(state_dict, strict=True)


def _fit_problems(expected: dict, state_dict: dict, skip=()) -> MessageList | None:
    """What does not fit, as one message ("2 missing tensors (e.g. ...); ..."), or None."""
    missing = [k for k in expected if k not in state_dict and not k.endswith(OPTIONAL_KEYS)]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        Message("%(key)s is %(shape)s, expected %(expected)s", key=k,
                shape=str(tuple(state_dict[k].shape)), expected=str(shape))
        for k, shape in expected.items()
        if k in state_dict and k not in skip and tuple(state_dict[k].shape) != shape
    ]
    problems = []
    if missing:
        problems.append(Message("%(count)s missing tensors (e.g. %(keys)s)",
                                count=len(missing), keys=", ".join(missing[:3])))
    if unexpected:
        problems.append(Message("%(count)s unexpected tensors (e.g. %(keys)s)",
                                count=len(unexpected), keys=", ".join(unexpected[:3])))
    if wrong:
        problems.append(Message("%(count)s tensors of the wrong shape (e.g. %(shapes)s)",
                                count=len(wrong), shapes=MessageList(wrong[:3], "; ")))
    return MessageList(problems, "; ") if problems else None


def probe(module: nn.Module, input_size: int, num_classes: int, what: str) -> None:
    """Run one inference on a blank image; the output must have the right shape and be
    finite, or the weights are unusable (NaN/inf weights, a broken head)."""
    import torch

    module.eval()
    with torch.inference_mode():
        out = module(torch.zeros(1, 3, input_size, input_size))
    check_output(out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out),
                 num_classes, what)


def check_output(out: np.ndarray, num_classes: int, what: str) -> None:
    if tuple(out.shape) != (1, num_classes):
        raise ModelLoadError(Message(
            "%(what)s: a probe inference gave an output of shape %(shape)s, expected "
            "(1, %(classes)s)", what=what, shape=str(tuple(out.shape)),
            classes=num_classes if num_classes > 0 else "N"))
    if not np.isfinite(out).all():
        raise ModelLoadError(Message("%(what)s: a probe inference gave NaN or infinite "
                                     "scores", what=what))
