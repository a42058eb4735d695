"""Fine-tune an ImageNet model on your own image folders and write a checkpoint the
server serves (format v1, see ``model_loader.save_checkpoint``).

    python -m webapp.finetune DATA_DIR --out model.pt        (or: flask --app app finetune)

``DATA_DIR`` holds ``train/ val/ [test/]`` folders of class folders, or just class folders
(then split 70/15/15, stratified, fixed seed) -- see ``webapp.datasets``.

The recipe: start from the ImageNet weights the server would use (``MODEL_WEIGHTS``, the
torchvision cache, the bundled EfficientNet-Lite0), replace the classification head, train
with one of three strategies -- ``head`` (backbone frozen), ``full`` (layer-wise learning
rates: small for early layers, larger for the last block, largest for the new head) or
``progressive`` (the head first, then one more block from the top each epoch) -- with a
linear warm-up and cosine schedule, AdamW or SGD with momentum, weight decay, label
smoothing, class weights or a weighted sampler for imbalanced classes, and early stopping
on the validation loss that keeps the best epoch.  The test images are evaluated once, at
the end.  Beside the checkpoint go a JSON report and two PNGs (confusion matrix, curves).

``train()`` is the whole run as a function, with a progress callback and a cancel check,
so a background job can call it; ``main()`` is the command line.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision import transforms

import model_loader
from model_loader import CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, ModelLoadError, preprocess_array
from webapp import bursts as bursts_
from webapp import datasets, training_report
from webapp.config import SETTINGS, ConfigError
from webapp.datasets import DatasetError, DatasetSplits, ImageSamples

log = logging.getLogger(__name__)

ARCHS = ("auto", "resnet18", "efficientnet_lite0")
STRATEGIES = ("head", "full", "progressive")
OPTIMIZERS = ("adamw", "sgd")
DEFAULT_LR = {"adamw": 1e-3, "sgd": 1e-2}
DEFAULT_WEIGHT_DECAY = {"adamw": 0.01, "sgd": 1e-4}


class FinetuneError(ValueError):
    """Options that cannot work together, or an output that cannot be written."""


class TrainingCancelled(RuntimeError):
    """``should_stop()`` answered True; nothing was written."""


@dataclass
class FinetuneOptions:
    arch: str = "auto"  # auto | resnet18 | efficientnet_lite0
    pretrained: bool = True
    weights: str | None = None  # start from this file (default: the MODEL_WEIGHTS setting)
    strategy: str = "full"  # head | full | progressive
    epochs: int = 15
    batch_size: int = 32
    image_size: int = 224
    optimizer: str = "adamw"  # adamw | sgd
    lr: float | None = None  # the new head's learning rate (default per optimizer)
    backbone_lr_scale: float = 0.1  # last backbone block: lr × this
    layer_decay: float = 0.5  # each block further down: × this again
    weight_decay: float | None = None  # default per optimizer; never on biases / norms
    momentum: float = 0.9  # SGD
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    patience: int = 3  # epochs without a better validation loss before stopping; 0 = never
    min_delta: float = 1e-4
    class_weights: str = "none"  # none | auto (inverse class frequency)
    sampler: str = "shuffle"  # shuffle | weighted (every class drawn equally often)
    color_jitter: bool = True
    flip: bool = True
    head_epochs: int = 1  # progressive: epochs with only the head before unfreezing
    update_bn_stats: bool | None = None  # None = only when starting from random weights
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: bool | None = None  # None = on when training on CUDA
    workers: int = 0  # DataLoader worker processes (0 = load in this process)
    seed: int = 0
    split: tuple[float, float, float] = datasets.DEFAULT_FRACTIONS
    bursts: str = "auto"  # auto | times | off: how file times group pictures (webapp.bursts)
    burst_gap: float = bursts_.GAP_SECONDS
    progress_bar: bool = False  # tqdm bars on stderr (the command line turns them on)
    int8: bool = False  # also write a static int8 ONNX file calibrated on training images

    def validate(self) -> FinetuneOptions:
        def need(ok: bool, message: str):
            if not ok:
                raise FinetuneError(message)

        need(self.arch in ARCHS, f"--arch must be one of {', '.join(ARCHS)}")
        need(self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}")
        need(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        need(self.class_weights in ("none", "auto"), "--class-weights must be none or auto")
        need(self.sampler in ("shuffle", "weighted"), "--sampler must be shuffle or weighted")
        need(1 <= self.epochs <= 10_000, "--epochs must be from 1 to 10000")
        need(1 <= self.batch_size <= 4096, "--batch-size must be from 1 to 4096")
        need(32 <= self.image_size <= 1024, "--image-size must be from 32 to 1024")
        need(self.lr is None or 0 < self.lr <= 10, "--lr must be greater than 0")
        need(0 < self.backbone_lr_scale <= 10, "--backbone-lr-scale must be greater than 0")
        need(0 < self.layer_decay <= 1, "--layer-decay must be in (0, 1]")
        need(self.weight_decay is None or self.weight_decay >= 0, "--weight-decay must be ≥ 0")
        need(0 <= self.warmup_epochs <= self.epochs, "--warmup-epochs must be from 0 to --epochs")
        need(0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)")
        need(self.patience >= 0, "--patience must be ≥ 0 (0 = no early stopping)")
        need(self.head_epochs >= 0, "--head-epochs must be ≥ 0")
        need(self.workers >= 0, "--workers must be ≥ 0")
        need(self.bursts in bursts_.MODES, f"--bursts must be one of {', '.join(bursts_.MODES)}")
        need(0 <= self.burst_gap <= 3600, "--burst-gap must be from 0 to 3600 seconds")
        return self

    @property
    def head_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return DEFAULT_WEIGHT_DECAY[self.optimizer]


@dataclass
class TrainingProgress:
    """What a progress callback receives: after every training batch (``stage="train"``),
    after every epoch's validation (``"epoch"``, with ``metrics``) and at the end
    (``"test"``, ``"done"``).  ``fraction`` goes from 0 to 1 over ``epochs`` epochs."""

    stage: str
    epoch: int
    epochs: int
    batch: int = 0
    batches: int = 0
    fraction: float = 0.0
    metrics: dict = field(default_factory=dict)
    message: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    checkpoint: Path
    report_path: Path
    confusion_png: Path
    curves_png: Path
    report: dict


# --------------------------------------------------------------------------- backbone


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


def _setting(name: str):
    setting = next(s for s in SETTINGS if s.name == name)
    return setting.parse(os.environ.get(name))


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
    weights_file = options.weights or _setting("MODEL_WEIGHTS") or None
    if weights_file:
        origin = "--weights" if options.weights else "MODEL_WEIGHTS"
        loaded = model_loader.load_checkpoint(weights_file, source_kind="explicit")
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
    cached = model_loader.cache_path()
    if arch in ("auto", "resnet18"):
        if not cached.is_file() and _setting("ALLOW_DOWNLOAD"):
            try:
                model_loader.download_resnet18(progress=options.progress_bar)
            except ModelLoadError as exc:
                log.warning("%s", exc)
        if cached.is_file():
            loaded = model_loader.load_checkpoint(cached, source_kind="cache", arch="resnet18")
            return Backbone(
                "resnet18", loaded.module, f"torchvision cache {cached}",
                f"resnet18 starts from its ImageNet weights in the torchvision cache ({cached}).",
            )
        if arch == "resnet18":
            return Backbone(
                "resnet18", None, "random",
                f"ResNet18's ImageNet weights are not on this machine ({cached} does not "
                "exist), so resnet18 starts from RANDOM weights: expect far lower accuracy "
                "on a small dataset. Run `python -m model_loader download` where there is "
                "internet (or copy the file there), or use --arch auto to start from the "
                "bundled EfficientNet-Lite0 ImageNet weights.",
            )
    loaded = model_loader.load_bundled()
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
    model = model_loader.build_model(backbone.arch, num_classes)
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


def group_learning_rates(groups: list[LayerGroup], options: FinetuneOptions,
                         pretrained: bool) -> dict[str, float]:
    """Head: ``lr``; last backbone group: ``lr × backbone_lr_scale``; each group further
    down: ``× layer_decay`` again.  From random weights every group gets ``lr`` (nothing
    is worth protecting)."""
    lr = options.head_lr
    rates = {"head": lr}
    backbone = [g.name for g in groups if g.name != "head"]
    for depth, name in enumerate(reversed(backbone)):
        rates[name] = lr * options.backbone_lr_scale * options.layer_decay**depth if (
            pretrained) else lr
    return rates


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


def make_optimizer(groups: list[LayerGroup], rates: dict[str, float],
                   options: FinetuneOptions) -> torch.optim.Optimizer:
    """One parameter group per layer group and decay kind: weight decay on weights only,
    never on biases and normalisation parameters."""
    param_groups = []
    for group in groups:
        decay = [p for p in group.params if p.ndim > 1]
        no_decay = [p for p in group.params if p.ndim <= 1]
        for params, wd in ((decay, options.decay), (no_decay, 0.0)):
            if params:
                param_groups.append({
                    "params": params, "lr": rates[group.name], "weight_decay": wd,
                    "name": group.name,
                })
    if options.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=options.head_lr, momentum=options.momentum,
                               nesterov=True)
    return torch.optim.AdamW(param_groups, lr=options.head_lr)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warm-up to 1, then cosine down to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


# --------------------------------------------------------------------------- data


class ServingPreprocess:
    """The server's own preprocessing (``Classifier.preprocess``: resize the shorter side
    to input_size / 0.875, centre-crop, normalise) for evaluation, so a model is validated
    on exactly what it will see when served.  Picklable, for DataLoader workers."""

    def __init__(self, input_size: int, mean, std):
        self.input_size, self.resize_size = input_size, round(input_size / CROP_RATIO)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, img):
        return torch.from_numpy(preprocess_array(
            img, self.resize_size, self.input_size, self.mean, self.std))


def train_transform(options: FinetuneOptions, mean, std):
    """The augmentation preset: random resized crop (50–100 % of the image), horizontal
    flip, mild colour jitter (off with ``--no-color-jitter`` when colour is the signal)."""
    steps = [transforms.RandomResizedCrop(options.image_size, scale=(0.5, 1.0), antialias=True)]
    if options.flip:
        steps.append(transforms.RandomHorizontalFlip())
    if options.color_jitter:
        steps.append(transforms.ColorJitter(0.2, 0.2, 0.2, 0.02))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def class_weights(counts: list[int]) -> torch.Tensor:
    """Inverse class frequency, scaled so a balanced dataset gets all ones:
    ``N / (C × n_c)`` (scikit-learn's "balanced")."""
    counts_t = torch.tensor(counts, dtype=torch.float64).clamp(min=1)
    return (counts_t.sum() / (len(counts) * counts_t)).float()


def make_criterion(counts: list[int], options: FinetuneOptions, device) -> nn.Module:
    weight = class_weights(counts).to(device) if options.class_weights == "auto" else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=options.label_smoothing)


