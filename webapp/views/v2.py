"""The Open Inference Protocol (KServe "v2", HTTP/REST) beside ``/predict``: what the
clients of Triton, KServe, Seldon MLServer, TorchServe and OpenVINO Model Server speak.

* ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``: the server.
* ``GET /v2/models/classifier[/versions/<v>]`` and ``.../ready``: the model this server
  serves (the active one), named ``classifier``; its version is the ``version`` that
  ``/predict`` reports (the weights' sha256, 12 hex digits).
* ``POST /v2/models/classifier[/versions/<v>]/infer``: input ``image`` (BYTES, one
  encoded image file per element, base64 in JSON) or ``tensor`` (FP32 ``[N, 3, H, W]``,
  preprocessed as its metadata's ``parameters`` say); outputs ``labels``, ``probabilities``,
  ``indices`` (``[N, k]``) and ``unknown`` (``[N]``); request parameter ``top_k``.

Errors are ``{"error": "..."}`` (``webapp.http.errors``).  An inference takes an upload
slot and keeps every limit of ``/predict``: body size, images per request, pixels, decode
time.  docs/api.md shows it with curl and with Triton's client.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
from flask import Blueprint, current_app, jsonify, request

from webapp import current
from webapp.checkpoints.loaded import ModelLoadError
from webapp.http import accesslog, capacity, marks, metrics, tensors
from webapp.http.errors import error_json
from webapp.http.images import MAX_TOPK, classify
from webapp.http.uploads import raw_body
from webapp.messages import Message
from webapp.serving.prediction import Upload

bp = Blueprint("v2", __name__, url_prefix="/v2")
# Errors as {"error": "..."}; answers (inferences, the model's state) never cached.
marks.mark_blueprint(bp, marks.JSON, marks.OPEN_INFERENCE, marks.NO_STORE)

SERVER_NAME = "offline-classifier"
SERVER_VERSION = "1"  # of this server's v2 interface: changes when its tensors do
EXTENSIONS = ["binary_tensor_data"]
MODEL_NAME = "classifier"
IMAGE, TENSOR = "image", "tensor"
OUTPUTS = {"labels": "BYTES", "probabilities": "FP32", "indices": "INT64", "unknown": "BOOL"}
# Triton's names for the backends (the "platform" of a model's metadata).
PLATFORMS = {"openvino": "openvino", "onnxruntime": "onnxruntime_onnx",
             "torch": "pytorch_libtorch"}


@bp.errorhandler(tensors.TensorError)
def _tensor_error(exc: tensors.TensorError):
    return error_json(exc.status, "bad_request", exc.message)


# --------------------------------------------------------------------------- the server


@bp.get("")
def server_metadata():
    return jsonify(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)


@bp.get("/health/live")
def live():
    return jsonify(live=True)


@bp.get("/health/ready")
def ready():
    """200 once the model is loaded; the specification's 4xx (400) while it is not."""
    try:
        current.holder().get()
    except ModelLoadError:
        return jsonify(ready=False), 400
    return jsonify(ready=True)


# --------------------------------------------------------------------------- the model


