"""Taking a model away: ``GET /admin/api/models/<id>/download/<what>`` with ``what``

* ``checkpoint``: a PyTorch checkpoint in format v1 (weights, classes, preprocessing): a
  model stored in that format (trained here, or uploaded so) as it is, any other PyTorch
  or safetensors upload and the built-in model written so by a child process (torch never
  loads in a worker); an ONNX upload has none (409);
* ``onnx``: the engine's fp32 network (the ONNX file every engine serves it from);
* ``card``: the model card as JSON (``webapp.stores.model_card``), ``readme`` as Markdown.

The admin page links to them; the session or the bearer token is needed, as for every
admin route."""

from __future__ import annotations

import contextlib
import os

from flask import current_app, jsonify, send_file

from webapp import current, engines
from webapp.checkpoints.loaded import CHECKPOINT_FORMAT
from webapp.current import registry
from webapp.engines import EngineSettings, child
from webapp.messages import Message
from webapp.stores import model_card
from webapp.stores.registry import BUILTIN, RegistryError, unknown_model
from webapp.views.admin import bp

WHAT = ("checkpoint", "onnx", "card", "readme")


def _entry(model_id: str) -> dict:
    if model_id == BUILTIN:
        entries, _ = current.holder().model_entries()
        return entries[0]
    return {**registry().meta(model_id), "builtin": False}  # 404 for an unknown id


def _card(model_id: str):
    """The model's engine card (from the engine cache; built by a child when missing)."""
    settings = EngineSettings.from_config(current_app.config)
    source = (engines.builtin_source(current_app.config) if model_id == BUILTIN
              else registry().source(model_id))
    return engines.ensure_card(source, settings), settings.cache


def _files(model_id: str) -> dict[str, str]:
    return {"checkpoint": f"{model_id}.pt", "onnx": f"{model_id}.onnx",
            "card": f"{model_id}.card.json", "readme": f"{model_id}.README.md"}


@bp.get("/api/models/<model_id>/download/<what>")
def api_download(model_id, what):
    if what not in WHAT:
        raise RegistryError(404, "unknown_download", Message(
            "There is no download %(what)s; use %(choices)s.", what=repr(what),
            choices=", ".join(WHAT)))
    if not registry().exists(model_id):
        raise unknown_model(model_id)
    entry = _entry(model_id)
    files = _files(model_id)
    if what == "checkpoint":
        return _checkpoint(model_id, entry, files["checkpoint"])
    card, cache = _card(model_id)
    if what == "onnx":
        return send_file(cache.path(card.onnx), mimetype="application/octet-stream",
                         as_attachment=True, download_name=files["onnx"])
    described = model_card.describe(entry, card, files)
    if what == "card":
        response = jsonify(described)
    else:
        response = current_app.response_class(model_card.readme(described),
                                              mimetype="text/markdown")
    response.headers["Content-Disposition"] = f'attachment; filename="{files[what]}"'
    return response


def _checkpoint(model_id: str, entry: dict, filename: str):
    if entry.get("kind") == "onnx":
        raise RegistryError(409, "no_checkpoint", Message(
            "This model was uploaded as ONNX, so there is no PyTorch checkpoint of it: "
            "download it as ONNX."))
    if not entry.get("builtin") and (entry.get("found") or {}).get("format") \
            == CHECKPOINT_FORMAT:
        return send_file(registry().checkpoint_path(model_id),  # as stored: already v1
                         mimetype="application/octet-stream", as_attachment=True,
                         download_name=filename)
    card, _ = _card(model_id)
    source = card.source if entry.get("builtin") else registry().checkpoint_path(model_id)
    out = registry().temp_path("download-")
    facts = {"arch": card.arch, "classes": card.labels, "input_size": card.input_size,
             "mean": card.mean, "std": card.std}
    try:
        child.run_convert(str(source), facts, str(out))
        response = send_file(os.fspath(out), mimetype="application/octet-stream",
                             as_attachment=True, download_name=filename)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        raise

    def remove():
        with contextlib.suppress(FileNotFoundError):
            out.unlink()

    response.call_on_close(remove)
    return response
