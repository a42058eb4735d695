"""Fine-tune an ImageNet model on your own image folders and write a checkpoint the
server serves (format v1, see ``save_checkpoint``).

    python -m webapp.finetune DATA_DIR --out model.pt        (or: flask --app app finetune)

``DATA_DIR`` holds ``train/ val/ [test/]`` folders of class folders, or just class folders
(then split 70/15/15, stratified, fixed seed) -- see ``webapp.training.data``.

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
so a background job can call it; ``webapp.finetune`` is the command line.  The parts,
laid out as torchvision's classification reference scripts are: ``options`` (defaults,
checks, the parser), ``backbone`` (starting weights, new head, layer groups),
``transforms``, ``data`` (folders, splits, loaders), ``loop`` (optimizer, schedule, one
epoch, evaluation), ``report`` (metrics, JSON, PNGs), and this module, which runs them in
order and writes what goes beside the weights.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from webapp.checkpoints.v1 import save_checkpoint
from webapp.engines import openset
from webapp.engines.build import BuildError, export_onnx
from webapp.engines.calibration import MAX_CALIBRATION_SAMPLES
from webapp.engines.precision import quantize_onnx
from webapp.messages import Message
from webapp.training import report as training_report
from webapp.training.backbone import choose_backbone
from webapp.training.bursts import training_bursts
from webapp.training.data import DatasetSplits, load_splits, views_loader
from webapp.training.loop import (
    EarlyStopping,
    Trainer,
    class_weights,
    evaluate,
    resolve_device,
    seed_everything,
)
from webapp.training.options import (
    FinetuneError,
    FinetuneOptions,
    FinetuneResult,
    TrainingCancelled,
    TrainingProgress,
)

log = logging.getLogger(__name__)


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
    language: str | None = None,
) -> FinetuneResult:
    """Fine-tune on ``data`` (a folder, or splits from ``data.scan``) and write the
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

    progress(TrainingProgress("data", 0, options.epochs))
    splits = load_splits(data, options, say)
    progress(TrainingProgress("backbone", 0, options.epochs))
    backbone = choose_backbone(options)
    say(f"Backbone: {backbone.why}")
    for warning in _warnings(options, backbone, splits):
        say(warning)
    trainer = Trainer(backbone, splits, options, device, amp, progress, should_stop)
    say(f"Training: strategy {options.strategy}, {options.optimizer} (head lr "
        f"{options.head_lr:g}, weight decay {options.decay:g}), label smoothing "
        f"{options.label_smoothing:g}, up to {options.epochs} epochs (patience "
        f"{options.patience}), batch {options.batch_size}, {options.image_size}px, "
        f"batch-norm statistics {'updated' if trainer.update_bn_stats else 'frozen'}, on "
        f"{device}{' with AMP' if amp else ''}.")

    history, stopper = _fit(trainer, say)
    if should_stop():
        raise TrainingCancelled("cancelled before the final evaluation")
    loader, evaluation = _final_evaluation(trainer, say)
    progress(TrainingProgress("test", len(history), options.epochs, fraction=1.0,
                              metrics={"accuracy": evaluation["accuracy"]}))

    progress(TrainingProgress("openset", len(history), options.epochs, fraction=1.0))
    criterion = open_set(trainer, say)
    result = _write_outputs(out, trainer, history, stopper, evaluation, started, criterion,
                            language)
    if options.int8:
        result.report["int8"] = write_int8(out, trainer, loader, evaluation["split"], say)
        training_report.write_json(result.report_path, result.report)
    progress(TrainingProgress("done", len(history), options.epochs, fraction=1.0,
                              metrics=result.report["metrics"], message=str(out)))
    return result


def _warnings(options: FinetuneOptions, backbone, splits: DatasetSplits) -> list[str]:
    """Sentences about option choices that work but probably not as the user hopes."""
    notes = []
    if options.strategy == "head" and not backbone.pretrained:
        notes.append("Warning: --strategy head trains only the new head on top of random "
                     "features; use --strategy full when starting from random weights.")
    if options.image_size % 32 and backbone.arch == "efficientnet_lite0":
        notes.append(f"Note: efficientnet_lite0 is padded for multiples of 32; --image-size "
                     f"{options.image_size} works, "
                     f"{32 * max(1, round(options.image_size / 32))} fits it exactly.")
    if options.class_weights == "auto":
        counts = list(splits.counts("train").values())
        notes.append("Class weights (inverse frequency): " + ", ".join(
            f"{c} {w:.2f}" for c, w in zip(splits.classes, class_weights(counts).tolist())
        ) + ".")
        if options.sampler == "weighted":
            notes.append("Note: class weights and the weighted sampler both correct the "
                         "imbalance; together they over-correct it. One of them is usually "
                         "enough.")
    return notes


