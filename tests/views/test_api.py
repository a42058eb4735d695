"""POST /predict, /healthz, /readyz through the real app and the bundled ImageNet model."""

from __future__ import annotations

import io
import json
import os
import re

import pytest
from PIL import Image

from testkit import ROOT, hostile
from testkit.admin import assert_error
from testkit.photos import chinese_names, encode, photo, real_photos


def post(client, *files, field="image", **form):
    data = {field: [(io.BytesIO(b), name) for name, b in files], **form}
    return client.post("/predict", data=data, content_type="multipart/form-data")


def jpeg(name="coffee", **params) -> bytes:
    return encode(photo(name).image, "JPEG", quality=92, **params)


def test_predict_returns_the_documented_json(client):
    response = post(client, ("coffee.jpg", jpeg()))
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"model", "predictions", "unknown", "timings_ms"}
    assert body["unknown"] is False  # a real photo of an ImageNet thing
    assert set(body["model"]) >= {"name", "version", "arch", "quantization", "precision"}
    assert body["model"]["arch"] == "efficientnet_lite0"
    assert body["model"]["quantization"] == "auto"  # the setting; what runs:
    assert body["model"]["precision"] in {"fp32", "bf16", "int8"}
    predictions = body["predictions"]
    assert len(predictions) == 3
    assert all(set(p) == {"label", "display_label", "index", "score"} for p in predictions)
    assert all(p["display_label"] == p["label"] for p in predictions)  # English: the same
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    assert_stages_add_up(body["timings_ms"])


STAGES = {"receive", "queue", "parse", "decode", "preprocess", "engine_wait", "inference",
          "postprocess", "serialize"}


def assert_stages_add_up(timings: dict) -> None:
    """Every documented stage is there (the first four fields kept their names), none
    negative, and together they are the total: no time is in none of them."""
    assert set(timings) == STAGES | {"total"}
    assert all(v >= 0 for v in timings.values())
    assert abs(sum(timings[s] for s in STAGES) - timings["total"]) <= 0.1, timings


