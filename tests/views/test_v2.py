"""The Open Inference Protocol (KServe v2) beside /predict: with Triton's own client
(``tritonclient[http]``) against a real gunicorn server, and malformed requests through
the real app, each answered with a 4xx in the protocol's error shape ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
import gzip
import json
import struct

import numpy as np
import pytest
import requests
from PIL import Image

from testkit.model_files import photo_pngs
from testkit.photos import encode
from webapp import imaging
from webapp.checkpoints.preprocess import preprocess_array

MODEL = "classifier"
INFER = f"/v2/models/{MODEL}/infer"


def top3(predictions) -> list[str]:
    return [p["label"] for p in predictions]


def labels(rows) -> list[list[str]]:
    """A labels output as text (bytes from binary data, str from JSON)."""
    return [[x.decode() if isinstance(x, bytes) else x for x in row] for row in rows]


def photo_tensor(preprocessing: dict) -> np.ndarray:
    """The seven photos as /predict sees them (decoded by the server's safe decoder, which
    shrinks a large picture by a whole factor first), preprocessed as the model's metadata
    says (torchvision's ImageNet eval transform: shorter side to "resize", centre "crop",
    (x - mean) / std): float32 NCHW."""
    resize = preprocessing["resize"]
    return np.stack([
        preprocess_array(imaging.load(data, max_pixels=50_000_000, min_side=resize),
                         resize, preprocessing["crop"], preprocessing["mean"],
                         preprocessing["std"])
        for _, data in photo_pngs()]).astype(np.float32)


# --------------------------------------------------------------------------- Triton's client


@pytest.mark.system
def test_tritons_client_gets_the_answers_of_predict(start_server):
    """Server live and ready, model ready, server and model metadata; each of the seven
    photos as BYTES (binary tensor data, Triton's default), all seven in one JSON request
    (base64), and all seven as one FP32 [7, 3, 224, 224] tensor: the same top-3 as
    /predict, in the same order."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    server = start_server("gunicorn", WEB_CONCURRENCY=1, TORCH_THREADS=1)
    server.wait_ready()
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.get_server_metadata() == {"name": "offline-classifier", "version": "1",
                                            "extensions": ["binary_tensor_data"]}
    meta = client.get_model_metadata(MODEL)
    model = requests.get(server.url + "/readyz", timeout=30).json()["model"]
    version = model["version"]
    assert meta["versions"] == [version]
    assert meta["platform"] == {"openvino": "openvino",
                                "onnxruntime": "onnxruntime_onnx"}[model["engine"]]
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["inputs"]} == {
        ("image", "BYTES", (-1,)), ("tensor", "FP32", (-1, 3, 224, 224))}
    preprocessing = meta["inputs"][1]["parameters"]
    assert preprocessing == {"resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert [t["name"] for t in meta["outputs"]] == ["labels", "probabilities", "indices",
                                                    "unknown"]
    assert client.is_model_ready(MODEL, model_version=version)
    assert not client.is_model_ready(MODEL, model_version="0123456789ab")
    assert not client.is_model_ready("resnet50")

    photos = photo_pngs()
    expected = []
    for name, data in photos:
        body = requests.post(server.url + "/predict", files={"image": (name, data)},
                             timeout=120).json()
        expected.append(body["predictions"])

    def outputs(*names, binary=True):
        return [triton.InferRequestedOutput(n, binary_data=binary) for n in names]

    for (_, data), want in zip(photos, expected):
        image = triton.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([data], dtype=object))  # binary: the default
        result = client.infer(MODEL, [image], request_id="photo",
                              outputs=outputs("labels", "probabilities", "indices"))
        assert labels(result.as_numpy("labels")) == [top3(want)]
        assert result.as_numpy("indices")[0].tolist() == [p["index"] for p in want]
        np.testing.assert_allclose(result.as_numpy("probabilities")[0],
                                   [p["score"] for p in want], atol=1e-6)
        response = result.get_response()
        assert response["model_name"] == MODEL and response["model_version"] == version
        assert response["id"] == "photo"

    # All seven in one request, in JSON: each file base64-encoded.
    images = triton.InferInput("image", [len(photos)], "BYTES")
    images.set_data_from_numpy(np.array([base64.b64encode(d) for _, d in photos],
                                        dtype=object), binary_data=False)
    result = client.infer(MODEL, [images], outputs=outputs("labels", "unknown", binary=False),
                          parameters={"top_k": 3})
    assert labels(result.as_numpy("labels")) == [
        top3(want) for want in expected]
    assert result.as_numpy("unknown").tolist() == [False] * len(photos)

    # A preprocessed FP32 tensor: the same answers (no outputs named: all, binary).
    tensor = triton.InferInput("tensor", [len(photos), 3, 224, 224], "FP32")
    tensor.set_data_from_numpy(photo_tensor(preprocessing))
    result = client.infer(MODEL, [tensor])
    assert labels(result.as_numpy("labels")) == [
        top3(want) for want in expected]
    assert result.as_numpy("probabilities").shape == (len(photos), 3)

    # Errors reach the client with the server's message.
    with pytest.raises(InferenceServerException) as failure:
        client.infer("resnet50", [tensor])
    assert failure.value.status() == "404" and "classifier" in failure.value.message()
    broken = triton.InferInput("image", [1], "BYTES")
    broken.set_data_from_numpy(np.array([b"%PDF-1.4 not a picture"], dtype=object))
    with pytest.raises(InferenceServerException) as failure:
        client.infer(MODEL, [broken])
    assert failure.value.status() == "415" and "not an image" in failure.value.message()


