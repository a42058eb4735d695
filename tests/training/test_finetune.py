"""Fine-tuning for real: datasets drawn on the fly (circles, squares, triangles), the
bundled pretrained EfficientNet-Lite0 as the starting point (no ResNet18 weights in the
tests' empty TORCH_HOME), small images so a whole run takes seconds on 2 cores.  The
checkpoints are served by the real app."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import model_loader
from testkit import ROOT
from testkit.photos import encode
from testkit.shapes import SHAPES, draw, make_dataset
from testkit.weights import save_random_resnet18
from webapp import finetune
from webapp.messages import catalog_gettext, render
from webapp.training import caveat, recipe
from webapp.training import report as training_report
from webapp.training.backbone import (
    build_finetune_model,
    choose_backbone,
    layer_groups,
    trainable_groups,
)
from webapp.training.data import SPLITS, DatasetError, eval_loader, scan, train_loader
from webapp.training.loop import EarlyStopping, evaluate, make_criterion, warmup_cosine
from webapp.training.options import FinetuneError, FinetuneOptions, TrainingCancelled

FAST = dict(image_size=64, batch_size=16)  # every run here: 64 px, batches of 16


def fast(**overrides) -> FinetuneOptions:
    return FinetuneOptions(**{**FAST, **overrides})


def quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    """30 images per class, only class folders (the CLI splits them 70/15/15)."""
    return make_dataset(tmp_path_factory.mktemp("shapes") / "data", 30, seed=1)


@pytest.fixture(scope="module")
def cli_run(shapes_dir, tmp_path_factory):
    """One real fine-tuning run through the command line, shared by several tests."""
    out = tmp_path_factory.mktemp("run") / "models" / "shapes.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "webapp.finetune", str(shapes_dir), "--out", str(out),
         "--image-size", "64", "--batch-size", "16", "--epochs", "6", "--int8"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.with_name("shapes.report.json").read_text("utf-8"))
    return out, report, proc


@pytest.fixture(scope="module")
def pretrained_state():
    return model_loader.load_bundled().module.state_dict()


def same_tensors(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


# --------------------------------------------------------------------------- the main run


@pytest.mark.system
def test_cli_fine_tunes_the_bundled_pretrained_model_to_high_accuracy(cli_run):
    out, report, proc = cli_run
    # It says which backbone and why, and how the folders were split.
    assert "ResNet18's ImageNet weights are not on this machine" in proc.stdout
    assert "bundled EfficientNet-Lite0 ImageNet weights" in proc.stdout
    assert "split 70/15/15" in proc.stdout and "seed 0" in proc.stdout
    assert "epoch 1/6" in proc.stderr  # the tqdm bar of each epoch
    assert report["backbone"]["arch"] == "efficientnet_lite0"
    assert report["backbone"]["pretrained"] is True
    assert report["data"]["counts"]["train"] == {s: 20 for s in SHAPES}  # 30 -> 20/5/5
    assert report["data"]["counts"]["test"] == {s: 5 for s in SHAPES}
    assert report["val"]["accuracy"] >= 0.9
    assert report["test_accuracy"] >= 0.9
    assert report["evaluation"]["split"] == "test"
    # Layer-wise learning rates: the stem smallest, the last stage larger, the head largest.
    rates = report["learning_rates"]
    order = ["stem", "stage2", "stage3", "stage4", "stage5", "head"]
    assert [rates[g] for g in order] == sorted(rates[g] for g in order)
    assert rates["head"] == 1e-3 and rates["stage5"] == pytest.approx(1e-4)


@pytest.mark.system
def test_int8_variant_is_calibrated_on_training_images_and_answers_like_fp32(cli_run):
    """--int8 writes shapes.int8.onnx, a static int8 model calibrated on the training
    images; on fresh drawings it gives the checkpoint's answers."""
    import onnx
    import onnxruntime as ort

    from model_loader import preprocess_array

    out, report, proc = cli_run
    path = out.with_name("shapes.int8.onnx")
    int8 = report["int8"]
    assert int8["file"] == path.name
    assert int8["calibration_images"] == 60  # every training image (20 per class)
    assert int8["split"] == "test" and int8["images"] == 15
    assert int8["accuracy"] >= 0.8 and int8["top1_agreement"] >= 0.8
    assert f"int8: {path}" in proc.stdout and "QUANTIZE=static" in proc.stdout
    graph = onnx.load(path).graph
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) > 10
    assert sum(node.op_type == "DequantizeLinear" for node in graph.node) > 10

    loaded = model_loader.load_checkpoint(out)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = random.Random(99)
    drawings = [(i, draw(shape, rng)) for i, shape in enumerate(SHAPES) for _ in range(4)]
    batch = torch.stack([torch.from_numpy(preprocess_array(
        img, round(64 / 0.875), 64, loaded.mean, loaded.std)) for _, img in drawings])
    with torch.no_grad():
        fp32 = loaded.module(batch).argmax(1).tolist()
    int8_answers = session.run(None, {"input": batch.numpy()})[0].argmax(1).tolist()
    assert sum(a == b for a, b in zip(fp32, int8_answers)) >= 10  # of 12
    assert sum(a == i for a, (i, _) in zip(int8_answers, drawings)) >= 10


