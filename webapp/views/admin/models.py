"""The admin's model pages and API: the model table, upload (streamed to a temp file
inside ``MODEL_DIR``, never held in memory, limited by ``MAX_CHECKPOINT_MB`` instead of
``MAX_UPLOAD_MB``), activate, roll back, redo, rename, delete, and "try an image" with
any stored model.  The store itself is ``webapp.stores.registry``."""

from __future__ import annotations

import os
from pathlib import Path

from flask import (
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import RequestEntityTooLarge

from webapp import current, imaging
from webapp.checkpoints.architectures import supported_archs
from webapp.checkpoints.loaded import ModelLoadError
from webapp.checkpoints.loaded import summary as model_summary
from webapp.checkpoints.onnx_model import bundle
from webapp.current import registry
from webapp.http import capacity, uploads
from webapp.http.errors import ApiError, too_large
from webapp.http.images import classify, display_names, parse_topk, uploads_from_request
from webapp.i18n import _, _l, translate
from webapp.messages import Message, reason
from webapp.serving.workers import NotServing
from webapp.stores.registry import BUILTIN, RegistryError, unknown_model
from webapp.training import caveat
from webapp.views.admin import bp, is_api

# Checkpoint uploads: to MODEL_DIR/tmp, up to MAX_CHECKPOINT_MB.
checkpoint_upload = uploads.spooled("MAX_CHECKPOINT_MB",
                                    lambda: registry().temp_path("upload-"))


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(exc):
    if request.spooled_route is not None:
        limit = current_app.config["MAX_CHECKPOINT_MB"]
        return too_large(Message("The checkpoint is larger than the %(mb)s MB limit "
                                 "(MAX_CHECKPOINT_MB).", mb=f"{limit:g}"), image=False)
    limit = current_app.config["MAX_UPLOAD_MB"]  # "try an image" keeps the image limit
    return too_large(Message("The upload is larger than the %(mb)s MB limit (MAX_UPLOAD_MB).",
                             mb=f"{limit:g}"))


# --------------------------------------------------------------------------- model table


def model_entries() -> tuple[list[dict], dict]:
    """Every model (``ModelHolder.model_entries``), each with its classes as this request's
    language names them (``display_classes``; the built-in ImageNet classes translated)."""
    entries, state = current.holder().model_entries()
    for entry in entries:
        entry["display_classes"] = list(display_names(entry.get("classes") or []))
        if entry.get("summary"):  # what was found where, in the reader's words
            entry["summary"] = translate(model_summary(entry))
        if entry.get("error"):
            entry["error"] = translate(entry["error"])
        metrics = entry.get("metrics") or {}
        if metrics.get("caveat_facts"):  # a Teach report's caveat, in the reader's words
            entry["metrics"] = {**metrics, "caveat": translate(
                caveat.message(metrics["caveat_facts"]))}
    return entries, state


# How a checkpoint's metrics read in the model table: (label, kind), kind "percent" for
# fractions 0..1.  Keys not listed are shown with their name in words.
METRIC_LABELS = {
    "val_accuracy": (_l("Validation accuracy"), "percent"),
    "test_accuracy": (_l("Accuracy on unseen test pictures"), "percent"),
    "accuracy": (_l("Accuracy"), "percent"),
    "macro_f1": (_l("Macro F1"), "number"),
    "val_loss": (_l("Validation loss"), "number"),
    "evaluated_on": (_l("Evaluated on"), "text"),
    "best_epoch": (_l("Best epoch"), "number"),
    "epochs_run": (_l("Epochs run"), "number"),
    "epochs": (_l("Epochs"), "number"),
    "train_images": (_l("Training pictures"), "number"),
    "strategy": (_l("What trained"), "text"),
    "backbone": (_l("Started from"), "text"),
    "pretrained": (_l("ImageNet weights to start"), "yes/no"),
    "image_size": (_l("Image size"), "pixels"),
    "caveat": (_l("Note"), "text"),
}
# A quantization the page names in words ("int8", "fp32" are the same in every language;
# "none" is full precision).
QUANTIZATION_WORDS = {"auto": _l("automatic"), "none": "fp32"}
# Words a metric's value may be (the evaluation split, the training strategy).
METRIC_WORDS = {"val": _l("validation pictures"), "test": _l("test pictures"),
                "progressive": _l("progressive"), "head": _l("head only"),
                "full": _l("everything")}
MAIN_METRICS = ("val_accuracy", "test_accuracy", "accuracy")  # shown first, in bold


def readable_metrics(metrics: dict | None) -> list[dict]:
    """A checkpoint's metrics as ``[{"key", "label", "text", "main"}]`` for people:
    accuracies in per cent, the rest with three significant digits, booleans as yes/no;
    the accuracies first.  Nested values (lists, dicts) are left out."""
    rows = []
    metrics = metrics or {}
    for key, value in metrics.items():
        if value is None or isinstance(value, list | dict):
            continue
        label, kind = METRIC_LABELS.get(key, (key.replace("_", " ").capitalize(), "number"))
        label = str(label)
        if isinstance(value, bool) or kind == "yes/no":
            text = _("yes") if value else _("no")
        elif not isinstance(value, int | float):
            text = str(METRIC_WORDS.get(value, value))
        elif kind == "percent" and 0 <= value <= 1:
            text = f"{value * 100:.1f}%"
        elif kind == "pixels":
            text = _("%(size)s px", size=f"{value:g}")
        else:
            text = f"{value:.3g}" if isinstance(value, float) else str(value)
        rows.append({"key": key, "label": label, "text": text, "main": key in MAIN_METRICS})
    return sorted(rows, key=lambda row: not row["main"])


def _serving() -> dict:
    holder = current.holder()
    classifier = holder.get()
    info = classifier.info
    # notice: the active model could not be loaded; model_notice: about the model served
    # (the bundled fallback, an unverified file).  The public pages show neither.
    return {**info, "quantization": str(QUANTIZATION_WORDS.get(info.get("quantization"),
                                                              info.get("quantization"))),
            "pid": os.getpid(), "notice": holder.notice and translate(holder.notice),
            "model_notice": classifier.loaded.notice and translate(classifier.loaded.notice),
            "engine_info": classifier.loaded.engine_info}


def _store_upload() -> dict:
    """The uploaded checkpoint (already on disk in MODEL_DIR/tmp), validated and stored.
    Several files in the field (an ONNX model and its external data file) are stored
    as one zip of them."""
    files = request.files.getlist("checkpoint") or request.files.getlist("file")
    if not files:
        raise RegistryError(400, "no_checkpoint", Message(
            "No checkpoint received. Send it as a multipart form field named 'checkpoint'."))
    paths = []
    for upload in files:
        stream = upload.stream
        path = Path(getattr(stream, "name", "") or "")
        if not path.name.startswith("upload-"):  # not spooled (cannot happen on our routes)
            raise RegistryError(400, "no_checkpoint", Message(
                "The checkpoint was not received as a file."))
        stream.flush()
        os.fsync(stream.fileno())
        stream.close()
        if path.stat().st_size == 0:
            raise RegistryError(400, "empty_file", Message(
                "The uploaded checkpoint is empty (0 bytes)."))
        paths.append((Path(upload.filename or "").name[:100] or "model", path))
    path = paths[0][1]
    if len(paths) > 1:  # an ONNX model and its data file(s): kept together as a zip
        path = bundle(paths, registry().temp_path("upload-"))
    fields = {key: request.form.get(key) for key in MODEL_FIELDS}
    meta = registry().add(path, name=request.form.get("name"),
                          fields={**fields, "labels": _labels_file()}, move=True,
                          original_filename=" + ".join(name for name, _ in paths))
    if request.form.get("activate") in ("1", "on", "true", "yes"):
        registry().activate(meta["id"])
        meta["activated"] = True
    return meta


MAX_LABELS_BYTES = 1 << 20  # a labels file of 1 MB holds ~50,000 names
# Form fields sent with a model file, as load_checkpoint takes them.
MODEL_FIELDS = ("arch", "classes", "input_size", "mean", "std", "activation", "ema")


def _labels_file() -> bytes | None:
    """The contents of the optional ``labels`` file sent with a checkpoint (a file
    part, or a text field: ``curl -F 'labels=<labels.txt'``)."""
    upload = request.files.get("labels")
    if upload is not None and upload.filename:
        data = upload.stream.read(MAX_LABELS_BYTES + 1)
    else:
        data = (request.form.get("labels") or "").encode("utf-8")
    if len(data) > MAX_LABELS_BYTES:
        raise RegistryError(413, "too_large", Message(
            "The labels file is larger than 1 MB; it should hold one class name a line."))
    return data or None


# --------------------------------------------------------------------------- pages


@bp.get("/")
def index():
    entries, state = model_entries()
    return render_template("admin/index.html", entries=entries, state=state,
                           serving=_serving(), added=request.args.get("added"),
                           archs=sorted(supported_archs()),
                           trial=g.get("trial"), trial_error=g.get("trial_error"),
                           trial_id=g.get("trial_id"))


def _page_error(exc: RegistryError):
    flash(translate(exc.message), "danger")
    return index(), exc.status


@bp.post("/models")
@checkpoint_upload
def upload_page():
    try:
        meta = _store_upload()
    except RegistryError as exc:
        return _page_error(exc)
    summary = translate(model_summary(meta))
    flash(_("Stored %(name)s as %(id)s (%(summary)s) and activated it.", name=meta["name"],
            id=meta["id"], summary=summary) if meta.get("activated") else
          _("Stored %(name)s as %(id)s (%(summary)s).", name=meta["name"], id=meta["id"],
            summary=summary), "success")
    return redirect(url_for("admin.index", added=meta["id"]))


def _page_change(change, message):
    """A form's change to the store: done, a message, back to the page -- or the page
    again with the reason (and its 4xx status)."""
    try:
        result = change()
    except RegistryError as exc:
        return _page_error(exc)
    flash(message(result), "success")
    return redirect(url_for("admin.index"))


def _activated(model_id: str) -> str:
    if model_id == BUILTIN:
        return _("Activated the built-in model (%(id)s).", id=model_id)
    return _("Activated %(name)s (%(id)s).", name=registry().meta(model_id)["name"],
             id=model_id)


@bp.post("/models/<model_id>/activate")
def activate_page(model_id):
    return _page_change(lambda: registry().activate(model_id),
                        lambda state: _activated(model_id))


@bp.post("/rollback")
def rollback_page():
    return _page_change(registry().rollback,
                        lambda state: _("Rolled back to %(id)s.", id=state.active))


@bp.post("/redo")
def redo_page():
    return _page_change(registry().redo, lambda state: _("Back to %(id)s.", id=state.active))


@bp.post("/models/<model_id>/rename")
def rename_page(model_id):
    return _page_change(lambda: registry().rename(model_id, request.form.get("name")),
                        lambda meta: _("Renamed %(id)s to %(name)s.", id=model_id,
                                       name=meta["name"]))


@bp.post("/models/<model_id>/delete")
def delete_page(model_id):
    return _page_change(lambda: registry().delete(model_id),
                        lambda result: _("Deleted %(id)s.", id=model_id))


@bp.post("/try")
@capacity.upload_slot
def try_page():
    """The no-JavaScript "try an image": the admin page with the predictions."""
    model_id = request.form.get("model_id", "")
    g.trial_id = model_id
    try:
        g.trial, _ = _trial(model_id)
        status = 200
    except (RegistryError, ApiError, imaging.ImageError, ModelLoadError) as exc:
        g.trial_error = translate(getattr(exc, "message", None) or reason(exc))
        status = getattr(exc, "status", 503)
    return index(), status


def _trial(model_id: str):
    """Classify the request's image(s) with any stored model, without activating it."""
    if not registry().exists(model_id):
        raise unknown_model(model_id)
    images = uploads_from_request()
    if not is_api():
        images = images[:1]  # the page shows one result
    classifier = current.holder().classifier_for(model_id)
    return classify(images, parse_topk(), classifier)


# --------------------------------------------------------------------------- API


@bp.get("/api/models")
def api_list():
    entries, state = model_entries()
    return jsonify(active=state["active"], history=state["history"], redo=state["redo"],
                   changed=state["changed"], serving=_serving(), models=entries)


@bp.post("/api/models")
@checkpoint_upload
def api_upload():
    meta = _store_upload()
    response = jsonify({**meta, "builtin": False, "summary": translate(model_summary(meta)),
                        "active": registry().state().active == meta["id"]})
    response.status_code = 201
    response.headers["Location"] = url_for("admin.api_model", model_id=meta["id"])
    return response


@bp.get("/api/models/<model_id>")
def api_model(model_id):
    entries, _state = model_entries()
    for entry in entries:
        if entry["id"] == model_id:
            return jsonify(entry)
    raise unknown_model(model_id)


@bp.post("/api/models/<model_id>/activate")
def api_activate(model_id):
    seconds = _wait_seconds()  # a bad value changes nothing
    return _changed(registry().activate(model_id), seconds)


@bp.post("/api/rollback")
def api_rollback():
    seconds = _wait_seconds()
    return _changed(registry().rollback(), seconds)


@bp.post("/api/redo")
def api_redo():
    seconds = _wait_seconds()
    return _changed(registry().redo(), seconds)


WAIT_DEFAULT, WAIT_MAX = 60.0, 600.0


def _wait_seconds() -> float | None:
    """The ``wait`` option: seconds (up to WAIT_MAX), ``true`` for WAIT_DEFAULT, absent or
    ``false`` for none."""
    raw = (request.args.get("wait") or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return None
    if raw in ("true", "yes", "on"):
        return WAIT_DEFAULT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= WAIT_MAX:
        raise ApiError(400, "bad_wait", f"wait must be a number of seconds from 0 to "
                       f"{WAIT_MAX:g}, or true ({WAIT_DEFAULT:g} s), not {raw!r}.")
    return seconds


def _changed(state, seconds: float | None):
    """The new pointer state; with ``wait``, once every worker of this server serves its
    model (``workers``: pid -> model), or 504 ``wait_timeout`` saying which do not."""
    body = state.as_dict()
    if seconds is not None:
        try:
            serving = current.workers().wait_for(state.active, seconds,
                                                 poll=current.holder().get)
        except NotServing as exc:
            raise ApiError(504, "wait_timeout", exc.message,
                           workers={str(pid): m for pid, m in exc.serving.items()}) from None
        body["workers"] = {str(pid): model for pid, model in sorted(serving.items())}
    return jsonify(body)


@bp.patch("/api/models/<model_id>")
def api_rename(model_id):
    """JSON ``{"name": "..."}``: the new display name."""
    hint = Message('Send the new name as JSON, e.g. {"name": "Fruit v2"}.')
    body = uploads.json_object(hint)  # the JSON budget: size and depth
    if not isinstance(body.get("name"), str):
        raise ApiError(400, "bad_json", hint)
    registry().rename(model_id, body["name"])
    return api_model(model_id)


@bp.delete("/api/models/<model_id>")
def api_delete(model_id):
    registry().delete(model_id)
    return jsonify(deleted=model_id)


@bp.post("/api/models/<model_id>/predict")
@capacity.upload_slot
def api_predict(model_id):
    body, _ = _trial(model_id)
    return jsonify(body)


@bp.context_processor
def _template_context():
    return {"readable_metrics": readable_metrics}