def train_loader(samples, options, mean, std, device) -> torch.utils.data.DataLoader:
    dataset = ImageSamples(samples, train_transform(options, mean, std),
                           min_side=2 * options.image_size)
    generator = torch.Generator().manual_seed(options.seed)
    sampler = None
    if options.sampler == "weighted":
        labels = dataset.labels
        tally = torch.bincount(torch.tensor(labels))
        weights = (1.0 / tally.double())[torch.tensor(labels)]
        sampler = torch.utils.data.WeightedRandomSampler(
            weights, num_samples=len(labels), replacement=True, generator=generator
        )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=options.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=options.workers,
        pin_memory=device.type == "cuda",
        # A last batch of one image breaks batch norm in training mode.
        drop_last=len(dataset) % options.batch_size == 1 and len(dataset) > 1,
        persistent_workers=options.workers > 0,
    )


def eval_loader(samples, options, mean, std, device) -> torch.utils.data.DataLoader:
    preprocess = ServingPreprocess(options.image_size, mean, std)
    dataset = ImageSamples(samples, preprocess, min_side=round(options.image_size / CROP_RATIO))
    return torch.utils.data.DataLoader(
        dataset, batch_size=options.batch_size, shuffle=False,
        num_workers=options.workers, pin_memory=device.type == "cuda",
        persistent_workers=options.workers > 0,
    )


