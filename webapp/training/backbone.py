"""The pretrained network a fine-tune starts from: which weights (``choose_backbone``, the
same sources the server uses), the model with a fresh head (``build_finetune_model``),
and its layer groups -- the blocks that get their own learning rate and are unfrozen one
at a time."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import nn

from webapp.checkpoints.architectures import build_model
from webapp.checkpoints.imagenet import cache_path, download_resnet18, load_bundled
from webapp.checkpoints.load import load_checkpoint
from webapp.checkpoints.loaded import ModelLoadError
from webapp.checkpoints.preprocess import IMAGENET_MEAN, IMAGENET_STD
from webapp.config import setting
from webapp.training.options import FinetuneError, FinetuneOptions

log = logging.getLogger(__name__)



@dataclass
class Backbone:
    """The starting point: an architecture and, when pretrained, a model with its weights."""

    arch: str
    module: nn.Module | None  # None = random initialisation
    source: str  # where the weights come from, for the report
    why: str  # one sentence for the user
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pretrained: bool = field(init=False, default=False)

    def __post_init__(self):
        self.pretrained = self.module is not None  # stays True after `module` is released




def choose_backbone(options: FinetuneOptions) -> Backbone:
    """Pick the starting weights from the sources the server uses (``MODEL_WEIGHTS``, the
    torchvision cache, ``ALLOW_DOWNLOAD``, the bundled EfficientNet-Lite0) and say why.

    * ``--no-pretrained``: random weights (``auto`` means ResNet18 then).
    * ``--weights FILE`` or ``MODEL_WEIGHTS``: that file, whatever its architecture
      (a bare ImageNet ResNet18 state_dict or any checkpoint v1, e.g. an earlier
      fine-tune); the head is replaced either way.
    * ``auto``: ResNet18 when its ImageNet weights are in the torchvision cache (or can
      be downloaded with ``ALLOW_DOWNLOAD=1``), otherwise the bundled EfficientNet-Lite0
      -- starting from random weights on a small dataset serves users badly.
    * ``resnet18`` without its weights: random weights, said loudly.
    """
    arch = options.arch
    if not options.pretrained:
        arch = "resnet18" if arch == "auto" else arch
        return Backbone(
            arch, None, "random",
            f"--no-pretrained: {arch} starts from RANDOM weights (expect far lower accuracy "
            "than from ImageNet weights unless you have many thousands of images).",
        )
    weights_file = options.weights or setting("MODEL_WEIGHTS") or None
    if weights_file:
        return _from_file(weights_file, "--weights" if options.weights else "MODEL_WEIGHTS",
                          arch)
    cached = cache_path()
    if arch in ("auto", "resnet18"):
        resnet = _resnet18_from_cache(cached, options.progress_bar, required=arch == "resnet18")
        if resnet is not None:
            return resnet
    return _bundled(arch, cached)


def _from_file(weights_file: str, origin: str, arch: str) -> Backbone:
    """``--weights FILE`` or ``MODEL_WEIGHTS``: any PyTorch weights of a known kind."""
    loaded = load_checkpoint(weights_file, source_kind="explicit")
    if loaded.module is None:
        raise FinetuneError(f"{origin}={weights_file} is an ONNX model; fine-tuning "
                            "starts from PyTorch weights (a state_dict or a checkpoint)")
    if arch != "auto" and loaded.arch != arch:
        raise FinetuneError(
            f"{origin}={weights_file} holds a {loaded.arch} model, not {arch}; drop "
            f"--arch or pass a {arch} weights file"
        )
    return Backbone(
        loaded.arch, loaded.module, f"{origin}={weights_file}",
        f"{loaded.arch} starts from {origin}={weights_file} ({loaded.name}); its "
        "classification head is replaced.", loaded.mean, loaded.std,
    )


def _resnet18_from_cache(cached, progress: bool, *, required: bool) -> Backbone | None:
    """ResNet18 with its ImageNet weights from the torchvision cache (downloaded first with
    ``ALLOW_DOWNLOAD``); without them: random weights when ResNet18 was asked for, else
    None (``auto`` goes on to the bundled EfficientNet-Lite0)."""
    if not cached.is_file() and setting("ALLOW_DOWNLOAD"):
        try:
            download_resnet18(progress=progress)
        except ModelLoadError as exc:
            log.warning("%s", exc)
    if cached.is_file():
        loaded = load_checkpoint(cached, source_kind="cache", arch="resnet18")
        return Backbone(
            "resnet18", loaded.module, f"torchvision cache {cached}",
            f"resnet18 starts from its ImageNet weights in the torchvision cache ({cached}).",
        )
    if not required:
        return None
    return Backbone(
        "resnet18", None, "random",
        f"ResNet18's ImageNet weights are not on this machine ({cached} does not "
        "exist), so resnet18 starts from RANDOM weights: expect far lower accuracy "
        "on a small dataset. Run `python -m model_loader download` where there is "
        "internet (or copy the file there), or use --arch auto to start from the "
        "bundled EfficientNet-Lite0 ImageNet weights.",
    )


def _bundled(arch: str, cached) -> Backbone:
    """The bundled EfficientNet-Lite0 with its ImageNet weights."""
    loaded = load_bundled()
    why = (
        "efficientnet_lite0 starts from the bundled EfficientNet-Lite0 ImageNet weights"
        if arch == "efficientnet_lite0"
        else f"ResNet18's ImageNet weights are not on this machine ({cached} does not "
        "exist), so --arch auto starts from the bundled EfficientNet-Lite0 ImageNet "
        "weights instead of random ones (run `python -m model_loader download` to "
        "fine-tune ResNet18)"
    )
    return Backbone(
        "efficientnet_lite0", loaded.module, f"bundled {loaded.source}", why + ".",
        loaded.mean, loaded.std,
    )


def head_name(model: nn.Module, arch: str) -> str:
    """Name of the classification layer that gets replaced (``fc``, ``_fc``, ...)."""
    if arch == "efficientnet_lite0":
        return "_fc"
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return "fc"
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise FinetuneError(f"{arch} has no Linear classification layer to replace")
    return linears[-1]


def build_finetune_model(backbone: Backbone, num_classes: int) -> nn.Module:
    """A ``num_classes``-way model with the backbone's weights and a fresh head."""
    model = build_model(backbone.arch, num_classes)
    if backbone.module is None:
        return model
    head = head_name(model, backbone.arch) + "."
    state = {k: v for k, v in backbone.module.state_dict().items() if not k.startswith(head)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(head) for k in missing):
        raise FinetuneError(
            f"the {backbone.arch} starting weights do not fit the architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


# --------------------------------------------------------------------------- layer groups


@dataclass
class LayerGroup:
    name: str
    params: list[nn.Parameter]


def layer_groups(model: nn.Module, arch: str) -> list[LayerGroup]:
    """The model's parameters from the input up, in blocks that get their own learning
    rate (``full``) and are unfrozen one at a time (``progressive``).  The last group is
    the new head.

    * ResNets: ``stem`` (conv1, bn1), ``layer1`` ... ``layer4``, ``head`` (fc).
    * EfficientNet-Lite0: grouped by output stride like the ResNet stages -- ``stem``
      (stem conv + first block, /2), ``stage2`` (/4), ``stage3`` (/8), ``stage4`` (/16),
      ``stage5`` (/32, with the 1×1 head conv), ``head`` (_fc).
    * anything else: each top-level child module, then the last Linear layer as head.
    """
    head = head_name(model, arch)
    head_params = list(model.get_submodule(head).parameters())
    if arch == "efficientnet_lite0":
        stages: dict[int, list[nn.Parameter]] = {}
        stride = 2  # the stem conv
        stages[stride] = [*model._conv_stem.parameters(), *model._bn0.parameters()]
        for block in model._blocks:
            s = block._block_args.stride
            stride *= int(s[0] if isinstance(s, list | tuple) else s)
            stages.setdefault(stride, []).extend(block.parameters())
        stages[stride].extend([*model._conv_head.parameters(), *model._bn1.parameters()])
        names = ["stem"] + [f"stage{i}" for i in range(2, len(stages) + 1)]
        groups = [LayerGroup(n, p) for n, p in zip(names, stages.values())]
    elif all(hasattr(model, n) for n in ("conv1", "bn1", "layer1", "layer4", "fc")):
        groups = [LayerGroup("stem", [*model.conv1.parameters(), *model.bn1.parameters()])]
        groups += [
            LayerGroup(f"layer{i}", list(getattr(model, f"layer{i}").parameters()))
            for i in range(1, 5)
        ]
    else:
        head_ids = {id(p) for p in head_params}
        groups = []
        for name, child in model.named_children():
            params = [p for p in child.parameters() if id(p) not in head_ids]
            if params:
                groups.append(LayerGroup(name, params))
    groups.append(LayerGroup("head", head_params))
    seen = {id(p) for g in groups for p in g.params}
    assert seen == {id(p) for p in model.parameters()}, "every parameter in one group"
    return groups


def trainable_groups(groups: list[LayerGroup], strategy: str, epoch: int,
                     head_epochs: int = 1) -> list[str]:
    """Names of the groups that train in ``epoch`` (1-based)."""
    names = [g.name for g in groups]
    if strategy == "head":
        return ["head"]
    if strategy == "full":
        return names
    unfrozen = max(0, epoch - head_epochs)  # progressive: one more block per epoch
    backbone = names[:-1]
    return backbone[len(backbone) - min(unfrozen, len(backbone)):] + ["head"]


def set_trainable(model: nn.Module, groups: list[LayerGroup], names: list[str]) -> None:
    for group in groups:
        for p in group.params:
            p.requires_grad_(group.name in names)


def freeze_norm_statistics(model: nn.Module, *, all_layers: bool) -> None:
    """Keep batch-norm running statistics as they are (call after ``model.train()``).

    Always for layers whose weights are frozen; for every layer when ``all_layers`` --
    the default from pretrained weights: a few small batches of a new dataset give noisy
    statistics, and a network trained on batch statistics but evaluated on (barely
    updated) running ones answers differently in service than in training.  Measured on
    the test shapes: validation loss 0.04 with frozen statistics vs 0.73 when updating
    them.  The layers' scale and shift still train."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            weight = module.weight
            if all_layers or (weight is not None and not weight.requires_grad):
                module.eval()

