"""The API described for machines and people: ``GET /openapi.json`` (OpenAPI 3.1) and
``GET /api`` (the same, as a page that needs nothing from the network).

The paths come from the app's own routes (every rule of the public and admin APIs:
``API_PREFIXES``), so the document cannot miss one; what each operation takes and answers
is in ``OPERATIONS``, keyed by endpoint and method.  A route without an entry there is
described as "undocumented" in the page and fails the test that checks the document
(tests/views/test_openapi.py), as does a document that does not validate."""

from __future__ import annotations

import re

from flask import Blueprint, current_app, jsonify, render_template

from webapp.http.images import MAX_TOPK
from webapp.views.v2 import SERVER_VERSION

bp = Blueprint("openapi", __name__)

API_PREFIXES = ("/predict", "/explain", "/healthz", "/readyz", "/metrics", "/v2",
                "/admin/api/", "/kiosk/settings.json", "/openapi.json")
ADMIN = [{"adminToken": []}, {"adminSession": []}]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict | str, description: str = "OK") -> dict:
    schema = _ref(schema) if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int, v2: bool = False) -> dict:
    schema = "V2Error" if v2 else "Error"
    words = {400: "Bad request (the message says what)", 401: "No or wrong admin token",
             403: "The admin area is disabled (ADMIN_TOKEN is not set)",
             404: "Not found", 405: "Method not allowed", 408: "The request came too slowly",
             409: "Conflicts with the store's state", 413: "Too large",
             415: "Not an image, or a format that is not accepted",
             422: "A damaged image or model file", 429: "Too many failed logins",
             503: "The model is not available, or every upload slot is taken",
             504: "Waited too long", 507: "The store has no room"}
    return {str(s): _json(schema, words[s]) for s in statuses}


IMAGE_FORM = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {
                "image": {"type": "array", "items": {"type": "string",
                                                     "contentMediaType": "image/*"},
                          "description": "One or more image files (`file` works too)."},
                "topk": {"type": "integer", "minimum": 1, "maximum": MAX_TOPK, "default": 3},
            }}},
        "image/*": {"schema": {"type": "string", "contentMediaType": "image/*"}},
    },
}
TOPK = {"name": "topk", "in": "query", "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOPK, "default": 3},
        "description": "How many answers per image (also as a form field)."}
WAIT = {"name": "wait", "in": "query", "required": False,
        "schema": {"oneOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 600},
                             {"type": "string", "enum": ["true", "false"]}]},
        "description": "Answer only once every worker of this machine's servers serves the "
                       "model (seconds, or true for 60); 504 wait_timeout otherwise."}
JSON_OBJECT = {"required": True,
               "content": {"application/json": {"schema": {"type": "object"}}}}


def _op(summary: str, tag: str, responses: dict, description: str = "", *,
        admin: bool = False, body: dict | None = None, query: list | None = None) -> dict:
    op = {"summary": summary, "tags": [tag], "responses": responses}
    if description:
        op["description"] = description
    if admin:
        op["security"] = ADMIN
    if body:
        op["requestBody"] = body
    if query:
        op["parameters"] = query
    return op


def _file(media: str, description: str) -> dict:
    return {"description": description,
            "content": {media: {"schema": {"type": "string", "contentMediaType": media}}}}


_V2_INFER = _op(
    "Open Inference Protocol: classify", "Open Inference Protocol",
    {"200": _json("InferenceResponse"), **_errors(400, 404, 408, 413, 415, 422, 503, v2=True)},
    "Input `image` (BYTES [N]: encoded files, base64 in JSON) or `tensor` (FP32 [N, 3, H, W], "
    "preprocessed as the model metadata's parameters say); outputs `labels`, "
    "`probabilities`, `indices` [N, k] and `unknown` [N]; request parameter `top_k`. The "
    "binary tensor data extension is accepted (Inference-Header-Content-Length).",
    body={"required": True, "content": {
        "application/json": {"schema": _ref("InferenceRequest")},
        "application/octet-stream": {"schema": {"type": "string"}}}})
_V2_META = _op("Open Inference Protocol: model metadata", "Open Inference Protocol",
               {"200": _json("ModelMetadata"), **_errors(404, v2=True)},
               "The one model, `classifier`: the model this server serves.")