@pytest.mark.parametrize("item", real_photos(), ids=lambda p: p.name)
def test_real_photos_get_the_right_answer_in_english_and_in_chinese(client, item):
    """The answer names the class by its ImageNet label (``label``, always English) and as
    the request's language names it (``display_label``): the Chinese name with
    ``Accept-Language: zh-CN``, looked up by class index; the label without it."""
    data = encode(item.image, "JPEG", quality=92)
    predictions = post(client, (f"{item.name}.jpg", data)).get_json()["predictions"]
    labels = [p["label"] for p in predictions]
    assert labels[0] in item.top1, labels
    assert item.top3 & set(labels), labels
    assert [p["display_label"] for p in predictions] == labels
    response = client.post("/predict", data={"image": (io.BytesIO(data), "x.jpg")},
                           headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    chinese = response.get_json()["predictions"]
    assert [p["label"] for p in chinese] == labels  # the stable name does not change
    assert chinese[0]["display_label"] in chinese_names(item.top1), chinese
    assert all(p["display_label"] == next(iter(chinese_names({p["label"]})))
               for p in chinese)
    assert chinese[0]["display_label"].encode() in response.data  # UTF-8, not \u escapes


def test_imagenet_index_matches_the_label(client):
    top = post(client, ("coffee.jpg", jpeg())).get_json()["predictions"][0]
    assert (top["label"], top["index"]) == ("espresso", 967)


def test_phone_sized_jpeg_gives_the_same_answer(client):
    """12 MP JPEG (decoded at reduced scale) answers like the original photo."""
    big = photo("coffee").image.resize((4000, 3000), Image.BICUBIC)
    response = post(client, ("big.jpg", encode(big, "JPEG", quality=90)))
    assert response.status_code == 200
    assert response.get_json()["predictions"][0]["label"] == "espresso"


@pytest.mark.parametrize("k", [1, 5, 20])
def test_topk_is_honoured(client, k):
    body = post(client, ("c.jpg", jpeg()), topk=str(k)).get_json()
    assert len(body["predictions"]) == k


@pytest.mark.parametrize("k", ["0", "21", "-1", "three", "2.5"])
def test_topk_out_of_bounds_is_a_400(client, k):
    message = assert_error(post(client, ("c.jpg", jpeg()), topk=k), 400, "bad_topk")
    assert "1 to 20" in message


def test_several_images_are_answered_in_order(client):
    files = [("cat.jpg", jpeg("chelsea")), ("coffee.jpg", jpeg("coffee")),
             ("tripod.png", encode(photo("camera").image, "PNG"))]
    body = post(client, *files).get_json()
    assert [r["filename"] for r in body["results"]] == ["cat.jpg", "coffee.jpg", "tripod.png"]
    tops = [r["predictions"][0]["label"] for r in body["results"]]
    assert tops[0] in photo("chelsea").top1 and tops[1:] == ["espresso", "tripod"]
    assert all(len(r["predictions"]) == 3 for r in body["results"])
    assert [r["unknown"] for r in body["results"]] == [False, False, False]
    assert_stages_add_up(body["timings_ms"])
    # Each image: its own decoding, and its share of the batch's other stages.
    for result in body["results"]:
        timings = result["timings_ms"]
        assert set(timings) == {"decode", "preprocess", "engine_wait", "inference",
                                "postprocess", "total"}
        assert timings["total"] >= timings["decode"] + timings["inference"] - 0.02


def test_one_bad_image_in_a_batch_names_the_file(client):
    response = post(client, ("ok.jpg", jpeg()), ("notes.txt", b"just some text"))
    message = assert_error(response, 415, "not_an_image")
    assert "Image 2 (notes.txt)" in message


def test_too_many_images_is_a_400(client, app, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_IMAGES_PER_REQUEST", 2)
    files = [(f"{n}.jpg", jpeg()) for n in range(3)]
    assert_error(post(client, *files), 400, "too_many_images")


def test_the_images_of_one_request_share_a_pixel_budget(client, app, monkeypatch):
    """MAX_REQUEST_PIXELS counts what every image of a request would decode, from the
    headers, before any is decoded: legal images that together are too many are a 413
    at once; a JPEG counts at the reduced scale it is decoded at, so phone photos pass."""
    monkeypatch.setitem(app.config, "MAX_REQUEST_PIXELS", 1_000_000)
    big = encode(photo("camera").image.resize((800, 800)), "PNG")  # 0.64 MP each, whole
    message = assert_error(post(client, ("a.png", big), ("b.png", big)), 413,
                           "too_many_pixels")
    assert "1,280,000 pixels to decode in all" in message and "1,000,000" in message
    # 16 images claiming 49 MP each: refused from their headers (no decoding at all).
    bombs = [(f"{n}.png", hostile.png_header_only(7000, 7000)) for n in range(16)]
    monkeypatch.setitem(app.config, "MAX_REQUEST_PIXELS", 100_000_000)
    assert "784,000,000 pixels" in assert_error(post(client, *bombs), 413, "too_many_pixels")
    monkeypatch.setitem(app.config, "MAX_REQUEST_PIXELS", 1_000_000)
    photo_jpeg = encode(photo("coffee").image.resize((1600, 1600)), "JPEG")  # 2.56 MP
    body = post(client, ("a.jpg", photo_jpeg), ("b.jpg", photo_jpeg)).get_json()
    assert [r["predictions"][0]["label"] for r in body["results"]] == ["espresso"] * 2


def test_unknown_methods_are_counted_under_one_label(client):
    """A client may send any token as its method: /metrics counts the ones it does not
    know as OTHER, so its series cannot grow with what clients invent."""
    for method in ("FOO", "BAR123", "X-RANDOM-9", "GET"):
        client.open("/healthz", method=method)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'method="OTHER"' in text and 'method="GET"' in text
    assert "FOO" not in text and "BAR123" not in text and "X-RANDOM" not in text


def test_file_field_and_raw_body_are_accepted(client):
    assert post(client, ("c.jpg", jpeg()), field="file").status_code == 200
    response = client.post("/predict", data=jpeg(), content_type="image/jpeg")
    assert response.status_code == 200
    assert response.get_json()["predictions"][0]["label"] == "espresso"


def test_missing_image_is_a_400_that_says_how(client):
    message = assert_error(client.post("/predict", data={}), 400, "no_image")
    assert "curl -F image=@" in message
    message = assert_error(post(client, ("c.jpg", jpeg()), field="photo"), 400, "no_image")
    assert "photo" in message
    # curl --data-binary @cat.jpg without -H: the body is there, its type is not an image.
    message = assert_error(client.post(
        "/predict", data=jpeg(), content_type="application/x-www-form-urlencoded"),
        400, "no_image")
    assert "Content-Type: image/jpeg" in message and "x-www-form-urlencoded" in message


def test_upload_over_the_limit_is_a_413_json(client, app, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 100_000)
    monkeypatch.setitem(app.config, "MAX_UPLOAD_MB", 100_000 / 2**20)
    big = os.urandom(300_000)
    message = assert_error(post(client, ("big.jpg", big)), 413, "too_large")
    assert "MB limit" in message


def test_malformed_multipart_is_a_4xx_json(client):
    response = client.post(
        "/predict", data=b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; fil",
        content_type="multipart/form-data; boundary=xyz")
    assert 400 <= response.status_code < 500 and response.is_json


def test_wrong_method_and_unknown_path_answer_json(client):
    response = client.get("/predict")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert_error(client.get("/nope", headers={"Accept": "application/json"}), 404, "not_found")
    page = client.get("/nope", headers={"Accept": "text/html"})
    assert page.status_code == 404 and b"There is nothing at this address" in page.data


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz").get_json()
    assert ready["status"] == "ready"
    assert ready["model"]["source"] == "bundled"
    assert "python -m model_loader download" in ready["notice"]
    # QUANTIZE=auto (the default): what was served, what was tried, and why.
    auto = ready["engine"]["auto"]
    assert auto["chosen"] in {"fp32", "int8", "bf16"} and auto["why"]
    assert {t["precision"] for t in auto["tried"]} >= {"fp32", "int8"}


def test_uploads_stay_in_memory(app):
    from flask import request

    with app.test_request_context(
        "/predict", method="POST",
        data={"image": (io.BytesIO(os.urandom(3_000_000)), "big.jpg")},
        content_type="multipart/form-data",
    ):
        stream = request.files["image"].stream
        assert isinstance(stream, io.BytesIO), type(stream)


@pytest.mark.parametrize("case", hostile.basic(), ids=lambda case: case.name)
def test_odd_and_broken_files_never_cause_a_500(client, case):
    """The small corpus in-process; the whole one (testkit/hostile.py, 500+ files) goes
    through a real gunicorn server in tests/http/test_hostile_server.py."""
    response = post(client, (case.upload_name, case.data))
    assert response.status_code in case.expect, (response.status_code, response.get_json())
    assert response.is_json
    if response.status_code == 200:
        assert len(response.get_json()["predictions"]) == 3
    else:
        assert response.get_json()["error"]["message"]


def test_truncated_jpeg_and_png_are_422(client):
    for fmt in ("JPEG", "PNG"):
        data = jpeg() if fmt == "JPEG" else encode(photo("coffee").image, "PNG")
        assert_error(post(client, ("cut", data[: len(data) // 2])), 422, "unreadable_image")


def test_service_keeps_answering_after_bad_input(client):
    for case in hostile.basic()[:10]:
        post(client, (case.upload_name, case.data))
    assert post(client, ("c.jpg", jpeg())).get_json()["predictions"][0]["label"] == "espresso"


def test_real_photos_of_imagenet_things_are_never_answered_unknown(client):
    """The built-in model's "I'm not sure" is for pictures of nothing it knows: each of
    the seven real photos (testkit/photos.py) is answered, not doubted."""
    photos = real_photos()
    body = post(client, *[(f"{p.name}.jpg", encode(p.image, "JPEG", quality=92))
                          for p in photos]).get_json()
    assert [r["unknown"] for r in body["results"]] == [False] * len(photos), \
        [(r["filename"], r["predictions"][0]["label"]) for r in body["results"]]


def test_a_picture_of_nothing_is_answered_unknown(client):
    """The built-in model's max-logit criterion (docs/openset.md): noise is no
    photo of anything, and the answer says so (its guesses are still there)."""
    import random

    from testkit.holds import noise

    rng = random.Random(3)
    response = post(client, ("snow.png", encode(noise(rng), "PNG")),
                    ("grain.png", encode(noise(rng), "PNG")), ("coffee.jpg", jpeg()))
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert [r["unknown"] for r in results] == [True, True, False]
    assert all(len(r["predictions"]) == 3 for r in results)


def _shape(value):
    """The fields of a JSON value, nested: what a client reading it relies on."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__ if isinstance(value, (bool, str)) or value is None else "number"


@pytest.mark.parametrize("page", ["README.md", "docs/api.md"])
def test_the_documented_predict_example_has_the_fields_of_a_real_answer(client, page):
    """The example answer of ``curl -F image=@cat.jpg .../predict`` (the README's, the API
    page's) has exactly the fields, nested, and as many predictions as /predict answers for
    the cat photo."""
    text = (ROOT / page).read_text("utf-8")
    after_curl = text.split("http://127.0.0.1:5000/predict\n```", 1)[1]
    example = json.loads(re.search(r"```json\n(.*?)\n```", after_curl, re.DOTALL).group(1))
    answer = post(client, ("cat.jpg", jpeg("chelsea")))
    assert answer.status_code == 200
    assert _shape(example) == _shape(answer.get_json())