def _served(name: str, version: str | None):
    """The classifier ``name`` (and ``version``) stands for, or a 404 saying what is."""
    if name != MODEL_NAME:
        raise tensors.TensorError(Message("There is no model %(name)s: this server serves "
                                          "one, named %(model)s.", name=repr(name),
                                          model=repr(MODEL_NAME)), 404)
    classifier = current.holder().get()
    served = classifier.info["version"]
    if version is not None and version != served:
        raise tensors.TensorError(Message(
            "Model %(model)s has no version %(version)s: it serves version %(served)s (the "
            "weights' sha256) now.", model=repr(MODEL_NAME), version=repr(version),
            served=repr(served)), 404)
    return classifier


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name, version=None):
    classifier = _served(name, version)
    card = classifier.loaded
    size = card.input_size
    # How to make the tensor (as MLServer does, in the tensor's "parameters"): RGB scaled
    # to 0..1, shorter side resized to "resize", centre crop, then (x - mean) / std.
    preprocessing = {"resize": card.resize_size, "crop": size, "mean": list(card.mean),
                     "std": list(card.std)}
    return jsonify(
        name=MODEL_NAME,
        versions=[classifier.info["version"]],
        platform=PLATFORMS.get(classifier.info["engine"], classifier.info["engine"]),
        inputs=[{"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
                {"name": TENSOR, "datatype": "FP32", "shape": [-1, 3, size, size],
                 "parameters": preprocessing}],
        outputs=[{"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                 {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
                 {"name": "indices", "datatype": "INT64", "shape": [-1, -1]},
                 {"name": "unknown", "datatype": "BOOL", "shape": [-1]}],
    )


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name, version=None):
    try:
        _served(name, version)
    except ModelLoadError:
        return jsonify(name=name, ready=False), 400
    return jsonify(name=name, ready=True)


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
@capacity.upload_slot
def infer(name, version=None):
    body = raw_body()  # first: an answer before the body is read would end the connection
    classifier = _served(name, version)
    if request.content_encoding:
        raise tensors.TensorError(Message("Send the request uncompressed (this server does "
                                          "not take Content-Encoding: %(encoding)s).",
                                          encoding=request.content_encoding), 415)
    req = tensors.read_request(body, request.headers.get(tensors.HEADER_LENGTH))
    k = _top_k(req.parameters)
    given = _the_input(req.inputs)
    wanted = _outputs(req)
    if given.name == IMAGE:
        predictions, unknown = _images(given, k, classifier)
    else:
        predictions, unknown = _tensor(given, k, classifier)
    values = {
        "labels": np.array([[p["label"] for p in row] for row in predictions], dtype=object),
        "probabilities": np.array([[p["score"] for p in row] for row in predictions],
                                  dtype=np.float32),
        "indices": np.array([[p["index"] for p in row] for row in predictions],
                            dtype=np.int64),
        "unknown": np.array(unknown, dtype=bool),
    }
    outputs = [tensors.Output(out.name, OUTPUTS[out.name], values[out.name]) for out in wanted]
    response = {"model_name": MODEL_NAME, "model_version": classifier.info["version"]}
    if req.id is not None:
        response["id"] = req.id
    body, headers = tensors.response_body(response, outputs,
                                          {out.name for out in wanted if out.binary})
    return current_app.response_class(body, headers=headers)


def _outputs(req: tensors.InferRequest) -> list[tensors.RequestedOutput]:
    """The outputs asked for (all of them when none is named), each once."""
    if req.outputs is None:
        return [tensors.RequestedOutput(out, req.binary_outputs) for out in OUTPUTS]
    seen = set()
    for out in req.outputs:
        if out.name not in OUTPUTS:
            raise tensors.TensorError(Message("There is no output %(name)s; the outputs are "
                                              "%(outputs)s.", name=repr(out.name),
                                              outputs=", ".join(OUTPUTS)))
        if out.name in seen:
            raise tensors.TensorError(Message("Output %(name)s is asked for twice.",
                                              name=repr(out.name)))
        seen.add(out.name)
    return req.outputs


def _top_k(parameters: dict) -> int:
    k = parameters.get("top_k", 3)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_TOPK:
        raise tensors.TensorError(Message("The parameter top_k must be a whole number from 1 "
                                          "to %(limit)s.", limit=MAX_TOPK))
    return k


def _the_input(inputs: list[tensors.RequestInput]) -> tensors.RequestInput:
    names = [tensor.name for tensor in inputs]
    unknown = [n for n in names if n not in (IMAGE, TENSOR)]
    if unknown:
        raise tensors.TensorError(Message(
            "There is no input %(name)s; send the picture as '%(image)s' (BYTES: the encoded "
            "file) or '%(tensor)s' (FP32 [N, 3, H, W], preprocessed).", name=repr(unknown[0]),
            image=IMAGE, tensor=TENSOR))
    if len(names) != 1:
        raise tensors.TensorError(Message("Send one input: '%(image)s' or '%(tensor)s', not "
                                          "%(names)s.", image=IMAGE, tensor=TENSOR,
                                          names=", ".join(repr(n) for n in names)))
    given = inputs[0]
    expected = "BYTES" if given.name == IMAGE else "FP32"
    if given.datatype != expected:
        raise tensors.TensorError(Message("Input '%(name)s' is %(expected)s, not %(given)s.",
                                          name=given.name, expected=expected,
                                          given=given.datatype))
    return given


def _check_count(count: int) -> None:
    limit = current_app.config["MAX_IMAGES_PER_REQUEST"]
    if count < 1:
        raise tensors.TensorError(Message("The input holds no image."))
    if count > limit:
        raise tensors.TensorError(Message("%(count)s images sent; at most %(limit)s per "
                                          "request.", count=count, limit=limit))


def _images(given: tensors.RequestInput, k: int, classifier):
    """Encoded image files (JPEG, PNG, ...), decoded and classified as ``/predict`` does."""
    _check_count(given.count)
    files = given.elements()
    if given.raw is None:  # JSON carries text: the files come in base64
        files = [_base64(data, n) for n, data in enumerate(files)]
    uploads = [Upload(f"image {n + 1}", data) for n, data in enumerate(files)]
    body, _ = classify(uploads, k, classifier)
    rows = body.get("results") or [body]
    return [row["predictions"] for row in rows], [row["unknown"] for row in rows]


def _base64(data: bytes, n: int) -> bytes:
    text = data.split(b",", 1)[1] if data.startswith(b"data:") else data  # a data: URL
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise tensors.TensorError(Message(
            "Element %(n)s of input '%(image)s' is not base64: in JSON, send each image file "
            "base64-encoded (or send it as binary tensor data).", n=n + 1,
            image=IMAGE)) from None


def _tensor(given: tensors.RequestInput, k: int, classifier):
    """A batch preprocessed by the client: float32 [N, 3, size, size], finite."""
    size = classifier.loaded.input_size
    shape = given.shape
    if len(shape) != 4 or shape[1:] != [3, size, size]:
        raise tensors.TensorError(Message("Input '%(tensor)s' must have the shape [N, 3, "
                                          "%(size)s, %(size)s] for this model, not %(shape)s.",
                                          tensor=TENSOR, size=size, shape=str(shape)))
    _check_count(shape[0])
    batch = np.ascontiguousarray(given.array(), dtype=np.float32)
    if not np.isfinite(batch).all():
        raise tensors.TensorError(Message("Input '%(tensor)s' holds values that are not "
                                          "finite (NaN or infinity).", tensor=TENSOR))
    predictions, unknown, timings = classifier.answer_batch(batch, k)
    metrics.observe_classification([], timings)
    accesslog.note(model=classifier.model_id)
    return [[p.as_dict() for p in row] for row in predictions], unknown
