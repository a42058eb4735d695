"""The upload page: local assets only, and the no-JavaScript path renders the bars."""

from __future__ import annotations

import io
import re

from testkit.photos import CAT_CLASSES, encode, photo


def test_page_has_the_upload_form_and_names_the_model(client):
    page = client.get("/").get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in page
    assert 'type="file"' in page and 'name="image"' in page
    assert "Drop a photo here" in page
    assert "EfficientNet-Lite0" in page
    # Visitors are not told how the owner gets ResNet18 or which quantization runs:
    # that is for the admin page, /readyz and the log.
    for owner_words in ("model_loader download", "TORCH_HOME", "MODEL_WEIGHTS",
                        "quantization", "bf16"):
        assert owner_words not in page, owner_words


def test_the_example_photos_are_answered_without_javascript(client):
    page = client.get("/").get_data(as_text=True)
    examples = re.findall(r'name="example" value="(\w+)"', page)
    assert examples == ["cat", "coffee", "rocket"]
    response = client.post("/", data={"example": "coffee"})
    assert response.status_code == 200
    labels = re.findall(r'<span class="label[^"]*">([^<]+)</span>', response.get_data(as_text=True))
    assert labels[0] == "Espresso"
    assert client.post("/", data={"example": "../app.py"}).status_code == 400


def test_every_asset_is_served_locally(client):
    page = client.get("/").get_data(as_text=True)
    urls = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert urls, "no assets found"
    external = [u for u in urls if re.match(r"(https?:)?//", u)]
    assert not external, external
    css = [u for u in urls if u.endswith(".css")]
    assert any("bootstrap" in u for u in css)
    for url in urls:
        if url.startswith("/"):
            assert client.get(url).status_code == 200, url


def test_form_post_without_javascript_shows_three_bars(client):
    data = {"image": (io.BytesIO(encode(photo("chelsea").image, "JPEG")), "cat.jpg")}
    response = client.post("/", data=data, content_type="multipart/form-data")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    items = re.findall(r'<li class="prediction[^"]*"', page)
    assert len(items) == 3
    labels = re.findall(r'<span class="label[^"]*">([^<]+)</span>', page)
    assert labels[0].lower() in {c.lower() for c in CAT_CLASSES}
    widths = [float(w) for w in re.findall(r'class="progress-bar[^"]*" style="width: ([\d.]+)%"',
                                           page)]
    assert len(widths) == 3 and widths == sorted(widths, reverse=True) and widths[0] > 10
    assert re.search(r"\d+\.\d%", page)
    assert 'src="data:image/jpeg;base64,' in page  # preview, never stored on disk
    assert "Answered by EfficientNet-Lite0" in page


def test_form_post_with_a_bad_file_shows_a_friendly_alert(client):
    data = {"image": (io.BytesIO(b"%PDF-1.4 not a photo"), "scan.pdf")}
    response = client.post("/", data=data, content_type="multipart/form-data")
    assert response.status_code == 415
    page = response.get_data(as_text=True)
    assert 'class="alert alert-danger"' in page and "not an image" in page
    assert "Drop a photo here" in page  # the form is still there to try again


def test_form_post_over_the_limit_shows_a_page_not_json(client, app, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 50_000)
    data = {"image": (io.BytesIO(b"\xff" * 200_000), "big.jpg")}
    response = client.post("/", data=data, content_type="multipart/form-data",
                           headers={"Accept": "text/html"})
    assert response.status_code == 413
    assert "text/html" in response.content_type
    assert "larger than" in response.get_data(as_text=True)
