"""Reduced-size decoding: JPEG draft mode and the box reduction of other formats keep the
answer of a full decode on real photos, and the API still reports the original size."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.conftest import encode
from tests.photos import photo
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
