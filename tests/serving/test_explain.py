"""Heatmaps and the preprocessing steps (webapp/serving/explain.py) and POST /explain: the
heatmap equals torch's Grad-CAM (torch in the test only) and points at the object, the steps
are exactly what the model saw, the serving model is never touched, and bad input gets the
same clear errors as /predict."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import model_loader
from model_loader import LoadedModel
from testkit.photos import CAT_CLASSES, encode, photo, real_photos
from testkit.weights import save_random_resnet18
from webapp import create_app
from webapp.engines import EngineSettings, build, features
from webapp.serving.classifier import Classifier
from webapp.serving.explain import ExplainUnsupported, denormalise, explain, upsample


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """The bundled model as an app serves it (one for the module: it is only read)."""
    base = tmp_path_factory.mktemp("explain")
    app = create_app({"TESTING": True, "MODEL_DIR": str(base / "models"),
                      "DATA_DIR": str(base / "data")})
    return app.extensions["model_holder"].get()


def post(client, data: bytes | None = None, name="photo.jpg", headers=None, **form):
    payload = dict(form)
    if data is not None:
        payload["image"] = (io.BytesIO(data), name)
    return client.post("/explain", data=payload, content_type="multipart/form-data",
                       headers=headers or {})


def png(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "PNG"
    return img


def half_object_half_grey(name: str, side: str) -> Image.Image:
    """A 512² picture: the photo's central square on one half, flat grey on the other.
    After the model's preprocessing (resize to 256, centre-crop 224) the object fills
    exactly one half of the crop: columns 0-111 (left) or 112-223 (right)."""
    img = photo(name).image
    short = min(img.size)
    left, top = (img.width - short) // 2, (img.height - short) // 2
    square = img.crop((left, top, left + short, top + short)).resize((256, 256), Image.BICUBIC)
    canvas = Image.new("RGB", (512, 512), (128, 128, 128))
    canvas.paste(square, (0 if side == "left" else 256, 128))
    return canvas


# --------------------------------------------------------------------------- sense


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name, classes", [("coffee", {"espresso"}), ("chelsea", CAT_CLASSES)])
def test_heatmap_mass_lies_on_the_object_half(classifier, name, classes, side):
    result = explain(classifier, half_object_half_grey(name, side))
    assert result.target.label in classes, result.target  # the object's class is explained
    heat = result.heatmap
    assert heat.shape == (224, 224) and heat.min() >= 0 and heat.max() == pytest.approx(1)
    left_mass = heat[:, :112].sum() / heat.sum()
    on_object = left_mass if side == "left" else 1 - left_mass
    assert on_object > 0.7, f"only {on_object:.0%} of the heatmap lies on the {name}"


def test_another_class_can_be_explained(classifier):
    cat = photo("chelsea").image
    result = explain(classifier, cat, index=967)  # espresso, nowhere in a cat photo
    assert result.target.label == "espresso" and result.target.score < 0.01
    assert result.predictions[0].label in CAT_CLASSES  # the answer itself is unchanged
    own = explain(classifier, cat)
    assert not np.allclose(own.heatmap, result.heatmap)


# --------------------------------------------------------------------------- fidelity


@pytest.mark.parametrize("size", [(451, 300), (2400, 300), (90, 70), (300, 451)])
def test_steps_are_exactly_what_the_model_saw(classifier, size):
    img = photo("chelsea").image.resize(size, Image.BICUBIC)
    result = explain(classifier, img)
    steps = {step.name: step.image for step in result.steps}
    assert list(steps) == ["original", "resized", "cropped", "tensor"]
    tensor = classifier.preprocess(img)
    # The crop shown is the model's own input tensor turned back into pixels.
    assert np.array_equal(np.asarray(steps["cropped"]),
                          np.asarray(denormalise(tensor, classifier.loaded.mean,
                                                 classifier.loaded.std)))
    assert max(steps["original"].size) <= 448
    # "Shrunk" is drawn to the scale of the photo (a frame of its size), with the model's
    # copy in the corner at its true size: never the same picture as "Your photo".
    caption = next(step.caption for step in result.steps if step.name == "resized")
    rw, rh = (int(n) for n in re.search(r"(\d+) × (\d+)\.", caption).groups())
    assert min(rw, rh) == classifier.resize_size
    canvas = steps["resized"]
    scale = max(canvas.size) / max(size[0], size[1], rw, rh)
    yellow = np.all(np.asarray(canvas.convert("RGB")) == (255, 210, 63), axis=-1)
    rows, cols = np.nonzero(yellow)
    assert abs(cols.max() + 1 - rw * scale) <= 1 and abs(rows.max() + 1 - rh * scale) <= 1
    # "Numbers": the dots in the very middle of the model's input, in their own colours.
    numbers = np.asarray(steps["tensor"])
    cell = numbers.shape[0] // 2
    middle = np.asarray(steps["cropped"])[111:113, 111:113]
    for row in range(2):
        for col in range(2):
            assert tuple(numbers[row * cell + 6, col * cell + 6]) == tuple(middle[row, col])


@pytest.fixture(scope="module")
def dynamic_classifier():
    """The bundled model served by torch with dynamic int8 quantization: an engine that is
    a torch module, so hooks left on it would show."""
    app = create_app({"TESTING": True, "ENGINE": "torch", "QUANTIZE": "dynamic"})
    return app.extensions["model_holder"].get()


def test_explanations_never_touch_the_serving_model(dynamic_classifier):
    """The heatmap comes from the same pass that answers; the (quantized) module that
    serves keeps no hooks afterwards and answers exactly as before."""
    classifier = dynamic_classifier
    img = photo("coffee").image
    before, _ = classifier.predict([img], 5)
    result = explain(classifier, img)
    assert [p.index for p in result.predictions] == [p.index for p in before[0][:3]]
    assert classifier.loaded.quantization == "dynamic"
    assert "quantized" in type(classifier.engine.module._fc).__module__
    assert not any(m._forward_hooks for m in classifier.engine.module.modules())
    after, _ = classifier.predict([img], 5)
    assert before == after


# --------------------------------------------------------------------------- torch's Grad-CAM


def torch_gradcam(module, layer, batch: np.ndarray, index: int) -> np.ndarray:
    """Grad-CAM as published (Selvaraju et al.): channel weights are the spatial mean of
    the class score's gradient at the layer; the map is their weighted sum, ReLU'd."""
    captured = []
    handle = layer.register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        x = torch.from_numpy(batch).requires_grad_(True)
        logits = module(x)
        (grads,) = torch.autograd.grad(logits[0, index], captured[-1])
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * captured[-1]).sum(dim=1))[0].detach().numpy()


def fp32_classifier(loaded: LoadedModel, tmp_path) -> Classifier:
    settings = EngineSettings(engine="openvino", quantize="none", cache_dir=str(tmp_path),
                              threads=2)
    return Classifier(*build.serve_loaded(loaded, settings))


@pytest.mark.parametrize("weights", ["bundled", "resnet18"])
def test_the_heatmap_is_torchs_gradcam_on_real_photos(weights, tmp_path):
    if weights == "bundled":
        loaded = model_loader.load_bundled()
    else:
        loaded = model_loader.load_checkpoint(save_random_resnet18(tmp_path / "r18.pth"))
    classifier = fp32_classifier(loaded, tmp_path / "cache")
    module = loaded.module.eval()
    layer = dict(module.named_modules())[classifier.loaded.cam["layer"]]
    for sample in real_photos():
        result = explain(classifier, sample.image)
        batch = classifier.preprocess(sample.image)[None]
        theirs = torch_gradcam(module, layer, batch, result.target.index)
        assert theirs.max() > 0
        ours_grid = result.heatmap  # upsampled and scaled to 0..1
        want = torch.nn.functional.interpolate(
            torch.from_numpy(theirs)[None, None], size=ours_grid.shape, mode="bilinear",
            align_corners=False)[0, 0].numpy()
        want /= want.max()
        assert np.abs(ours_grid - want).max() < 0.01, sample.name
    assert np.array_equal(upsample(np.eye(2, dtype=np.float32), 2), np.eye(2))


# --------------------------------------------------------------------------- architectures


def _loaded(module, arch, classes=10, **extra):
    return LoadedModel(module=module.eval(), arch=arch, labels=[f"c{i}" for i in range(classes)],
                       name=arch, version="test", source="test", source_kind="test", **extra)


@pytest.mark.parametrize("arch, layer", [("resnet18", "layer4"), ("squeezenet1_1", "classifier.2")])
def test_target_layer_is_the_last_spatial_feature_map(arch, layer, tmp_path):
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.get_model(arch, weights=None, num_classes=10).eval()
    name, _ = features.find_target_layer(module, 224)
    assert name == layer
    result = explain(fp32_classifier(_loaded(module, arch), tmp_path), photo("camera").image)
    assert result.layer == layer and result.heatmap.shape == (224, 224)


def test_bundled_model_uses_its_head_activation(classifier):
    assert classifier.loaded.cam["layer"] == "_swish"  # after _conv_head + _bn1


def test_models_without_a_pooled_linear_head_are_refused_with_the_reason(tmp_path):
    """Heatmaps need a feature map and a head that is one linear layer after global
    average pooling; other models still answer /predict, and /explain says why not."""
    import torchvision

    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    mlp_head = torchvision.models.mobilenet_v3_small(num_classes=10)
    for module, arch, size, words in [(flat, "mlp", 32, "no convolutional feature map"),
                                      (mlp_head, "mobilenet_v3_small", 224,
                                       "more than global average pooling")]:
        classifier = fp32_classifier(_loaded(module, arch, input_size=size), tmp_path)
        (answer,), _ = classifier.predict([photo("camera").image], 3)
        assert len(answer) == 3
        with pytest.raises(ExplainUnsupported, match=words):
            explain(classifier, photo("camera").image)


# --------------------------------------------------------------------------- POST /explain


def test_explain_returns_the_documented_json(client):
    response = post(client, encode(photo("coffee").image, "JPEG"))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"model", "predictions", "explained", "explanation", "heatmap",
                         "steps", "timings_ms"}
    assert body["explained"] == body["predictions"][0]
    assert body["explained"]["label"] == "espresso" and len(body["predictions"]) == 3
    assert body["explanation"].count(". ") == 1 and "\u201cespresso\u201d" in body["explanation"]
    heatmap = body["heatmap"]
    assert heatmap["layer"] == "_swish" and heatmap["grid"] == [7, 7]
    assert png(heatmap["overlay_png"]).size == (224, 224)
    assert png(heatmap["heatmap_png"]).size == (224, 224)
    steps = body["steps"]
    assert [s["name"] for s in steps] == ["original", "resized", "cropped", "tensor"]
    for step in steps:
        assert step["title"] and step["caption"]
        assert png(step["png"]).size == (step["width"], step["height"])
    assert "384 × 256" in steps[1]["caption"]  # drawn in a frame of the photo's size
    assert (steps[1]["width"], steps[1]["height"]) == (steps[0]["width"], steps[0]["height"])
    assert (steps[2]["width"], steps[2]["height"]) == (224, 224)
    assert set(body["timings_ms"]) == {"decode", "predict", "gradcam", "pictures", "total"}


def test_explain_speaks_the_requests_language(client):
    """Accept-Language: zh-CN: the class by its Chinese name (display_label), the
    sentences and the steps in Chinese; the stable label stays English."""
    body = post(client, encode(photo("coffee").image, "JPEG"),
                headers={"Accept-Language": "zh-CN"}).get_json()
    assert body["explained"]["label"] == "espresso"
    assert body["explained"]["display_label"] == "意大利浓咖啡"
    assert "“意大利浓咖啡”" in body["explanation"] and "热力图" in body["explanation"]
    assert [s["title"] for s in body["steps"]] == ["你的照片", "缩小", "中间的正方形", "数字"]
    assert "384 × 256" in body["steps"][1]["caption"] and "像素" in body["steps"][1]["caption"]


def test_explain_answers_a_png_when_asked(client):
    response = post(client, encode(photo("chelsea").image, "JPEG"),
                    headers={"Accept": "image/png"})
    assert response.status_code == 200
    assert response.content_type == "image/png"
    assert Image.open(io.BytesIO(response.data)).size == (224, 224)
    assert response.headers["X-Explained-Label"].replace("%20", " ") in CAT_CLASSES
    assert int(response.headers["X-Explained-Index"]) in range(281, 294)


def test_explain_topk_and_class_index(client):
    body = post(client, encode(photo("chelsea").image, "JPEG"), topk="5",
                class_index="967").get_json()
    assert len(body["predictions"]) == 5
    assert body["explained"]["label"] == "espresso"


@pytest.mark.parametrize("form, status, code", [
    ({}, 400, "no_image"),
    ({"class_index": "1000"}, 400, "bad_class_index"),
    ({"class_index": "cat"}, 400, "bad_class_index"),
    ({"class_index": "-1"}, 400, "bad_class_index"),
    ({"topk": "0"}, 400, "bad_topk"),
])
def test_explain_bad_requests(client, form, status, code):
    data = None if not form else encode(photo("coffee").image, "JPEG")
    response = post(client, data, headers={"Accept": "image/png"}, **form)
    assert response.status_code == status and response.is_json  # errors stay JSON
    assert response.get_json()["error"]["code"] == code


@pytest.mark.parametrize("data, status, code", [
    (b"%PDF-1.4 not a photo", 415, "not_an_image"),
    (b"", 400, "empty_file"),
    (None, 422, "unreadable_image"),  # a truncated JPEG
])
def test_explain_bad_files_get_the_predict_errors(client, data, status, code):
    if data is None:
        data = encode(photo("coffee").image, "JPEG")[:3000]
    response = post(client, data)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code


def test_explain_takes_one_image_at_a_time(client):
    jpeg = encode(photo("coffee").image, "JPEG")
    response = client.post("/explain", data={"image": [(io.BytesIO(jpeg), "a.jpg"),
                                                       (io.BytesIO(jpeg), "b.jpg")]},
                           content_type="multipart/form-data")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "too_many_images"


def test_explain_over_the_size_limit_is_a_413(client, app, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 50_000)
    response = post(client, b"\xff" * 200_000)
    assert response.status_code == 413 and response.is_json


def test_explain_is_post_only(client):
    response = client.get("/explain")
    assert response.status_code == 405 and response.is_json


def test_explain_a_resnet18_checkpoint_at_its_own_input_size(tmp_path):
    """A fine-tuned ResNet18 trained at 96², with its own mean/std: the steps and the
    heatmap use them."""
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.resnet18(weights=None, num_classes=3)
    path = model_loader.save_checkpoint(
        tmp_path / "tiny.pt", module, arch="resnet18", classes=["apple", "pear", "plum"],
        input_size=96, mean=(0.4, 0.4, 0.4), std=(0.3, 0.3, 0.3))
    app = create_app({"TESTING": True, "MODEL_WEIGHTS": str(path), "QUANTIZE": "none"})
    body = post(app.test_client(), encode(photo("coffee").image, "JPEG")).get_json()
    assert body["heatmap"]["layer"] == "layer4" and body["heatmap"]["grid"] == [3, 3]
    assert png(body["heatmap"]["overlay_png"]).size == (96, 96)
    sizes = {s["name"]: (s["width"], s["height"]) for s in body["steps"]}
    assert sizes["cropped"] == (96, 96)
    assert f"× {round(96 / 0.875)}." in body["steps"][1]["caption"]
    assert body["explained"]["label"] in {"apple", "pear", "plum"}


def test_explain_with_bare_resnet18_weights_unquantized(tmp_path):
    weights = save_random_resnet18(tmp_path / "resnet18.pth")
    app = create_app({"TESTING": True, "MODEL_WEIGHTS": str(weights), "ENGINE": "torch",
                      "QUANTIZE": "none"})
    client = app.test_client()
    body = post(client, encode(photo("camera").image, "JPEG")).get_json()
    assert body["model"]["arch"] == "resnet18" and body["heatmap"]["layer"] == "layer4"
    # The serving module (engine is module when QUANTIZE=none) keeps no hooks.
    classifier = app.extensions["model_holder"].get()
    assert not any(m._forward_hooks for m in classifier.engine.module.modules())