@pytest.mark.system
def test_checkpoint_is_format_v1_with_classes_and_metrics(cli_run):
    out, report, _ = cli_run
    raw = torch.load(out, weights_only=True)
    assert raw["format"] == "webapp-checkpoint/1"
    assert raw["classes"] == list(SHAPES)
    assert raw["arch"] == "efficientnet_lite0"
    assert raw["input_size"] == 64
    assert raw["mean"] == [0.5, 0.5, 0.5] and raw["std"] == [0.5, 0.5, 0.5]
    assert raw["metrics"]["val_accuracy"] == report["val"]["accuracy"]
    assert raw["metrics"]["test_accuracy"] == report["test_accuracy"]
    assert raw["metrics"]["best_epoch"] == report["best_epoch"]
    loaded = model_loader.load_checkpoint(out)  # what the server and the registry run
    assert loaded.labels == list(SHAPES) and loaded.input_size == 64
    # A few of its own validation images go along (uint8 crops as served): QUANTIZE=auto
    # checks int8 against fp32 on them.
    guard = raw["guard"]
    assert guard.dtype == torch.uint8 and tuple(guard.shape[1:]) == (3, 64, 64)
    assert 1 <= guard.shape[0] <= 32 and loaded.guard.shape == tuple(guard.shape)


@pytest.mark.system
def test_report_and_pngs_are_complete_and_valid(cli_run):
    out, report, _ = cli_run
    epochs = report["epochs"]
    assert len(epochs) == report["epochs_run"] >= report["best_epoch"] >= 1
    for record in epochs:
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= set(record)
        assert 0 <= record["val_acc"] <= 1 and record["val_loss"] >= 0
    best = epochs[report["best_epoch"] - 1]
    assert best["val_loss"] == min(e["val_loss"] for e in epochs)
    evaluation = report["evaluation"]
    assert set(evaluation["per_class"]) == set(SHAPES)
    for scores in evaluation["per_class"].values():
        assert all(0 <= scores[k] <= 1 for k in ("precision", "recall", "f1"))
        assert scores["support"] == 5
    cm = evaluation["confusion_matrix"]
    assert sum(map(sum, cm)) == 15
    assert evaluation["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(3)) / 15, abs=1e-4)
    for key in ("confusion_matrix", "curves"):
        png = out.with_name(report["files"][key])
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width >= 400 and img.height >= 300
            img.verify()
        # A real drawing, not a blank canvas.
        with Image.open(png) as img:
            assert len(img.convert("RGB").getcolors(1 << 20) or []) > 20


def _fresh_images_right(client) -> float:
    """Share of freshly drawn shapes (never seen in training, other sizes) that /predict
    gets right; every answer must use exactly the new class names."""
    rng = random.Random(12345)
    right = total = 0
    for shape in SHAPES:
        for n in range(5):
            img = draw(shape, rng, size=rng.choice([80, 120, 200]))
            data = {"image": (io.BytesIO(encode(img, "JPEG", quality=90)), f"{shape}{n}.jpg")}
            response = client.post("/predict", data=data, content_type="multipart/form-data")
            assert response.status_code == 200, response.get_data(as_text=True)
            predictions = response.get_json()["predictions"]
            assert {p["label"] for p in predictions} == set(SHAPES)  # top-3 of 3 classes
            right += predictions[0]["label"] == shape
            total += 1
    return right / total


@pytest.mark.system
def test_predict_answers_with_the_new_classes(cli_run, monkeypatch):
    """Served with MODEL_WEIGHTS=<checkpoint> by the real app: fresh images (never seen in
    training) get the right class names."""
    out, _, _ = cli_run
    monkeypatch.setenv("MODEL_WEIGHTS", str(out))
    from webapp import create_app

    client = create_app({"TESTING": True}).test_client()
    ready = client.get("/readyz").get_json()
    assert ready["model"]["arch"] == "efficientnet_lite0"
    assert ready["model"]["classes"] == 3 and ready["model"]["input_size"] == 64
    assert _fresh_images_right(client) >= 0.9


@pytest.mark.system
def test_checkpoint_uploaded_through_the_admin_api_serves_predict(cli_run, tmp_path):
    """The whole loop: fine-tune -> upload to the admin API (validated, stored,
    activated) -> /predict answers with the new classes, right for fresh images."""
    out, _, _ = cli_run
    from webapp import create_app

    token = "finetune-admin-token-0123456789"
    app = create_app({"TESTING": True, "MODEL_DIR": str(tmp_path / "store"),
                      "ADMIN_TOKEN": token})
    client = app.test_client()
    response = client.post(
        "/admin/api/models", headers={"Authorization": f"Bearer {token}"},
        content_type="multipart/form-data",
        data={"checkpoint": (io.BytesIO(out.read_bytes()), "shapes.pt"), "name": "Shapes",
              "activate": "1"})
    assert response.status_code == 201, response.get_data(as_text=True)
    stored = response.get_json()
    assert stored["classes"] == list(SHAPES) and stored["active"] is True
    assert stored["metrics"]["test_accuracy"] >= 0.9  # the report's numbers travel along
    deadline = time.monotonic() + 10
    while True:  # the holder looks at the pointer 4 times a second
        ready = client.get("/readyz").get_json()
        if ready["model"].get("id") == stored["id"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ready["model"]["id"] == stored["id"] and ready["model"]["name"] == "Shapes"
    assert _fresh_images_right(client) >= 0.9


# --------------------------------------------------------------------------- the recipe


@pytest.fixture(scope="module")
def swapped_dir(tmp_path_factory) -> Path:
    """train/ is honest, val/ is mislabelled (val/circle holds squares, ...): the better
    the model learns the training images, the worse the validation loss gets."""
    root = tmp_path_factory.mktemp("swapped")
    make_dataset(root / "train", 12, seed=2)
    wrong = dict(zip(SHAPES, SHAPES[1:] + SHAPES[:1]))
    for shape in SHAPES:
        rng = random.Random(f"val-{shape}")
        folder = root / "val" / shape
        folder.mkdir(parents=True)
        for n in range(6):
            draw(wrong[shape], rng).save(folder / f"{n}.png")
    return root


def test_early_stopping_keeps_the_best_epoch(swapped_dir, tmp_path):
    options = fast(strategy="head", epochs=10, patience=2, lr=1e-2, warmup_epochs=0)
    result = recipe.train(swapped_dir, tmp_path / "m.pt", options, say=quiet)
    report = result.report
    assert report["stopped_early"] is True
    assert report["epochs_run"] == report["best_epoch"] + 2 < 10
    best_loss = report["epochs"][report["best_epoch"] - 1]["val_loss"]
    assert best_loss == min(e["val_loss"] for e in report["epochs"])
    # The checkpoint holds the kept epoch's weights: evaluated again, same validation loss.
    loaded = model_loader.load_checkpoint(result.checkpoint)
    splits = scan(swapped_dir)
    loader = eval_loader(splits.val, options, loaded.mean, loaded.std,
                                  torch.device("cpu"))
    again = evaluate(loaded.module, loader, torch.device("cpu"), amp=False)
    assert again["loss"] == pytest.approx(best_loss, abs=1e-4)
    # No test/ folder: the final evaluation is on the validation images, and it says so.
    assert report["test_accuracy"] is None and report["evaluation"]["split"] == "val"
    assert any("no test/ folder" in note for note in report["data"]["notes"])


def test_early_stopping_rule():
    stopper = EarlyStopping(patience=2)
    for epoch, loss in enumerate([1.0, 0.8, 0.85, 0.79999], start=1):
        stopper.step(loss, epoch)
    assert stopper.best_epoch == 2 and stopper.should_stop  # 0.79999 is not 1e-4 better
    never = EarlyStopping(patience=0)
    for epoch in range(1, 20):
        never.step(float(epoch), epoch)
    assert never.best_epoch == 1 and not never.should_stop


@pytest.fixture(scope="module")
def imbalanced_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imbalanced")
    make_dataset(root / "train", {"circle": 24, "square": 24, "triangle": 6}, seed=3)
    make_dataset(root / "val", 4, seed=4)
    return root


def test_class_weights_change_the_loss(imbalanced_dir, tmp_path, pretrained_state):
    plain = recipe.train(imbalanced_dir, tmp_path / "plain.pt",
                           fast(strategy="head", epochs=1), say=quiet).report
    weighted = recipe.train(imbalanced_dir, tmp_path / "weighted.pt",
                              fast(strategy="head", epochs=1, class_weights="auto"),
                              say=quiet).report
    assert plain["class_weights"] is None
    # Inverse frequency, N / (C * n_c): 54 / (3 * 24) and 54 / (3 * 6).
    assert weighted["class_weights"] == pytest.approx(
        {"circle": 0.75, "square": 0.75, "triangle": 3.0})
    assert weighted["epochs"][0]["train_loss"] != pytest.approx(
        plain["epochs"][0]["train_loss"], abs=1e-3)
    # The validation loss stays the plain cross-entropy, comparable between runs.
    assert weighted["epochs"][0]["val_loss"] > 0
    # --strategy head: the backbone is exactly the pretrained one, only the head learned.
    state = model_loader.read_weights_file(tmp_path / "weighted.pt")["state_dict"]
    backbone_keys = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    assert all(torch.equal(v, pretrained_state[k]) for k, v in backbone_keys.items())
    assert state["_fc.weight"].shape == (3, 1280)


def test_weighted_loss_is_inverse_frequency_cross_entropy():
    counts = [24, 24, 6]
    criterion = make_criterion(counts, fast(class_weights="auto", label_smoothing=0),
                                        "cpu")
    torch.manual_seed(0)
    logits, labels = torch.randn(12, 3), torch.tensor([0, 1, 2] * 4)
    w = torch.tensor([54 / 72, 54 / 72, 54 / 18])
    per_sample = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (w[labels] * per_sample).sum() / w[labels].sum()
    assert criterion(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    plain = make_criterion(counts, fast(label_smoothing=0), "cpu")
    assert plain(logits, labels).item() == pytest.approx(per_sample.mean().item(), rel=1e-5)


def test_weighted_sampler_draws_the_classes_evenly(imbalanced_dir):
    splits = scan(imbalanced_dir)
    options = fast(sampler="weighted")
    loader = train_loader(splits.train, options, (0.5,) * 3, (0.5,) * 3,
                                   torch.device("cpu"))
    drawn = torch.cat([labels for _ in range(3) for _, labels in loader])
    share = torch.bincount(drawn, minlength=3).double() / len(drawn)
    assert share[2] > 0.22  # the 6 triangles are 11 % of the images, a third of the draws
    plain = train_loader(splits.train, fast(), (0.5,) * 3, (0.5,) * 3,
                                  torch.device("cpu"))
    assert torch.bincount(torch.cat([y for _, y in plain]), minlength=3).tolist() == [24, 24, 6]


def test_progressive_unfreezes_from_the_top(imbalanced_dir, tmp_path, pretrained_state):
    options = fast(strategy="progressive", epochs=2, head_epochs=1)
    result = recipe.train(imbalanced_dir, tmp_path / "p.pt", options, say=quiet)
    assert [e["trainable"] for e in result.report["epochs"]] == [
        ["head"], ["stage5", "head"]]
    state = model_loader.read_weights_file(result.checkpoint)["state_dict"]
    assert same_tensors(state, pretrained_state, "_conv_stem.")  # stem: still frozen
    assert same_tensors(state, pretrained_state, "_blocks.3.")  # stage 3: still frozen
    assert not same_tensors(state, pretrained_state, "_conv_head.")  # stage 5 trained
    assert not same_tensors(state, pretrained_state, "_blocks.15.")


def test_layer_groups_cover_every_parameter_once():
    for arch, names in (
        ("resnet18", ["stem", "layer1", "layer2", "layer3", "layer4", "head"]),
        ("efficientnet_lite0", ["stem", "stage2", "stage3", "stage4", "stage5", "head"]),
        ("mobilenet_v3_small", ["features", "classifier", "head"]),
    ):
        model = model_loader.build_model(arch, 5)
        groups = layer_groups(model, arch)  # asserts the cover itself
        assert [g.name for g in groups] == names
        assert [p.shape for p in groups[-1].params][0] == (5, groups[-1].params[0].shape[1])
        assert trainable_groups(groups, "progressive", 3) == names[-3:]
        assert trainable_groups(groups, "head", 3) == ["head"]
        assert trainable_groups(groups, "full", 1) == names


def test_warmup_then_cosine_schedule():
    factor = warmup_cosine(total_steps=100, warmup_steps=10)
    warm = [factor(s) for s in range(10)]
    assert warm == sorted(warm) and warm[0] == pytest.approx(0.1) and warm[-1] == 1.0
    assert factor(10) == 1.0 and factor(55) == pytest.approx(0.5) and factor(100) == 0.0
    rest = [factor(s) for s in range(10, 101)]
    assert rest == sorted(rest, reverse=True)


# --------------------------------------------------------------------------- backbones


def test_auto_uses_resnet18_when_its_weights_are_in_the_cache(tmp_path, monkeypatch,
                                                              imbalanced_dir):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = save_random_resnet18(model_loader.cache_path())  # stands in for the real file
    backbone = choose_backbone(FinetuneOptions())
    assert backbone.arch == "resnet18" and backbone.pretrained
    assert str(cached) in backbone.why
    model = build_finetune_model(backbone, 3)
    reference = torch.load(cached, weights_only=True)
    state = model.state_dict()
    assert all(torch.equal(state[k], reference[k]) for k in reference if not k.startswith("fc."))
    assert state["fc.weight"].shape == (3, 512)
    # ... and a ResNet18 fine-tune runs end to end and is served like the others.
    result = recipe.train(imbalanced_dir, tmp_path / "r.pt",
                            fast(strategy="full", epochs=1, image_size=32), say=quiet)
    assert result.report["backbone"]["arch"] == "resnet18"
    assert list(result.report["learning_rates"]) == [
        "head", "layer4", "layer3", "layer2", "layer1", "stem"]
    loaded = model_loader.load_checkpoint(result.checkpoint)
    assert loaded.arch == "resnet18" and loaded.labels == list(SHAPES)
    assert loaded.mean == model_loader.IMAGENET_MEAN


def test_resnet18_without_its_weights_says_it_starts_from_random(monkeypatch):
    backbone = choose_backbone(FinetuneOptions(arch="resnet18"))
    assert backbone.arch == "resnet18" and not backbone.pretrained
    assert "RANDOM weights" in backbone.why and "model_loader download" in backbone.why
    auto = choose_backbone(FinetuneOptions())
    assert auto.arch == "efficientnet_lite0" and auto.pretrained
    assert auto.mean == (0.5, 0.5, 0.5)
    random_auto = choose_backbone(FinetuneOptions(pretrained=False))
    assert random_auto.arch == "resnet18" and not random_auto.pretrained
    assert "RANDOM" in random_auto.why


@pytest.mark.system
def test_model_weights_setting_is_a_starting_point(cli_run, monkeypatch):
    """MODEL_WEIGHTS (what the server serves) is where fine-tuning starts, like the server
    loads it: here an earlier fine-tune, whose head is replaced."""
    out, _, _ = cli_run
    monkeypatch.setenv("MODEL_WEIGHTS", str(out))
    backbone = choose_backbone(FinetuneOptions())
    assert backbone.arch == "efficientnet_lite0" and "MODEL_WEIGHTS" in backbone.why
    assert build_finetune_model(backbone, 5)._fc.out_features == 5
    with pytest.raises(FinetuneError, match="not resnet18"):
        choose_backbone(FinetuneOptions(arch="resnet18"))


# --------------------------------------------------------------------------- progress, cancel


def test_progress_callback_and_cancel(imbalanced_dir, tmp_path):
    events = []

    def stop_after_first_epoch():
        return any(e.stage == "epoch" for e in events)

    out = tmp_path / "cancelled.pt"
    with pytest.raises(TrainingCancelled):
        recipe.train(imbalanced_dir, out, fast(epochs=3), progress=events.append,
                       should_stop=stop_after_first_epoch, say=quiet)
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written
    train_events = [e for e in events if e.stage == "train"]
    assert [e.batch for e in train_events] == list(range(1, 5))  # 54 images / 16
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and 0 < fractions[-1] == pytest.approx(1 / 3)
    epoch_event = next(e for e in events if e.stage == "epoch")
    assert set(epoch_event.metrics) == {"train_loss", "train_acc", "val_loss", "val_acc"}
    assert json.dumps(epoch_event.as_dict())  # a background job can store it as is


# --------------------------------------------------------------------------- metrics


def test_metrics_match_scikit_learn():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = random.Random(7)
    y_true = [rng.randrange(4) for _ in range(200)]
    y_pred = [t if rng.random() < 0.6 else rng.randrange(3) for t in y_true]  # 3 never predicted
    cm = training_report.confusion_matrix(torch.tensor(y_true), torch.tensor(y_pred), 4)
    assert cm.tolist() == confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    ours = training_report.classification_metrics(cm, ["a", "b", "c", "d"])
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(4),
                                                 zero_division=0)
    for i, name in enumerate("abcd"):
        got = ours["per_class"][name]
        assert got["precision"] == pytest.approx(p[i], abs=1e-4)
        assert got["recall"] == pytest.approx(r[i], abs=1e-4)
        assert got["f1"] == pytest.approx(f[i], abs=1e-4)
        assert got["support"] == s[i]
    assert ours["macro_avg"]["f1"] == pytest.approx(f.mean(), abs=1e-4)


def test_the_headline_says_which_classes_the_scores_cannot_vouch_for():
    """A class with no test images used to show F1 0.0 in the table and vanish from the
    headline's "accuracy 1.000, macro F1 1.000"."""
    cm = torch.tensor([[3, 0, 0], [0, 3, 0], [0, 0, 0]])
    evaluation = {"split": "test", **training_report.classification_metrics(
        cm, ["cup", "pen", "mug"])}
    assert evaluation["thin_classes"] == {"mug": 0}
    assert training_report.headline(evaluation) == (
        "Test: accuracy 1.000, macro F1 1.000 on 6 images, but there are no test images of "
        "mug: these scores say little about that class (add images of it).")
    cm = torch.tensor([[3, 0, 0], [0, 2, 0], [0, 0, 0]])
    evaluation = {"split": "val", **training_report.classification_metrics(
        cm, ["cup", "pen", "mug"])}
    assert training_report.caveat(evaluation) == (
        "there are no val images of mug and fewer than 3 val images of pen (2): these "
        "scores say little about those classes (add images of them)")
    # The model's metrics keep the facts; a page says them in its reader's language.
    facts = json.loads(json.dumps(training_report.caveat_facts(evaluation)))
    assert render(caveat.message(facts), catalog_gettext("zh_Hans_CN")) == (
        "mug 没有验证图片，pen (2) 的验证图片少于 3 张：这些分数说明不了这些类别的情况"
        "（请给它们添加图片）")
    cm = torch.tensor([[3, 1], [0, 4]])
    evaluation = {"split": "test", **training_report.classification_metrics(cm, ["a", "b"])}
    assert training_report.caveat(evaluation) is None
    assert training_report.headline(evaluation).endswith("on 8 images.")


def test_a_run_with_a_class_missing_from_the_test_split_says_so(tmp_path):
    root = make_dataset(tmp_path / "d", {"circle": 20, "square": 7, "triangle": 2})
    messages = []
    report = recipe.train(root, tmp_path / "m.pt", fast(strategy="head", epochs=1),
                            say=messages.append).report
    assert report["evaluation"]["thin_classes"] == {"square": 1, "triangle": 0}
    headline = next(m for m in messages if m.startswith("Test: accuracy"))
    assert headline.endswith(", but there are no test images of triangle and fewer than 3 "
                             "test images of square (1): these scores say little about "
                             "those classes (add images of them).")
    assert report["metrics"]["caveat"] in headline
    # ... and the model's metrics carry it to the admin page.
    assert model_loader.load_checkpoint(tmp_path / "m.pt").metrics["caveat"] == \
        report["metrics"]["caveat"]


# --------------------------------------------------------------------------- bad data


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = finetune.main([*map(str, argv), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    code, output = run_cli(capsys, tmp_path / "nope", "--out", tmp_path / "m.pt")
    assert code == 2 and "no such folder" in output and "Traceback" not in output


def test_fewer_than_two_classes_is_a_clear_error(tmp_path, capsys):
    make_dataset(tmp_path / "one", 3, shapes=["circle"])
    code, output = run_cli(capsys, tmp_path / "one", "--out", tmp_path / "m.pt")
    assert code == 2 and "only one class folder (circle)" in output
    assert "at least 2 classes" in output


def test_loose_files_without_class_folders_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    draw("circle", random.Random(0)).save(tmp_path / "flat" / "a.png")
    code, output = run_cli(capsys, tmp_path / "flat", "--out", tmp_path / "m.pt")
    assert code == 2 and "no class folders" in output and "a.png" in output


def test_a_class_without_images_is_a_clear_error(tmp_path):
    make_dataset(tmp_path / "d", 3, shapes=["circle", "square"])
    (tmp_path / "d" / "triangle").mkdir()
    (tmp_path / "d" / "triangle" / "notes.txt").write_text("draw triangles here")
    with pytest.raises(DatasetError, match="class 'triangle' has no usable images") as err:
        scan(tmp_path / "d")
    assert "notes.txt" in str(err.value) and "plain text" in str(err.value)


def test_split_folders_need_val_and_known_classes(tmp_path):
    make_dataset(tmp_path / "a" / "train", 3, shapes=["circle", "square"])
    with pytest.raises(DatasetError, match="no val/ folder"):
        scan(tmp_path / "a")
    make_dataset(tmp_path / "a" / "val", 2, shapes=["circle", "triangle"])
    with pytest.raises(DatasetError, match="train/ does not have: triangle"):
        scan(tmp_path / "a")


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    root = make_dataset(tmp_path / "d", 4, shapes=["circle", "square"])
    good = (root / "circle").iterdir().__next__().read_bytes()
    (root / "circle" / "empty.png").write_bytes(b"")
    (root / "circle" / "cut.png").write_bytes(good[: len(good) // 2])
    (root / "square" / "readme.pdf").write_bytes(b"%PDF-1.4\n" + b"x" * 100)
    (root / "square" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: ignored
    splits = scan(root)
    reasons = {s.path.name: s.reason for s in splits.skipped}
    assert set(reasons) == {"empty.png", "cut.png", "readme.pdf"}
    assert "empty" in reasons["empty.png"] and "application/pdf" in reasons["readme.pdf"]
    assert "damaged or incomplete" in reasons["cut.png"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 8
    assert splits.describe()["skipped_count"] == 3


def test_split_is_stratified_and_repeatable(tmp_path):
    root = make_dataset(tmp_path / "d", {"circle": 20, "square": 7, "triangle": 2})
    a, b = scan(root, seed=5), scan(root, seed=5)
    assert [s.path for s in a.test] == [s.path for s in b.test]
    # 70/15/15 per class; a class of 2 still gets a validation image.
    assert a.counts("train") == {"circle": 14, "square": 5, "triangle": 1}
    assert a.counts("val") == {"circle": 3, "square": 1, "triangle": 1}
    assert a.counts("test") == {"circle": 3, "square": 1, "triangle": 0}
    parts = [{s.path for s in a.split(name)} for name in SPLITS]
    assert sum(map(len, parts)) == len(set.union(*parts)) == 29  # disjoint, nothing lost
    c = scan(root, seed=6)
    assert {s.path for s in c.test} != {s.path for s in a.test}


def test_bad_options_are_clear_errors(tmp_path, capsys, shapes_dir):
    code, output = run_cli(capsys, shapes_dir, "--out", tmp_path, "--epochs", "1")
    assert code == 2 and "is a folder" in output
    code, output = run_cli(capsys, shapes_dir, "--out", tmp_path / "m.pt", "--device", "cuda:7")
    assert code == 2 and "CUDA is not available" in output
    code, output = run_cli(capsys, shapes_dir, "--out", tmp_path / "m.pt", "--image-size", "8")
    assert code == 2 and "--image-size" in output


def test_flask_cli_alias(app):
    result = app.test_cli_runner().invoke(args=["finetune", "--help"])
    assert "DATA_DIR" in result.output and "--strategy" in result.output


@pytest.mark.slow
def test_a_trained_model_says_when_a_picture_is_unlike_what_it_was_taught(cli_run,
                                                                          monkeypatch):
    """The checkpoint carries its "I'm not sure" criterion (kNN on the features of the
    training pictures and of new views of them, a threshold keeping at least 95 % of the
    validation pictures and their new views: the split-conformal quantile); served, fresh
    shapes are answered and pictures of nothing like them are "unknown"."""
    out, report, _ = cli_run
    saved = torch.load(out, weights_only=True)
    assert saved["openset"]["method"] == "knn"
    # The bank: every training picture, and new views of them (closer, turned, ...).
    views = report["openset"]["training_views"]
    assert views > 0
    assert saved["openset"]["bank"].shape[0] == (
        sum(report["data"]["counts"]["train"].values()) + views)
    assert report["openset"]["validation_views"] >= report["openset"]["validation_images"]
    assert report["openset"]["kept"] >= 0.95 and "bank" not in report["openset"]
    monkeypatch.setenv("MODEL_WEIGHTS", str(out))
    from testkit.holds import noise, project_photos
    from webapp import create_app

    client = create_app({"TESTING": True}).test_client()
    rng = random.Random(7)
    shapes = [draw(shape, rng, size=120) for shape in SHAPES for _ in range(4)]
    others = [noise(rng) for _ in range(4)] + list(project_photos().values())[:6]
    said = []
    for pictures in (shapes, others):
        response = client.post("/predict", content_type="multipart/form-data", data={
            "image": [(io.BytesIO(encode(p.convert("RGB"), "JPEG")), f"{n}.jpg")
                      for n, p in enumerate(pictures)]})
        assert response.status_code == 200, response.get_data(as_text=True)
        said.append([r["unknown"] for r in response.get_json()["results"]])
    assert sum(said[0]) <= 2, said[0]  # fresh shapes: answered
    assert sum(said[1]) >= len(others) - 1, said[1]  # photos and noise: not sure


# --------------------------------------------------------------------------- other scripts


CHINESE = ["杯子", "铅笔", "剪刀"]


def missing_glyphs(draw_pictures) -> list[str]:
    """matplotlib's "Glyph ... missing from font(s)" warnings while ``draw_pictures()``
    runs: a name drawn as boxes."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draw_pictures()
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def test_the_report_pictures_draw_chinese_class_names_and_words(tmp_path):
    """Chinese class names and the Chinese captions of a report drawn for a Chinese
    teacher: every glyph from a font that has it (fonts-noto-cjk: make system-deps)."""
    import matplotlib

    from webapp.messages import Message

    assert len(training_report.font_families()) > 1, "no CJK font: make system-deps"
    title = Message("%(model)s: %(arch)s, %(count)s classes", model="第一课.pt",
                    arch="efficientnet_lite0", count=3)
    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "train_acc": 0.5,
                "val_acc": 0.6}]

    def draw():
        training_report.plot_confusion_matrix(tmp_path / "c.png", [[2, 0, 0], [0, 1, 1],
                                                                   [0, 0, 2]], CHINESE,
                                              title, language="zh_Hans_CN")
        training_report.plot_curves(tmp_path / "k.png", history, 1, title,
                                    language="zh_Hans_CN")

    assert missing_glyphs(draw) == []
    assert Image.open(tmp_path / "c.png").size[0] > 300
    # The check can fail: with matplotlib's own font alone the same names are boxes.
    with matplotlib.rc_context({"font.family": ["DejaVu Sans"]}):
        figure = training_report._figure(3, 2)
        figure.suptitle("杯子")
        assert missing_glyphs(lambda: figure.savefig(tmp_path / "boxes.png"))


@pytest.mark.slow
def test_a_dataset_named_in_chinese_trains_with_a_report_in_chinese(tmp_path):
    """第一课 with classes typed as 杯子，铅笔、剪刀: three classes, and a trained model whose
    report pictures have no missing glyph."""
    from webapp.stores.datasets import DatasetStore

    store = DatasetStore(tmp_path / "data")
    summary = store.create("第一课", "杯子，铅笔、剪刀")
    assert summary["display_name"] == "第一课"
    assert sorted(c["name"] for c in summary["classes"]) == sorted(CHINESE)
    rng = random.Random(5)
    for name, shape in zip(CHINESE, SHAPES):
        for _ in range(8):
            store.add_image(summary["name"], name, encode(draw(shape, rng), "PNG"))
    result = {}
    assert missing_glyphs(lambda: result.update(run=recipe.train(
        store.root / summary["name"], tmp_path / "m.pt", fast(strategy="head", epochs=1),
        say=quiet, language="zh_Hans_CN"))) == []
    run = result["run"]
    assert sorted(run.report["classes"]) == sorted(CHINESE)
    assert run.confusion_png.stat().st_size > 0 and run.curves_png.stat().st_size > 0
