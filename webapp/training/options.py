"""The fine-tuning recipe's options: their defaults and checks (``FinetuneOptions``), the
command line that sets them (``build_parser``), and the small types a run reports with.

No torch here: the Teach job queue and the command line's ``--help`` read these without
loading a deep-learning library.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from webapp.config import available_cpus
from webapp.training import bursts as bursts_

ARCHS = ("auto", "resnet18", "efficientnet_lite0")
STRATEGIES = ("head", "full", "progressive")
OPTIMIZERS = ("adamw", "sgd")
DEFAULT_LR = {"adamw": 1e-3, "sgd": 1e-2}
DEFAULT_WEIGHT_DECAY = {"adamw": 0.01, "sgd": 1e-4}
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)  # train / val / test, when the folder has no splits


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
    split: tuple[float, float, float] = DEFAULT_FRACTIONS
    bursts: str = "auto"  # auto | times | off: how file times group pictures (training.bursts)
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
    """What a progress callback receives: before reading the pictures (``stage="data"``)
    and loading the starting weights (``"backbone"``), after every training batch
    (``"train"``), after every epoch's validation (``"epoch"``, with ``metrics``) and at
    the end (``"test"``, ``"openset"`` before the "I'm not sure" criterion, ``"done"``).
    ``fraction`` goes from 0 to 1 over ``epochs`` epochs."""

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



def progress_bars(options: FinetuneOptions, **kwargs):
    """Wrap an iterable in a tqdm bar when bars are on, else return it unchanged."""
    if not options.progress_bar:
        return lambda iterable: iterable
    from tqdm.auto import tqdm

    return lambda iterable: tqdm(iterable, dynamic_ncols=True, **kwargs)



def _auto_workers() -> int:
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
    _model_arguments(p.add_argument_group("model"), defaults)
    _training_arguments(p.add_argument_group("training"), defaults)
    _data_arguments(p.add_argument_group("data"), defaults)
    _hardware_arguments(p.add_argument_group("hardware"), defaults)
    return p


def _model_arguments(g, defaults: FinetuneOptions) -> None:
    g.add_argument("--arch", choices=ARCHS, default=defaults.arch,
                   help="auto: resnet18 when its ImageNet weights are on this machine, "
                   "otherwise the bundled pretrained efficientnet_lite0")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction,
                   default=defaults.pretrained, help="start from ImageNet weights")
    g.add_argument("--weights", metavar="FILE", default=None,
                   help="start from this weights file or checkpoint (default: MODEL_WEIGHTS)")


def _training_arguments(g, defaults: FinetuneOptions) -> None:
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


def _data_arguments(g, defaults: FinetuneOptions) -> None:
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


def _hardware_arguments(g, defaults: FinetuneOptions) -> None:
    g.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:N, mps")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on with CUDA; CUDA only)")
    g.add_argument("--workers", type=int, default=None,
                   help="data loading processes (default: 0 on ≤2 CPUs, else up to 4)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


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