_V2_READY = _op("Open Inference Protocol: model ready", "Open Inference Protocol",
                {"200": _json({"type": "object", "properties": {
                    "name": {"type": "string"}, "ready": {"type": "boolean"}}}),
                 **_errors(400, 404, v2=True)})

OPERATIONS: dict[tuple[str, str], dict] = {
    ("api.predict", "post"): _op(
        "Classify one or more photos", "Classify",
        {"200": _json("PredictResponse"),
         **_errors(400, 408, 413, 415, 422, 503)},
        "Several images are classified as one batch (then `results`, one per image).",
        body=IMAGE_FORM, query=[TOPK]),
    ("api.explain", "post"): _op(
        "How the model saw one photo: preprocessing steps and a heatmap", "Classify",
        {"200": {"description": "JSON with base64 PNGs, or the heatmap PNG for Accept: "
                 "image/png", "content": {"application/json": {"schema": {"type": "object"}},
                                          "image/png": {"schema": {"type": "string"}}}},
         **_errors(400, 408, 413, 415, 422, 503), "501": _json("Error", "A model without "
                                                                "a convolutional feature map")},
        body=IMAGE_FORM, query=[TOPK, {"name": "class_index", "in": "query", "required": False,
                                       "schema": {"type": "integer", "minimum": 0},
                                       "description": "Explain this class, not the top one."}]),
    ("api.healthz", "get"): _op("Alive", "Health", {"200": _json(
        {"type": "object", "properties": {"status": {"const": "ok"}}})}),
    ("api.readyz", "get"): _op("Ready: the model is loaded (which, from where)", "Health",
                               {"200": _json({"type": "object"}),
                                "503": _json({"type": "object"}, "Not ready, and why")}),
    ("metrics.metrics_endpoint", "get"): _op(
        "Prometheus metrics of every worker", "Health",
        {"200": _file("text/plain", "Prometheus text format")}),
    ("kiosk.settings_json", "get"): _op("The kiosk's settings", "Kiosk",
                                        {"200": _json({"type": "object"})}),
    ("openapi.document_json", "get"): _op("This description (OpenAPI 3.1)", "Health",
                                     {"200": _json({"type": "object"})}),
    ("v2.server_metadata", "get"): _op(
        "Open Inference Protocol: server metadata", "Open Inference Protocol",
        {"200": _json({"type": "object", "required": ["name", "version", "extensions"],
                       "properties": {"name": {"type": "string"},
                                      "version": {"type": "string"},
                                      "extensions": {"type": "array",
                                                     "items": {"type": "string"}}}})}),
    ("v2.live", "get"): _op("Open Inference Protocol: server live", "Open Inference Protocol",
                            {"200": _json({"type": "object", "properties": {
                                "live": {"type": "boolean"}}})}),
    ("v2.ready", "get"): _op("Open Inference Protocol: server ready",
                             "Open Inference Protocol",
                             {"200": _json({"type": "object", "properties": {
                                 "ready": {"type": "boolean"}}}),
                              "400": _json({"type": "object"}, "Not ready")}),
    ("v2.model_metadata", "get"): _V2_META,
    ("v2.model_ready", "get"): _V2_READY,
    ("v2.infer", "post"): _V2_INFER,
    # ------------------------------------------------------------------ admin: models
    ("admin.api_list", "get"): _op("Every model, the active one, the history", "Models",
                                   {"200": _json({"type": "object"}), **_errors(401, 403)},
                                   admin=True),
    ("admin.api_upload", "post"): _op(
        "Upload a model file (validated, stored)", "Models",
        {"201": _json("ModelEntry", "Stored"),
         **_errors(400, 401, 403, 409, 413, 422, 503, 507)},
        "A checkpoint, state_dict, safetensors or ONNX file; the class names, arch and "
        "preprocessing when the file does not hold them (docs/admin.md).", admin=True,
        body={"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["checkpoint"], "properties": {
                "checkpoint": {"type": "string", "contentMediaType":
                               "application/octet-stream"},
                "name": {"type": "string"}, "activate": {"type": "string"},
                "classes": {"type": "string"}, "labels": {"type": "string"},
                "arch": {"type": "string"}, "input_size": {"type": "integer"},
                "mean": {"type": "string"}, "std": {"type": "string"}}}}}}),
    ("admin.api_model", "get"): _op("One model", "Models",
                                    {"200": _json("ModelEntry"), **_errors(401, 403, 404)},
                                    admin=True),
    ("admin.api_rename", "patch"): _op(
        "Rename a model", "Models", {"200": _json("ModelEntry"),
                                     **_errors(400, 401, 403, 404, 409)}, admin=True,
        body={"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["name"], "properties": {
                "name": {"type": "string", "maxLength": 80}}}}}}),
    ("admin.api_delete", "delete"): _op("Delete an inactive model", "Models",
                                        {"200": _json({"type": "object"}),
                                         **_errors(401, 403, 404, 409)}, admin=True),
    ("admin.api_activate", "post"): _op(
        "Activate a model", "Models", {"200": _json("PointerState"),
                                       **_errors(400, 401, 403, 404, 504)},
        "Active once the pointer is written; with `wait`, once every worker serves it.",
        admin=True, query=[WAIT]),
    ("admin.api_rollback", "post"): _op("Roll back to the previous model", "Models",
                                        {"200": _json("PointerState"),
                                         **_errors(400, 401, 403, 409, 504)},
                                        admin=True, query=[WAIT]),
    ("admin.api_redo", "post"): _op("Undo the last rollback", "Models",
                                    {"200": _json("PointerState"),
                                     **_errors(400, 401, 403, 409, 504)},
                                    admin=True, query=[WAIT]),
    ("admin.api_predict", "post"): _op("Try an image with any stored model", "Models",
                                       {"200": _json("PredictResponse"),
                                        **_errors(400, 401, 403, 404, 413, 415, 422, 503)},
                                       admin=True, body=IMAGE_FORM, query=[TOPK]),
    ("admin.api_download", "get"): _op(
        "Download a model: checkpoint, onnx, card or readme", "Models",
        {"200": {"description": "The file (Content-Disposition: attachment)", "content": {
            "application/octet-stream": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
            "text/markdown": {"schema": {"type": "string"}}}},
         **_errors(401, 403, 404, 409, 503)},
        "`what`: checkpoint (PyTorch, format v1), onnx (fp32), card (JSON), readme.",
        admin=True),
    ("admin.teach.api_report", "get"): _op("A taught model's training report", "Models",
                                           {"200": _json({"type": "object"}),
                                            **_errors(401, 403, 404)}, admin=True),
    ("admin.teach.report_file", "get"): _op(
        "A file of the training report (report.json, confusion.png, curves.png)", "Models",
        {"200": _file("image/png", "The file"), **_errors(401, 403, 404)}, admin=True),
    # ------------------------------------------------------------------ admin: kiosk
    ("admin.api_kiosk_settings", "get"): _op("The kiosk's teacher settings", "Kiosk",
                                             {"200": _json({"type": "object"}),
                                              **_errors(401, 403)}, admin=True),
    ("admin.api_kiosk_settings_update", "put"): _op(
        "Change the kiosk's settings", "Kiosk",
        {"200": _json({"type": "object"}), **_errors(400, 401, 403, 413)}, admin=True,
        body=JSON_OBJECT),
    ("admin.api_kiosk_settings_update", "patch"): _op(
        "Change some of the kiosk's settings", "Kiosk",
        {"200": _json({"type": "object"}), **_errors(400, 401, 403, 413)}, admin=True,
        body=JSON_OBJECT),
    # ------------------------------------------------------------------ admin: class names
    ("admin.api_labels", "get"): _op(
        "The built-in model's ImageNet class names in a language", "Class names",
        {"200": _json({"type": "object"}), **_errors(401, 403, 404, 409)},
        "`language`: a language the pages speak (zh-CN, en). Each class: its index, the "
        "ImageNet label, the shipped name, the teacher's own name (or null) and the name "
        "shown.", admin=True),
    ("admin.api_label_set", "put"): _op(
        "Give an ImageNet class the teacher's own name", "Class names",
        {"200": _json({"type": "object"}), **_errors(400, 401, 403, 404, 409, 413)},
        'JSON `{"name": "..."}`; it overrides the shipped name in that language.',
        admin=True, body=JSON_OBJECT),
    ("admin.api_label_reset", "delete"): _op(
        "Give an ImageNet class its shipped name again", "Class names",
        {"200": _json({"type": "object"}), **_errors(401, 403, 404, 409)}, admin=True),
    # ------------------------------------------------------------------ admin: Teach
    ("admin.teach.api_datasets", "get"): _op("Every Teach dataset", "Teach",
                                             {"200": _json({"type": "object"}),
                                              **_errors(401, 403)}, admin=True),
    ("admin.teach.api_create", "post"): _op(
        "Create a dataset (JSON), or import a zip", "Teach",
        {"201": _json({"type": "object"}, "Created"), **_errors(400, 401, 403, 409, 413)},
        admin=True, body={"required": True, "content": {
            "application/json": {"schema": {"type": "object"}},
            "multipart/form-data": {"schema": {"type": "object"}}}}),
    ("admin.teach.api_dataset", "get"): _op("One dataset", "Teach",
                                            {"200": _json({"type": "object"}),
                                             **_errors(401, 403, 404)}, admin=True),
    ("admin.teach.api_delete", "delete"): _op("Delete a dataset", "Teach",
                                              {"200": _json({"type": "object"}),
                                               **_errors(401, 403, 404, 409)}, admin=True),
    ("admin.teach.api_add_class", "post"): _op("Add a class", "Teach",
                                               {"201": _json({"type": "object"}, "Added"),
                                                **_errors(400, 401, 403, 404, 409)},
                                               admin=True, body=JSON_OBJECT),
    ("admin.teach.api_delete_class", "delete"): _op("Delete a class and its pictures",
                                                    "Teach",
                                                    {"200": _json({"type": "object"}),
                                                     **_errors(401, 403, 404)}, admin=True),
    ("admin.teach.api_add_images", "post"): _op(
        "Add pictures to a class", "Teach",
        {"201": _json({"type": "object"}, "Added"),
         **_errors(400, 401, 403, 404, 413, 415, 422)}, admin=True,
        body={"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["label", "image"], "properties": {
                "label": {"type": "string"},
                "image": {"type": "array", "items": {"type": "string"}}}}}}}),
    ("admin.teach.api_image", "get"): _op("One picture (JPEG)", "Teach",
                                          {"200": _file("image/jpeg", "The picture"),
                                           **_errors(401, 403, 404)}, admin=True),
    ("admin.teach.api_delete_image", "delete"): _op("Delete a picture", "Teach",
                                                    {"200": _json({"type": "object"}),
                                                     **_errors(401, 403, 404)}, admin=True),
    ("admin.teach.api_export", "get"): _op("The dataset as a zip", "Teach",
                                           {"200": _file("application/zip", "A zip file"),
                                            **_errors(401, 403, 404)}, admin=True),
    ("admin.teach.api_train", "post"): _op(
        "Train a model on a dataset (a background job)", "Teach",
        {"202": _json({"type": "object"}, "Queued"), **_errors(400, 401, 403, 404, 409)},
        admin=True, body={"required": False, "content": {"application/json": {
            "schema": {"type": "object"}}}}),
    ("admin.teach.api_jobs", "get"): _op("Every training job", "Teach",
                                         {"200": _json({"type": "object"}),
                                          **_errors(401, 403)}, admin=True),
    ("admin.teach.api_job", "get"): _op("One training job, with its progress", "Teach",
                                        {"200": _json({"type": "object"}),
                                         **_errors(401, 403, 404)}, admin=True),
    ("admin.teach.api_cancel", "delete"): _op("Cancel a training job", "Teach",
                                              {"200": _json({"type": "object"}),
                                               **_errors(401, 403, 404, 409)}, admin=True),
}