# --------------------------------------------------------------------------- training


class EarlyStopping:
    """Stop when the validation loss has not improved by ``min_delta`` for ``patience``
    epochs in a row (0 = never stop early); remembers the best epoch."""

    def __init__(self, patience: int, min_delta: float = 1e-4):
        self.patience = patience
        self.min_delta = min_delta
        self.best: float = math.inf
        self.best_epoch: int | None = None
        self.bad_epochs = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record ``epoch``'s loss; True when it is the best so far."""
        if value < self.best - self.min_delta or self.best_epoch is None:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FinetuneError(
            f"--device {name!r} is not a device (use cpu, cuda, cuda:0, mps)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FinetuneError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise FinetuneError(f"--device {name}: MPS is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


@torch.no_grad()
def evaluate(model, loader, device, amp: bool) -> dict:
    """Mean cross-entropy (unweighted, no smoothing: comparable between runs), accuracy,
    and the targets and predictions for metrics."""
    model.eval()
    total_loss, targets, predictions = 0.0, [], []
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, enabled=amp):
            logits = model(images)
        total_loss += nn.functional.cross_entropy(logits.float(), labels,
                                                  reduction="sum").item()
        targets.append(labels.cpu())
        predictions.append(logits.argmax(dim=1).cpu())
    n = sum(len(t) for t in targets)
    targets_t = torch.cat(targets) if targets else torch.empty(0, dtype=torch.long)
    predictions_t = torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)
    return {
        "loss": total_loss / n if n else math.nan,
        "acc": (targets_t == predictions_t).double().mean().item() if n else math.nan,
        "targets": targets_t,
        "predictions": predictions_t,
        "images": n,
    }


def _companion(out: Path, suffix: str) -> Path:
    return out.with_name(f"{out.stem}.{suffix}")


def output_paths(out: str | os.PathLike) -> tuple[Path, Path, Path, Path]:
    """checkpoint, report JSON, confusion-matrix PNG, curves PNG (all side by side)."""
    out = Path(out).expanduser()
    return (out, _companion(out, "report.json"), _companion(out, "confusion.png"),
            _companion(out, "curves.png"))