def _fit(trainer: Trainer, say) -> tuple[list[dict], EarlyStopping]:
    """The epochs, with early stopping on the validation loss; the model ends with the
    weights of the best epoch."""
    options = trainer.options
    stopper = EarlyStopping(options.patience, options.min_delta)
    best_state = None
    history: list[dict] = []
    for epoch in range(1, options.epochs + 1):
        record = trainer.train_epoch(epoch)
        val = evaluate(trainer.model, trainer.val_loader, trainer.device, trainer.amp)
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
        trainer.progress(TrainingProgress(
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
    return history, stopper


def _final_evaluation(trainer: Trainer, say) -> tuple[torch.utils.data.DataLoader, dict]:
    """The test images (the validation ones when there are none), evaluated once, with the
    kept weights: the loader and the evaluation for the report."""
    splits = trainer.splits
    split = "test" if splits.test else "val"
    loader = trainer.eval_loader(splits.test) if splits.test else trainer.val_loader
    final = evaluate(trainer.model, loader, trainer.device, trainer.amp)
    cm = training_report.confusion_matrix(final["targets"], final["predictions"],
                                          len(splits.classes))
    evaluation = {"split": split, "loss": round(final["loss"], 6),
                  **training_report.classification_metrics(cm, splits.classes),
                  "bursts": splits.bursts}
    say(training_report.headline(evaluation))
    return loader, evaluation


def _write_outputs(out: Path, trainer: Trainer, history: list[dict], stopper: EarlyStopping,
                   evaluation: dict, started: float, criterion: dict | None = None,
                   language: str | None = None) -> FinetuneResult:
    """The report, the two PNGs (their words in ``language``), then the checkpoint (last,
    atomically: when it exists, everything beside it is complete)."""
    out, report_path, confusion_png, curves_png = output_paths(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    options, backbone = trainer.options, trainer.backbone
    metrics = _checkpoint_metrics(trainer, history, stopper, evaluation)
    title = Message("%(model)s: %(arch)s, %(count)s classes", model=out.name,
                    arch=backbone.arch, count=len(trainer.splits.classes))
    split = Message("test") if evaluation["split"] == "test" else Message("val")
    accuracy = f"{evaluation['accuracy']:.3f}"
    training_report.plot_confusion_matrix(
        confusion_png, evaluation["confusion_matrix"], trainer.splits.classes,
        Message("%(title)s\n%(split)s accuracy %(accuracy)s (classes with < %(count)s "
                "images: %(classes)s)", title=title, split=split, accuracy=accuracy,
                count=training_report.MIN_SUPPORT,
                classes=", ".join(evaluation["thin_classes"]))
        if evaluation["thin_classes"] else
        Message("%(title)s\n%(split)s accuracy %(accuracy)s", title=title, split=split,
                accuracy=accuracy), language=language)
    training_report.plot_curves(curves_png, history, stopper.best_epoch, title,
                                language=language)
    report = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "checkpoint": str(out),
        "files": {"confusion_matrix": confusion_png.name, "curves": curves_png.name},
        **_run_description(trainer),
        "epochs": history,
        "best_epoch": stopper.best_epoch,
        "epochs_run": len(history),
        "stopped_early": len(history) < options.epochs,
        "val": {"loss": metrics["val_loss"], "accuracy": metrics["val_accuracy"]},
        "test_accuracy": metrics["test_accuracy"],
        "evaluation": evaluation,
        "openset": ({k: v for k, v in criterion.items() if k != "bank"}
                    if criterion else None),
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 1),
    }
    training_report.write_json(report_path, report)
    save_checkpoint(
        out, trainer.model.cpu(), arch=backbone.arch, classes=trainer.splits.classes,
        input_size=options.image_size, mean=backbone.mean, std=backbone.std, metrics=metrics,
        guard=guard_images(trainer), openset=criterion,
    )
    return FinetuneResult(out, report_path, confusion_png, curves_png, report)


def _checkpoint_metrics(trainer: Trainer, history: list[dict], stopper: EarlyStopping,
                        evaluation: dict) -> dict:
    """What the checkpoint says about itself (the model card): the kept epoch's
    validation figures, the final evaluation, and how honest its test was (bursts)."""
    options, backbone, splits = trainer.options, trainer.backbone, trainer.splits
    best = history[stopper.best_epoch - 1]
    return {
        "val_accuracy": best["val_acc"],
        "val_loss": best["val_loss"],
        "test_accuracy": evaluation["accuracy"] if evaluation["split"] == "test" else None,
        "macro_f1": evaluation["macro_avg"]["f1"],
        "evaluated_on": evaluation["split"],
        **({"bursts": {c: b["bursts"] for c, b in splits.bursts.items()},
            "untested": splits.untested} if splits.bursts else {}),
        **({"caveat": str(caveat), "caveat_facts": training_report.caveat_facts(evaluation)}
           if (caveat := training_report.caveat(evaluation)) else {}),
        "best_epoch": stopper.best_epoch,
        "epochs_run": len(history),
        "train_images": len(splits.train),
        "strategy": options.strategy,
        "backbone": backbone.arch,
        "pretrained": backbone.pretrained,
        "image_size": options.image_size,
    }


def _run_description(trainer: Trainer) -> dict:
    """The report's account of the run's inputs: classes, data, backbone, options."""
    options, backbone, splits = trainer.options, trainer.backbone, trainer.splits
    classes = splits.classes
    counts = list(splits.counts("train").values())
    return {
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
    }


# New views (``transforms.new_view``) the "I'm not sure" criterion is made with: up to
# this many of each picture, at most MAX_TRAINING_VIEWS of the training pictures and
# MAX_VALIDATION_VIEWS of the validation pictures in all (each view is one pass of the
# network: about 30 ms of one core at 160 px, so at most about 10 s of a job).
NEW_VIEWS_PER_PICTURE = 8
MAX_TRAINING_VIEWS = 240
MAX_VALIDATION_VIEWS = 80


def _spread(samples: list, budget: int) -> tuple[list[int], int]:
    """Which of ``samples`` get new views, and how many each, within ``budget``."""
    if not samples:
        return [], 0
    per = max(1, min(NEW_VIEWS_PER_PICTURE, budget // len(samples)))
    chosen = range(len(samples))
    if len(samples) * per > budget:  # more pictures than the budget: every n-th one
        chosen = np.linspace(0, len(samples) - 1, budget).round().astype(int)
    return sorted(set(int(i) for i in chosen)), per


def open_set(trainer: Trainer, say) -> dict | None:
    """The trained model's "I'm not sure" criterion (``webapp.engines.openset.fit_knn``):
    the pooled features of its training pictures, and of new views of them (closer,
    farther, in a corner, turned, another light: ``transforms.new_view``), as the bank;
    the distance that keeps 95 % of new pictures, set on its validation pictures (from
    bursts it did not train on, where the class has any), on new views of them, and on
    each training picture and view measured against the other bursts.  None (and the
    model never answers "unknown") for a network without the feature map the server
    reads it from."""
    model = trainer.model.cpu().eval()
    try:
        layer, network = openset.extractor(model, trainer.options.image_size)
    except BuildError as exc:
        say(f"No \"I'm not sure\" answers for this model: {exc}.")
        return None
    splits, options, backbone = trainer.splits, trainer.options, trainer.backbone

    def views(samples: list, budget: int) -> tuple[np.ndarray, list[int], int]:
        chosen, per = _spread(samples, budget)
        if not chosen:
            return np.zeros((0, 0), np.float32), chosen, 0
        loader = views_loader([samples[i] for i in chosen], per, options, backbone.mean,
                              backbone.std, trainer.device)
        return openset.pooled_features(network, loader), chosen, per

    train = openset.pooled_features(network, trainer.eval_loader(splits.train))
    val = openset.pooled_features(network, trainer.val_loader)
    bursts = training_bursts(splits, options.burst_gap)
    train_views, chosen, per = views(splits.train, MAX_TRAINING_VIEWS)
    val_views, _, _ = views(splits.val, MAX_VALIDATION_VIEWS)
    view_bursts = None if bursts is None else np.repeat([bursts[i] for i in chosen], per)
    criterion = openset.fit_knn(train, val, layer=layer, bursts=bursts,
                                train_views=train_views, view_bursts=view_bursts,
                                val_views=val_views)
    measured = (f"{criterion['validation_images']} validation pictures and "
                f"{criterion['validation_views']} new views of them")
    if criterion["other_burst_images"]:
        measured += (f", {criterion['other_burst_images']} training pictures and views "
                     "against the other bursts")
    say(f"\"I'm not sure\": a picture whose nearest training picture or view is farther "
        f"than {criterion['threshold']:.3f} (keeps {criterion['kept']:.0%} of the "
        f"{measured}) is answered as unknown.")
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