SCHEMAS = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
    "V2Error": {"type": "object", "required": ["error"],
                "properties": {"error": {"type": "string"}}},
    "Prediction": {"type": "object", "required": ["label", "index", "score"], "properties": {
        "label": {"type": "string"}, "index": {"type": "integer"},
        "score": {"type": "number", "minimum": 0, "maximum": 1}}},
    "Model": {"type": "object", "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "version": {"type": "string"},
        "arch": {"type": "string"},
        "quantization": {"type": "string", "description": "The QUANTIZE setting (auto, none, "
                         "bf16, static, dynamic)"},
        "precision": {"type": "string", "enum": ["fp32", "bf16", "int8"],
                      "description": "The precision that answered"},
        "engine": {"type": "string"}}},
    "PredictResponse": {"type": "object", "required": ["model", "timings_ms"], "properties": {
        "model": _ref("Model"),
        "predictions": {"type": "array", "items": _ref("Prediction")},
        "unknown": {"type": "boolean"},
        "results": {"type": "array", "items": {"type": "object"}},
        "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}}}},
    "ModelEntry": {"type": "object", "required": ["id", "name"], "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "arch": {"type": ["string",
                                                                                "null"]},
        "classes": {"type": "array", "items": {"type": "string"}},
        "active": {"type": "boolean"}, "builtin": {"type": "boolean"}}},
    "PointerState": {"type": "object", "required": ["active"], "properties": {
        "active": {"type": "string"}, "history": {"type": "array", "items": {"type": "string"}},
        "redo": {"type": "array", "items": {"type": "string"}},
        "changed": {"type": ["string", "null"]},
        "workers": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "With wait: the model each worker (pid) serves."}}},
    "Tensor": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "parameters": {"type": "object"}, "data": {"type": "array"}}},
    "InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _ref("Tensor")},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                               "properties": {"name": {"type": "string"},
                                                              "parameters": {
                                                                  "type": "object"}}}}}},
    "InferenceResponse": {"type": "object", "required": ["model_name", "outputs"],
                          "properties": {"model_name": {"type": "string"},
                                         "model_version": {"type": "string"},
                                         "id": {"type": "string"},
                                         "outputs": {"type": "array",
                                                     "items": _ref("Tensor")}}},
    "ModelMetadata": {"type": "object", "required": ["name", "platform"], "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": _ref("Tensor")},
        "outputs": {"type": "array", "items": _ref("Tensor")}}},
}