# --------------------------------------------------------------------------- in the app


def assert_v2_error(response, status: int) -> str:
    """The protocol's error object: exactly {"error": "<a sentence>"}, with ``status``."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


def request_json(*inputs, **extra) -> dict:
    return {"inputs": list(inputs), **extra}


def image_input(*files: bytes, shape=None) -> dict:
    return {"name": "image", "datatype": "BYTES", "shape": shape or [len(files)],
            "data": [base64.b64encode(f).decode() for f in files]}


def binary_body(header: dict, *chunks: bytes) -> tuple[bytes, dict]:
    text = json.dumps(header).encode()
    return text + b"".join(chunks), {"Inference-Header-Content-Length": str(len(text))}


def bytes_tensor(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def png(name: str = "chelsea") -> bytes:
    return dict(photo_pngs())[name]


def test_health_metadata_and_one_inference_in_json(client):
    assert client.get("/v2/health/live").get_json() == {"live": True}
    assert client.get("/v2/health/ready").get_json() == {"ready": True}
    assert client.get(f"/v2/models/{MODEL}/ready").get_json() == {"name": MODEL, "ready": True}
    response = client.post(INFER, json=request_json(image_input(png("coffee")), id="1",
                                                    outputs=[{"name": "labels"}]))
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == "1" and body["model_name"] == MODEL
    assert body["outputs"][0]["name"] == "labels" and len(body["outputs"]) == 1
    assert body["outputs"][0]["shape"] == [1, 3] and body["outputs"][0]["datatype"] == "BYTES"
    assert body["outputs"][0]["data"][0] == "espresso"


def test_binary_outputs_follow_the_extension(client):
    body, headers = binary_body(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                     "parameters": {"binary_data_size": len(bytes_tensor(png()))}}],
         "parameters": {"binary_data_output": True, "top_k": 5}},
        bytes_tensor(png()))
    response = client.post(INFER, data=body, headers=headers)
    assert response.status_code == 200
    length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.data[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert [o["shape"] for o in header["outputs"]] == [[1, 5], [1, 5], [1, 5], [1]]
    assert sum(sizes) == len(response.data) - length
    probabilities = np.frombuffer(response.data[length + sizes[0]:][:sizes[1]], "<f4")
    assert probabilities.shape == (5,) and np.all(np.diff(probabilities) <= 0)


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"inputs": []}).encode(), 400, "no \"inputs\""),
    (json.dumps(request_json({"name": "pixels", "datatype": "BYTES", "shape": [1],
                              "data": ["AA=="]})).encode(), 400, "no input 'pixels'"),
    (json.dumps(request_json({"name": "image", "datatype": "FP32", "shape": [1],
                              "data": [1.0]})).encode(), 400, "BYTES, not FP32"),
    (json.dumps(request_json({"name": "image", "datatype": "BYTES", "shape": [2],
                              "data": ["AA=="]})).encode(), 400, "needs 2"),
    (json.dumps(request_json({"name": "image", "datatype": "BYTES", "shape": [1],
                              "data": ["not base64!"]})).encode(), 400, "not base64"),
    (json.dumps(request_json({"name": "image", "datatype": "BYTES", "shape": ["1"],
                              "data": ["AA=="]})).encode(), 400, "\"shape\""),
    (json.dumps(request_json({"name": "image", "datatype": "STRING", "shape": [1],
                              "data": ["AA=="]})).encode(), 400, "\"datatype\""),
    (json.dumps(request_json({"name": "tensor", "datatype": "FP32", "shape": [1, 3, 2, 2],
                              "data": [0.0] * 12})).encode(), 400, "[N, 3, 224, 224]"),
    (json.dumps(request_json({"name": "image", "datatype": "BYTES", "shape": [1],
                              "data": ["AA=="], "parameters": {"shared_memory_region": "x"}})
                ).encode(), 400, "shared memory"),
    (json.dumps(request_json(image_input(b"%PDF-1.4 hello"))).encode(), 415, "not an image"),
    (json.dumps(request_json(image_input(png()[:5000]))).encode(), 422, "damaged"),
    (json.dumps(request_json(image_input(b"x"), parameters={"top_k": 0})).encode(), 400,
     "top_k"),
    (json.dumps(request_json(image_input(b"x"), outputs=[{"name": "logits"}])).encode(), 400,
     "no output 'logits'"),
    (json.dumps(request_json(image_input(*[b"x"] * 17))).encode(), 400, "at most 16"),
    (b"[" * 5000 + b"]" * 5000, 400, "nested"),
], ids=["not-json", "not-object", "no-inputs", "unknown-input", "wrong-datatype",
        "short-data", "bad-base64", "bad-shape", "unknown-datatype", "wrong-tensor-shape",
        "shared-memory", "pdf", "truncated-png", "bad-top-k", "unknown-output",
        "too-many-images", "deep-json"])
def test_malformed_requests_get_the_protocols_error(client, body, status, words):
    response = client.post(INFER, data=body, content_type="application/json")
    message = assert_v2_error(response, status)
    assert words in message, message


def test_malformed_binary_data_and_tensors(client):
    def post(header, *chunks, length=None):
        body, headers = binary_body(header, *chunks)
        if length is not None:
            headers["Inference-Header-Content-Length"] = length
        return client.post(INFER, data=body, headers=headers)

    one = {"name": "image", "datatype": "BYTES", "shape": [1]}
    assert "binary_data_size" in assert_v2_error(post(
        {"inputs": [{**one, "parameters": {"binary_data_size": 999}}]}, b"abc"), 400)
    assert "no input's binary_data_size" in assert_v2_error(post(
        {"inputs": [{**one, "parameters": {"binary_data_size": 3}}]}, b"abcdef"), 400)
    assert "4-byte length" in assert_v2_error(post(
        {"inputs": [{**one, "parameters": {"binary_data_size": 3}}]}, b"abc"), 400)
    assert "more than its binary data" in assert_v2_error(post(
        {"inputs": [{**one, "parameters": {"binary_data_size": 6}}]},
        struct.pack("<I", 100) + b"ab"), 400)
    assert "Inference-Header-Content-Length" in assert_v2_error(
        post({"inputs": [one]}, length="-5"), 400)
    nan = np.zeros((1, 3, 224, 224), "<f4")
    nan[0, 1, 2, 3] = np.nan
    tensor = {"name": "tensor", "datatype": "FP32", "shape": [1, 3, 224, 224],
              "parameters": {"binary_data_size": nan.nbytes}}
    assert "not finite" in assert_v2_error(post({"inputs": [tensor]}, nan.tobytes()), 400)
    assert "needs 602112" in assert_v2_error(post(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": 8}}]}, b"\0" * 8), 400)
    both = {"inputs": [image_input(png()), {"name": "tensor", "datatype": "FP32",
                                            "shape": [1], "data": [0.0]}]}
    assert "one input" in assert_v2_error(client.post(INFER, json=both), 400)
    squeezed = gzip.compress(json.dumps(request_json(image_input(png()))).encode())
    assert "uncompressed" in assert_v2_error(client.post(
        INFER, data=squeezed, headers={"Content-Encoding": "gzip"}), 415)


def test_unknown_models_versions_and_routes(client):
    assert "named 'classifier'" in assert_v2_error(client.get("/v2/models/resnet50"), 404)
    assert "no version" in assert_v2_error(
        client.get(f"/v2/models/{MODEL}/versions/0123456789ab"), 404)
    assert_v2_error(client.post("/v2/models/resnet50/infer", json={}), 404)
    assert_v2_error(client.get("/v2/no/such/route"), 404)
    assert_v2_error(client.get(INFER), 405)
    version = client.get(f"/v2/models/{MODEL}").get_json()["versions"][0]
    assert client.get(f"/v2/models/{MODEL}/versions/{version}/ready").status_code == 200
    response = client.post(f"/v2/models/{MODEL}/versions/{version}/infer",
                           json=request_json(image_input(png())))
    assert response.status_code == 200 and response.get_json()["model_version"] == version


def test_the_limits_of_predict_hold(tmp_path):
    """The body limit (MAX_UPLOAD_MB) and the pixel limit (MAX_IMAGE_PIXELS), as for
    /predict."""
    from webapp import create_app

    app = create_app({"TESTING": True, "MODEL_DIR": str(tmp_path / "m"), "MAX_UPLOAD_MB": 0.5,
                      "MAX_CONTENT_LENGTH": 512 * 1024, "MAX_IMAGE_PIXELS": 100_000})
    client = app.test_client()
    big = json.dumps(request_json(image_input(b"\0" * 600_000))).encode()
    assert "0.5 MB" in assert_v2_error(client.post(INFER, data=big,
                                                   content_type="application/json"), 413)
    wide = encode(Image.new("RGB", (400, 300), "white"), "PNG")
    assert_v2_error(client.post(INFER, json=request_json(image_input(wide))), 413)
