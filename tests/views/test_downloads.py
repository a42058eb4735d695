"""Taking a model away from the admin API and page: the v1 checkpoint, the ONNX network
and the model card, and a downloaded file uploaded to another server gives the same
answers on the seven photos."""

from __future__ import annotations

import io
import json

import onnx
import pytest
import torch

from testkit.admin import BEARER, login, make_app, upload
from testkit.model_files import photo_pngs
from webapp.checkpoints.loaded import CHECKPOINT_FORMAT

pytestmark = pytest.mark.system  # uploads and conversions run in child processes


def answers(client, model_id: str) -> list[list[tuple[str, float]]]:
    """Top-3 (label, score) of the seven photos from ``model_id`` ("try an image")."""
    out = []
    for name, data in photo_pngs():
        response = client.post(f"/admin/api/models/{model_id}/predict", headers=BEARER,
                               data={"image": (io.BytesIO(data), f"{name}.png")})
        assert response.status_code == 200, response.get_data(as_text=True)
        out.append([(p["label"], p["score"]) for p in response.get_json()["predictions"]])
    return out


def download(client, model_id: str, what: str):
    response = client.get(f"/admin/api/models/{model_id}/download/{what}", headers=BEARER)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "attachment" in response.headers["Content-Disposition"]
    return response


def test_download_and_upload_elsewhere_gives_the_same_answers(tmp_path, model_files):
    """A bare state_dict with its class names in a field is downloaded as a checkpoint v1
    that carries them (and the preprocessing): uploaded alone to another store it answers
    the seven photos as the original does; so does the ONNX network uploaded with the
    class names from the card."""
    here = make_app(tmp_path / "here").test_client()
    bare = model_files.bare
    response = upload(here, bare.path, **bare.fields)
    assert response.status_code == 201, response.get_data(as_text=True)
    model_id = response.get_json()["id"]
    original = answers(here, model_id)

    checkpoint = download(here, model_id, "checkpoint").data
    saved = torch.load(io.BytesIO(checkpoint), weights_only=True)
    assert saved["format"] == CHECKPOINT_FORMAT and saved["classes"] == bare.classes
    assert saved["arch"] == "resnet18" and saved["input_size"] == 224
    card = download(here, model_id, "card").get_json()
    assert card["classes"] == bare.classes and card["arch"] == "resnet18"
    assert card["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert card["provenance"]["source"] == "uploaded"
    assert card["files"]["checkpoint"] == f"{model_id}.pt"
    readme = download(here, model_id, "readme").get_data(as_text=True)
    assert readme.startswith("# ") and ", ".join(bare.classes) in readme
    network = download(here, model_id, "onnx").data
    graph = onnx.load_from_string(network).graph
    assert [i.name for i in graph.input] == ["input"] and graph.output[0].name == "logits"

    elsewhere = make_app(tmp_path / "elsewhere").test_client()
    response = upload(elsewhere, checkpoint, filename=f"{model_id}.pt")  # nothing else sent
    assert response.status_code == 201, response.get_data(as_text=True)
    again = response.get_json()
    assert again["classes"] == bare.classes and again["arch"] == "resnet18"
    assert [[label for label, _ in row] for row in answers(elsewhere, again["id"])] == [
        [label for label, _ in row] for row in original]
    for row, before in zip(answers(elsewhere, again["id"]), original):
        assert [s for _, s in row] == pytest.approx([s for _, s in before], abs=1e-4)

    response = upload(elsewhere, network, filename=f"{model_id}.onnx",
                      classes="\n".join(card["classes"]))
    assert response.status_code == 201, response.get_data(as_text=True)
    onnx_id = response.get_json()["id"]
    assert [[label for label, _ in row] for row in answers(elsewhere, onnx_id)] == [
        [label for label, _ in row] for row in original]

    # A file stored as v1 downloads as it was stored, byte for byte.
    assert download(elsewhere, again["id"], "checkpoint").data == checkpoint
    # An ONNX upload has no PyTorch checkpoint; unknown models and downloads are 404s.
    response = elsewhere.get(f"/admin/api/models/{onnx_id}/download/checkpoint",
                             headers=BEARER)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == \
        "no_checkpoint"
    assert elsewhere.get(f"/admin/api/models/{onnx_id}/download/weights",
                         headers=BEARER).status_code == 404
    assert elsewhere.get("/admin/api/models/20990101-000000-abcdef/download/onnx",
                         headers=BEARER).status_code == 404
    assert elsewhere.get(f"/admin/api/models/{onnx_id}/download/onnx").status_code == 401


def test_the_built_in_model_downloads_and_the_page_has_the_buttons(tmp_path):
    client = make_app(tmp_path / "store").test_client()
    card = download(client, "builtin", "card").get_json()
    assert card["arch"] == "efficientnet_lite0" and card["num_classes"] == 1000
    assert card["preprocessing"]["mean"] == [0.5, 0.5, 0.5]  # the model's own, not ImageNet's
    assert card["provenance"]["source"] == "built in"
    saved = torch.load(io.BytesIO(download(client, "builtin", "checkpoint").data),
                       weights_only=True)
    assert saved["arch"] == "efficientnet_lite0" and len(saved["classes"]) == 1000
    assert list(saved["mean"]) == [0.5, 0.5, 0.5]
    json.dumps(card)  # plain JSON

    login(client)
    page = client.get("/admin/").get_data(as_text=True)
    for what in ("checkpoint", "onnx", "card", "readme"):
        assert f'href="/admin/api/models/builtin/download/{what}"' in page
    assert ">Download<" in page