def train(
    data: str | os.PathLike | DatasetSplits,
    out: str | os.PathLike,
    options: FinetuneOptions | None = None,
    *,
    progress: Callable[[TrainingProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    say: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune on ``data`` (a folder, or splits from ``datasets.scan``) and write the
    checkpoint ``out`` plus its report and PNGs.  ``progress`` is called after every
    batch and epoch; ``should_stop()`` is checked before every batch and raises
    ``TrainingCancelled`` (nothing is written then); ``say`` receives sentences for the
    user (default: the log).  Raises ``DatasetError``, ``FinetuneError`` or
    ``ModelLoadError`` with a message for bad data, options or starting weights."""
    options = (options or FinetuneOptions()).validate()
    say = say or log.info
    progress = progress or (lambda p: None)
    should_stop = should_stop or (lambda: False)
    started = time.perf_counter()
    out = output_paths(out)[0]
    if out.is_dir():
        raise FinetuneError(f"--out {out} is a folder; give a file name such as {out}/model.pt")
    device = resolve_device(options.device)
    amp = device.type == "cuda" if options.amp is None else options.amp and device.type == "cuda"
    seed_everything(options.seed)

    splits = _load_data(data, options, say)
    counts = list(splits.counts("train").values())
    backbone = choose_backbone(options)
    say(f"Backbone: {backbone.why}")
    if options.strategy == "head" and not backbone.pretrained:
        say("Warning: --strategy head trains only the new head on top of random features; "
            "use --strategy full when starting from random weights.")
    if options.image_size % 32 and backbone.arch == "efficientnet_lite0":
        say(f"Note: efficientnet_lite0 is padded for multiples of 32; --image-size "
            f"{options.image_size} works, {32 * max(1, round(options.image_size / 32))} fits "
            "it exactly.")
    if options.class_weights == "auto":
        say("Class weights (inverse frequency): " + ", ".join(
            f"{c} {w:.2f}" for c, w in zip(splits.classes, class_weights(counts).tolist())
        ) + ".")
        if options.sampler == "weighted":
            say("Note: class weights and the weighted sampler both correct the imbalance; "
                "together they over-correct it. One of them is usually enough.")

    trainer = Trainer(backbone, splits, options, device, amp, progress, should_stop)
    say(f"Training: strategy {options.strategy}, {options.optimizer} (head lr "
        f"{options.head_lr:g}, weight decay {options.decay:g}), label smoothing "
        f"{options.label_smoothing:g}, up to {options.epochs} epochs (patience "
        f"{options.patience}), batch {options.batch_size}, {options.image_size}px, "
        f"batch-norm statistics {'updated' if trainer.update_bn_stats else 'frozen'}, on "
        f"{device}{' with AMP' if amp else ''}.")

    # Epochs, with early stopping on the validation loss ----------------------------------
    stopper = EarlyStopping(options.patience, options.min_delta)
    best_state = None
    history: list[dict] = []
    for epoch in range(1, options.epochs + 1):
        record = trainer.train_epoch(epoch)
        val = evaluate(trainer.model, trainer.val_loader, device, amp)
        record.update(val_loss=round(val["loss"], 6), val_acc=round(val["acc"], 6))
        record["best"] = stopper.step(val["loss"], epoch)
        if record["best"]:
            best_state = {k: v.detach().to("cpu", copy=True)
                          for k, v in trainer.model.state_dict().items()}
        record["seconds"] = round(time.perf_counter() - record.pop("started"), 2)
        history.append(record)
        say(f"epoch {epoch}/{options.epochs}: train loss {record['train_loss']:.4f} acc "
            f"{record['train_acc']:.3f} | val loss {record['val_loss']:.4f} acc "
            f"{record['val_acc']:.3f} | {record['seconds']:.1f} s"
            + ("  (best so far)" if record["best"] else ""))
        progress(TrainingProgress(
            "epoch", epoch, options.epochs, trainer.steps_per_epoch, trainer.steps_per_epoch,
            epoch / options.epochs, metrics={k: record[k] for k in (
                "train_loss", "train_acc", "val_loss", "val_acc")},
        ))
        if stopper.should_stop and epoch < options.epochs:
            say(f"Early stopping: the validation loss has not improved for "
                f"{options.patience} epoch(s); keeping epoch {stopper.best_epoch} "
                f"(val loss {stopper.best:.4f}).")
            break
    trainer.model.load_state_dict(best_state)

    # The test images, evaluated once, with the kept weights -------------------------------
    if should_stop():
        raise TrainingCancelled("cancelled before the final evaluation")
    split = "test" if splits.test else "val"
    loader = trainer.eval_loader(splits.test) if splits.test else trainer.val_loader
    final = evaluate(trainer.model, loader, device, amp)
    cm = training_report.confusion_matrix(final["targets"], final["predictions"],
                                          len(splits.classes))
    evaluation = {"split": split, "loss": round(final["loss"], 6),
                  **training_report.classification_metrics(cm, splits.classes),
                  "bursts": splits.bursts}
    say(training_report.headline(evaluation))
    progress(TrainingProgress("test", len(history), options.epochs, fraction=1.0,
                              metrics={"accuracy": evaluation["accuracy"]}))

    criterion = open_set(trainer, say)
    result = _write_outputs(out, trainer, history, stopper, evaluation, started, criterion)
    if options.int8:
        result.report["int8"] = write_int8(out, trainer, loader, split, say)
        training_report.write_json(result.report_path, result.report)
    progress(TrainingProgress("done", len(history), options.epochs, fraction=1.0,
                              metrics=result.report["metrics"], message=str(out)))
    return result


def _load_data(data, options: FinetuneOptions, say) -> DatasetSplits:
    if isinstance(data, DatasetSplits):
        splits = data
    else:
        bar = _bar_factory(options, desc="checking images", unit="img")
        splits = datasets.scan(data, seed=options.seed, fractions=tuple(options.split),
                               progress=bar, bursts=options.bursts,
                               burst_gap=options.burst_gap)
    for note in splits.notes:
        say(f"Data: {note}.")
    if splits.skipped:
        examples = "; ".join(f"{s.path.name}: {s.reason}" for s in splits.skipped[:3])
        say(f"Data: skipped {len(splits.skipped)} file(s) that are not usable images "
            f"(e.g. {examples}); the report lists them.")
    if not splits.train or not splits.val:
        raise DatasetError(
            f"{splits.root}: too few images to train and validate ({len(splits.train)} for "
            f"training, {len(splits.val)} for validation); every class needs at least 2."
        )
    counts = splits.counts("train")
    say(f"Data: {len(splits.classes)} classes; train/val/test images: {len(splits.train)}/"
        f"{len(splits.val)}/{len(splits.test)}; training images per class: "
        + ", ".join(f"{c} {n}" for c, n in counts.items()) + ".")
    return splits


class Trainer:
    """The model, its optimizer and schedule, and one epoch of training."""

    def __init__(self, backbone: Backbone, splits: DatasetSplits, options: FinetuneOptions,
                 device: torch.device, amp: bool, progress, should_stop):
        self.backbone, self.splits, self.options = backbone, splits, options
        self.device, self.amp = device, amp
        self.progress, self.should_stop = progress, should_stop
        self.model = build_finetune_model(backbone, len(splits.classes)).to(device)
        backbone.module = None  # the copy in `model` is all that is needed
        self.groups = layer_groups(self.model, backbone.arch)
        self.update_bn_stats = (not backbone.pretrained if options.update_bn_stats is None
                                else options.update_bn_stats)
        self.rates = group_learning_rates(self.groups, options, backbone.pretrained)
        self.optimizer = make_optimizer(self.groups, self.rates, options)
        self.criterion = make_criterion(list(splits.counts("train").values()), options, device)
        self.loader = train_loader(splits.train, options, backbone.mean, backbone.std, device)
        self.val_loader = self.eval_loader(splits.val)
        self.steps_per_epoch = len(self.loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(
            self.steps_per_epoch * options.epochs,
            round(options.warmup_epochs * self.steps_per_epoch),
        ))
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def eval_loader(self, samples):
        return eval_loader(samples, self.options, self.backbone.mean, self.backbone.std,
                           self.device)

    def train_epoch(self, epoch: int) -> dict:
        options, model, device = self.options, self.model, self.device
        record = {"epoch": epoch, "started": time.perf_counter()}
        active = trainable_groups(self.groups, options.strategy, epoch, options.head_epochs)
        set_trainable(model, self.groups, active)
        model.train()
        freeze_norm_statistics(model, all_layers=not self.update_bn_stats)
        seen, loss_sum, correct = 0, 0.0, 0
        bar = _bar_factory(options, desc=f"epoch {epoch}/{options.epochs}", unit="batch",
                           total=self.steps_per_epoch, leave=False)(self.loader)
        for batch, (images, labels) in enumerate(bar, start=1):
            if self.should_stop():
                raise TrainingCancelled(f"cancelled in epoch {epoch}, batch {batch}")
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=self.amp):
                logits = model(images)
                loss = self.criterion(logits.float(), labels)
            if not torch.isfinite(loss):
                raise FinetuneError(
                    f"the training loss became {loss.item()} in epoch {epoch}: the learning "
                    f"rate ({options.head_lr:g}) is probably too high; try --lr "
                    f"{options.head_lr / 10:g}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            seen += len(labels)
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum().item()
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
            self.progress(TrainingProgress(
                "train", epoch, options.epochs, batch, self.steps_per_epoch,
                ((epoch - 1) + batch / self.steps_per_epoch) / options.epochs,
            ))
        if hasattr(bar, "close"):
            bar.close()
        record.update(
            train_loss=round(loss_sum / seen, 6),
            train_acc=round(correct / seen, 6),
            lr={g["name"]: round(g["lr"], 8) for g in self.optimizer.param_groups},
            trainable=active,
        )
        return record


def _write_outputs(out: Path, trainer: Trainer, history: list[dict], stopper: EarlyStopping,
                   evaluation: dict, started: float, criterion: dict | None = None
                   ) -> FinetuneResult:
    """The report, the two PNGs, then the checkpoint (last, atomically: when it exists,
    everything beside it is complete)."""
    out, report_path, confusion_png, curves_png = output_paths(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    options, backbone, splits = trainer.options, trainer.backbone, trainer.splits
    classes = splits.classes
    best = history[stopper.best_epoch - 1]
    test_acc = evaluation["accuracy"] if evaluation["split"] == "test" else None
    metrics = {
        "val_accuracy": best["val_acc"],
        "val_loss": best["val_loss"],
        "test_accuracy": test_acc,
        "macro_f1": evaluation["macro_avg"]["f1"],
        "evaluated_on": evaluation["split"],
        **({"bursts": {c: b["bursts"] for c, b in splits.bursts.items()},
            "untested": splits.untested} if splits.bursts else {}),
        **({"caveat": caveat} if (caveat := training_report.caveat(evaluation)) else {}),
        "best_epoch": stopper.best_epoch,
        "epochs_run": len(history),
        "train_images": len(splits.train),
        "strategy": options.strategy,
        "backbone": backbone.arch,
        "pretrained": backbone.pretrained,
        "image_size": options.image_size,
    }
    title = f"{out.name}: {backbone.arch}, {len(classes)} classes"
    training_report.plot_confusion_matrix(
        confusion_png, evaluation["confusion_matrix"], classes,
        f"{title}\n{evaluation['split']} accuracy {evaluation['accuracy']:.3f}"
        + (f" (classes with < {training_report.MIN_SUPPORT} images: "
           f"{', '.join(evaluation['thin_classes'])})" if evaluation["thin_classes"] else ""),
    )
    training_report.plot_curves(curves_png, history, stopper.best_epoch, title)
    counts = list(splits.counts("train").values())
    report = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "checkpoint": str(out),
        "files": {"confusion_matrix": confusion_png.name, "curves": curves_png.name},
        "classes": classes,
        "data": splits.describe(),
        "backbone": {"arch": backbone.arch, "pretrained": backbone.pretrained,
                     "source": backbone.source, "why": backbone.why,
                     "mean": list(backbone.mean), "std": list(backbone.std)},
        "options": {**asdict(options), "lr": options.head_lr, "weight_decay": options.decay,
                    "device": str(trainer.device), "amp": trainer.amp,
                    "split": list(options.split), "update_bn_stats": trainer.update_bn_stats},
        "learning_rates": trainer.rates,
        "class_weights": (dict(zip(classes, class_weights(counts).tolist()))
                          if options.class_weights == "auto" else None),
        "epochs": history,
        "best_epoch": stopper.best_epoch,
        "epochs_run": len(history),
        "stopped_early": len(history) < options.epochs,
        "val": {"loss": best["val_loss"], "accuracy": best["val_acc"]},
        "test_accuracy": test_acc,
        "evaluation": evaluation,
        "openset": ({k: v for k, v in criterion.items() if k != "bank"}
                    if criterion else None),
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 1),
    }
    training_report.write_json(report_path, report)
    model_loader.save_checkpoint(
        out, trainer.model.cpu(), arch=backbone.arch, classes=classes,
        input_size=options.image_size, mean=backbone.mean, std=backbone.std, metrics=metrics,
        guard=guard_images(trainer), openset=criterion,
    )
    return FinetuneResult(out, report_path, confusion_png, curves_png, report)


def open_set(trainer: Trainer, say) -> dict | None:
    """The trained model's "I'm not sure" criterion (``webapp.engines.openset.fit_knn``):
    the pooled features of its training pictures as the bank, and the distance that keeps
    95 % of its validation pictures -- from bursts it did not train on, where the class
    has any.  None (and the model never answers "unknown") for a network without the
    feature map the server reads it from."""
    from webapp.engines import openset
    from webapp.engines.build import BuildError

    model = trainer.model.cpu().eval()
    try:
        layer, network = openset.extractor(model, trainer.options.image_size)
    except BuildError as exc:
        say(f"No \"I'm not sure\" answers for this model: {exc}.")
        return None
    train = openset.pooled_features(network, trainer.eval_loader(trainer.splits.train))
    val = openset.pooled_features(network, trainer.val_loader)
    criterion = openset.fit_knn(train, val, layer=layer)
    say(f"\"I'm not sure\": a picture whose nearest training picture is farther than "
        f"{criterion['threshold']:.3f} (keeps {criterion['kept']:.0%} of the "
        f"{criterion['validation_images']} validation pictures) is answered as unknown.")
    return criterion


def guard_images(trainer: Trainer, limit: int = 32):
    """Up to ``limit`` validation (and test) images, spread over the classes, as the
    uint8 crops the served model sees: kept in the checkpoint, so that the server can
    check on the model's own kind of pictures that its int8 network answers like fp32
    before it serves it (QUANTIZE=auto)."""
    import numpy as np

    samples = trainer.splits.val + trainer.splits.test
    if not samples:
        return None
    chosen = samples[::max(1, len(samples) // limit)][:limit]
    mean = np.asarray(trainer.backbone.mean, np.float32)[:, None, None]
    std = np.asarray(trainer.backbone.std, np.float32)[:, None, None]
    crops = [np.clip(np.round((image.numpy() * std + mean) * 255), 0, 255).astype(np.uint8)
             for batch, _ in trainer.eval_loader(chosen) for image in batch]
    return np.stack(crops)


def write_int8(out: Path, trainer: Trainer, loader, split: str, say) -> dict:
    """``--int8``: the trained model as a static int8 ONNX file beside the checkpoint
    (QDQ, what ``QUANTIZE=static`` serves: runs in ONNX Runtime and OpenVINO), calibrated
    on up to ``MAX_CALIBRATION_SAMPLES`` (96) training images with the serving
    preprocessing, and how often it agrees with the fp32 model on the evaluation images
    of ``loader`` (the report's ``int8``)."""
    from webapp.engines.build import export_onnx, quantize_onnx
    from webapp.engines.calibration import MAX_CALIBRATION_SAMPLES

    model = trainer.model.cpu().eval()
    path = _companion(out, "int8.onnx")
    train = trainer.splits.train
    limit = MAX_CALIBRATION_SAMPLES
    calibration = train[::max(1, len(train) // limit)][:limit]
    arrays = [batch[i:i + 1].numpy() for batch, _ in trainer.eval_loader(calibration)
              for i in range(len(batch))]
    with tempfile.TemporaryDirectory(prefix="finetune-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, trainer.options.image_size, fp32)
        quantize_onnx(fp32, arrays, path)

    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    agree = right_int8 = right_fp32 = total = 0
    with torch.no_grad():
        for images, targets in loader:
            fp = model(images).argmax(1)
            q = torch.from_numpy(session.run(["logits"], {"input": images.numpy()})[0]).argmax(1)
            agree += int((fp == q).sum())
            right_fp32 += int((fp == targets).sum())
            right_int8 += int((q == targets).sum())
            total += len(targets)
    info = {"file": path.name, "calibration_images": len(arrays), "split": split,
            "images": total, "accuracy": round(right_int8 / max(1, total), 6),
            "fp32_accuracy": round(right_fp32 / max(1, total), 6),
            "top1_agreement": round(agree / max(1, total), 6)}
    say(f"int8: {path} (calibrated on {len(arrays)} training images): {split} accuracy "
        f"{info['accuracy']:.3f} (fp32 {info['fp32_accuracy']:.3f}), same answer as fp32 "
        f"for {agree} of {total} images. The server builds the same from the checkpoint "
        f"with QUANTIZE=static and CALIBRATION_DIR set to the training images.")
    return info


def _bar_factory(options: FinetuneOptions, **kwargs):
    """Wrap an iterable in a tqdm bar when bars are on, else return it unchanged."""
    if not options.progress_bar:
        return lambda iterable: iterable
    from tqdm.auto import tqdm

    return lambda iterable: tqdm(iterable, dynamic_ncols=True, **kwargs)


# --------------------------------------------------------------------------- command line


def _auto_workers() -> int:
    from webapp.config import available_cpus

    cpus = available_cpus()
    return 0 if cpus <= 2 else min(4, cpus // 2)


def build_parser() -> argparse.ArgumentParser:
    defaults = FinetuneOptions()
    p = argparse.ArgumentParser(
        prog="python -m webapp.finetune",
        description="Fine-tune an ImageNet model on your image folders and write a "
        "checkpoint the server serves (MODEL_WEIGHTS=... or the admin page), with a JSON "
        "report, a confusion matrix and training curves beside it.",
        epilog="DATA_DIR is train/ val/ [test/] folders of class folders, or just class "
        "folders (then split 70/15/15 per class with --seed). Example: python -m "
        "webapp.finetune photos/ --out models/parts.pt --epochs 20",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of class folders")
    p.add_argument("--out", "-o", required=True, help="checkpoint file to write (e.g. model.pt)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=ARCHS, default=defaults.arch,
                   help="auto: resnet18 when its ImageNet weights are on this machine, "
                   "otherwise the bundled pretrained efficientnet_lite0")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction,
                   default=defaults.pretrained, help="start from ImageNet weights")
    g.add_argument("--weights", metavar="FILE", default=None,
                   help="start from this weights file or checkpoint (default: MODEL_WEIGHTS)")
    g = p.add_argument_group("training")
    g.add_argument("--strategy", choices=STRATEGIES, default=defaults.strategy,
                   help="head: train only the new head; full: everything, with layer-wise "
                   "learning rates; progressive: head first, then one block more per epoch")
    g.add_argument("--epochs", type=int, default=defaults.epochs)
    g.add_argument("--patience", type=int, default=defaults.patience,
                   help="stop after this many epochs without a better validation loss "
                   "(0 = never); the best epoch is kept")
    g.add_argument("--batch-size", type=int, default=defaults.batch_size)
    g.add_argument("--image-size", type=int, default=defaults.image_size,
                   help="training and serving resolution (pixels, square)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate of the new head (default: 1e-3 adamw, 1e-2 sgd)")
    g.add_argument("--backbone-lr-scale", type=float, default=defaults.backbone_lr_scale,
                   help="learning rate of the last backbone block = lr × this")
    g.add_argument("--layer-decay", type=float, default=defaults.layer_decay,
                   help="each block further down: × this again")
    g.add_argument("--weight-decay", type=float, default=None,
                   help="default: 0.01 adamw, 1e-4 sgd (never on biases and norms)")
    g.add_argument("--momentum", type=float, default=defaults.momentum, help="SGD momentum")
    g.add_argument("--warmup-epochs", type=float, default=defaults.warmup_epochs,
                   help="linear warm-up before the cosine schedule")
    g.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    g.add_argument("--head-epochs", type=int, default=defaults.head_epochs,
                   help="progressive: epochs with only the head before unfreezing")
    g.add_argument("--update-bn-stats", action=argparse.BooleanOptionalAction, default=None,
                   help="update batch-norm running statistics while training (default: only "
                   "from random weights; from pretrained ones they stay frozen)")
    g = p.add_argument_group("data")
    g.add_argument("--class-weights", choices=("none", "auto"), default=defaults.class_weights,
                   help="auto: weight the loss by inverse class frequency")
    g.add_argument("--sampler", choices=("shuffle", "weighted"), default=defaults.sampler,
                   help="weighted: draw every class equally often")
    g.add_argument("--color-jitter", action=argparse.BooleanOptionalAction,
                   default=defaults.color_jitter,
                   help="mild colour jitter; turn it off when colour is the signal")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=defaults.flip,
                   help="random horizontal flips; turn off when left/right matters")
    g.add_argument("--int8", action="store_true",
                   help="also write MODEL.int8.onnx: static int8 (what QUANTIZE=static "
                   "serves), calibrated on training images, with its accuracy in the report")
    g.add_argument("--bursts", choices=bursts_.MODES, default=defaults.bursts,
                   help="keep pictures taken together (file times within --burst-gap "
                   "seconds of each other) in the same split, so the test pictures are "
                   "never near-copies of training ones. auto: where the times show bursts "
                   "(a class whose files were all written at once is split one by one); "
                   "times: always; off: every picture on its own")
    g.add_argument("--burst-gap", type=float, default=defaults.burst_gap,
                   help="seconds between two pictures that starts a new burst")
    g.add_argument("--seed", type=int, default=defaults.seed,
                   help="seed for the split, the initialisation and the shuffling")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:N, mps")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on with CUDA; CUDA only)")
    g.add_argument("--workers", type=int, default=None,
                   help="data loading processes (default: 0 on ≤2 CPUs, else up to 4)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def options_from_args(args: argparse.Namespace) -> FinetuneOptions:
    return FinetuneOptions(
        arch=args.arch, pretrained=args.pretrained, weights=args.weights,
        strategy=args.strategy, epochs=args.epochs, batch_size=args.batch_size,
        image_size=args.image_size, optimizer=args.optimizer, lr=args.lr,
        backbone_lr_scale=args.backbone_lr_scale, layer_decay=args.layer_decay,
        weight_decay=args.weight_decay, momentum=args.momentum,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        patience=args.patience, class_weights=args.class_weights, sampler=args.sampler,
        color_jitter=args.color_jitter, flip=args.flip, head_epochs=args.head_epochs,
        update_bn_stats=args.update_bn_stats,
        device=args.device, amp=args.amp,
        workers=_auto_workers() if args.workers is None else args.workers,
        seed=args.seed, progress_bar=not args.no_progress, int8=args.int8,
        bursts=args.bursts, burst_gap=args.burst_gap,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    def say(message: str) -> None:
        print(message, flush=True)

    try:
        result = train(args.data_dir, args.out, options_from_args(args), say=say)
    except (DatasetError, FinetuneError, ModelLoadError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    report = result.report
    print(f"Kept epoch {report['best_epoch']} of {report['epochs_run']}: val accuracy "
          f"{report['val']['accuracy']:.3f}"
          + (f", test accuracy {report['test_accuracy']:.3f}"
             if report["test_accuracy"] is not None else "")
          + (f"; but {report['metrics']['caveat']}" if report["metrics"].get("caveat") else ""))
    print(f"Wrote {result.checkpoint}\n      {result.report_path}\n      "
          f"{result.confusion_png}\n      {result.curves_png}"
          + (f"\n      {result.checkpoint.with_name(report['int8']['file'])}"
             if "int8" in report else ""))
    print(f"Serve it: MODEL_WEIGHTS={result.checkpoint} gunicorn app:app")
    return 0


if __name__ == "__main__":
    sys.exit(main())
