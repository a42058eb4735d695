"""Reduced-size decoding: JPEG draft mode and the box reduction of other formats keep the
answer of a full decode on real photos, and the API still reports the original size."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from testkit.photos import encode, photo
from webapp import imaging
from webapp.serving.classifier import Classifier


@pytest.mark.parametrize("fmt, params", [("JPEG", {"quality": 92}), ("PNG", {"compress_level": 1}),
                                         ("WEBP", {"quality": 90})])
def test_reduced_decoding_keeps_the_answer_of_a_full_decode(app, fmt, params):
    """A 15-megapixel photo decoded at 1/2 (JPEG draft, or a box reduction) answers as
    its full decode: the same top-1, every probability within 0.01."""
    classifier: Classifier = app.extensions["model_holder"].get()
    big = photo("coffee").image.resize((4803, 3202), Image.Resampling.BICUBIC)
    data = encode(big, fmt, **params)
    fast = imaging.load(data, max_pixels=10**8, min_side=classifier.resize_size)
    full = imaging.load(data, max_pixels=10**8)
    assert full.size == (4803, 3202)
    assert min(fast.size) >= 6 * classifier.resize_size and fast.width < 4803
    assert fast.info["original_size"] == (4803, 3202) and fast.info["scale"] == 2
    (a, b), _ = classifier.predict([fast, full], k=1000)
    assert a[0].label == b[0].label == "espresso"
    scores = {p.label: p.score for p in b}
    assert max(abs(p.score - scores[p.label]) for p in a) < 0.01


def test_the_api_reports_the_uploaded_size_not_the_decoded_one(client):
    big = photo("camera").image.resize((1600, 2400), Image.Resampling.BICUBIC)
    response = client.post("/predict", data={
        "image": [(io.BytesIO(encode(big, "PNG")), "a.png"),
                  (io.BytesIO(encode(big, "JPEG")), "b.jpg")]})
    assert response.status_code == 200
    sizes = [(r["width"], r["height"]) for r in response.get_json()["results"]]
    assert sizes == [(1600, 2400), (1600, 2400)]


def test_a_small_image_is_not_reduced():
    img = photo("chelsea").image  # 451×300: less than twice the resize size
    out = imaging.load(encode(img, "PNG"), max_pixels=10**8, min_side=256)
    assert out.size == img.size
    assert out.tobytes() == img.tobytes()


def test_decode_gap_trades_a_little_fidelity_for_a_smaller_decode(app, tmp_path):
    """DECODE_GAP: a 2,400 × 1,600 JPEG is decoded in full by default; at gap 2 at 1/2
    (a box reduction by 3 for a PNG).  /predict at gap 2 answers the same top-1 with
    slightly different scores: the setting reaches the decoding."""
    from webapp import create_app

    big = photo("coffee").image.resize((2400, 1600), Image.Resampling.BICUBIC)
    jpeg, png = encode(big, "JPEG", quality=92), encode(big, "PNG")
    assert imaging.load(jpeg, max_pixels=10**8, min_side=256).info["scale"] == 1
    assert imaging.load(jpeg, max_pixels=10**8, min_side=256, gap=2).info["scale"] == 2
    assert imaging.load(png, max_pixels=10**8, min_side=256, gap=2).info["scale"] == 3

    fast = create_app({"TESTING": True, "MODEL_DIR": str(tmp_path / "m2"),
                       "DATA_DIR": str(tmp_path / "d2"), "DECODE_GAP": 2})
    answers = []
    for served in (app, fast):
        response = served.test_client().post("/predict", data={
            "image": (io.BytesIO(jpeg), "big.jpg"), "topk": "3"})
        assert response.status_code == 200
        answers.append(response.get_json()["predictions"])
    full, reduced = answers
    assert full[0]["label"] == reduced[0]["label"] == "espresso"
    assert full[0]["score"] != reduced[0]["score"]
    assert abs(full[0]["score"] - reduced[0]["score"]) < 0.05