def api_rules(app) -> list:
    """The rules of the public and admin APIs (not the pages, not static files)."""
    return [rule for rule in app.url_map.iter_rules()
            if rule.rule == "/v2" or rule.rule.startswith(API_PREFIXES)]


def methods(rule) -> list[str]:
    return sorted(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})


def openapi_path(rule) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)


def document(app) -> dict:
    """The OpenAPI 3.1 document of ``app``'s API routes."""
    paths: dict = {}
    for rule in sorted(api_rules(app), key=lambda r: r.rule):
        item = paths.setdefault(openapi_path(rule), {})
        parameters = [{"name": name, "in": "path", "required": True,
                       "schema": {"type": "string"}} for name in sorted(rule.arguments)]
        for method in methods(rule):
            op = OPERATIONS.get((rule.endpoint, method))
            op = dict(op) if op else {"summary": "undocumented", "tags": ["Undocumented"],
                                      "responses": {"200": {"description": "OK"}}}
            op["operationId"] = f"{rule.endpoint}.{method}".replace(".", "_") + (
                "_versioned" if "version" in rule.arguments else "")
            if parameters:
                op["parameters"] = parameters + op.get("parameters", [])
            item[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Offline image classifier", "version": SERVER_VERSION,
                 "description": "Classify photos (/predict, the Open Inference Protocol at "
                                "/v2), and manage models, the kiosk and Teach (/admin/api, "
                                "with Authorization: Bearer <ADMIN_TOKEN>). docs/api.md and "
                                "docs/admin.md explain them."},
        "servers": [{"url": "/"}],
        "tags": [{"name": tag} for tag in ("Classify", "Open Inference Protocol", "Health",
                                           "Kiosk", "Class names", "Models", "Teach")],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer",
                               "description": "ADMIN_TOKEN"},
                "adminSession": {"type": "apiKey", "in": "cookie", "name": "session",
                                 "description": "The admin page's login (state changes "
                                                "also need the X-CSRFToken header)"}},
        },
    }


@bp.get("/openapi.json")
def document_json():
    return jsonify(document(current_app))


@bp.get("/api")
def page():
    """The document as a page (server-rendered: no script, nothing from the network)."""
    return render_template("api.html", doc=document(current_app))
