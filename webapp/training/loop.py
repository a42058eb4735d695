"""The train/evaluate loop: the optimizer (one parameter group per layer group, decay on
weights only), the warm-up + cosine schedule, the loss, one epoch of training
(``Trainer.train_epoch``), evaluation and early stopping on the validation loss."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import torch
from torch import nn

from webapp.training.backbone import (
    Backbone,
    LayerGroup,
    build_finetune_model,
    freeze_norm_statistics,
    layer_groups,
    set_trainable,
    trainable_groups,
)
from webapp.training.data import DatasetSplits, eval_loader, train_loader
from webapp.training.options import (
    FinetuneError,
    FinetuneOptions,
    TrainingCancelled,
    TrainingProgress,
    progress_bars,
)


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



def class_weights(counts: list[int]) -> torch.Tensor:
    """Inverse class frequency, scaled so a balanced dataset gets all ones:
    ``N / (C × n_c)`` (scikit-learn's "balanced")."""
    counts_t = torch.tensor(counts, dtype=torch.float64).clamp(min=1)
    return (counts_t.sum() / (len(counts) * counts_t)).float()


def make_criterion(counts: list[int], options: FinetuneOptions, device) -> nn.Module:
    weight = class_weights(counts).to(device) if options.class_weights == "auto" else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=options.label_smoothing)


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
        bar = progress_bars(options, desc=f"epoch {epoch}/{options.epochs}", unit="batch",
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

