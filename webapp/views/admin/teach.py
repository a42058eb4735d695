"""Teach it live: the admin **Teach** page (``/admin/teach``) and its API
(``/admin/api/datasets``, ``/admin/api/jobs``).  A teacher makes a dataset with class
names, captures images per class from the webcam (or drops files), presses Train, watches
the background job (``webapp.training.jobs``) and activates the model it made.

This blueprint is nested inside the admin blueprint (``/admin`` prefix), so every route
goes through the admin guard first: ``ADMIN_TOKEN`` set, bearer token or session, CSRF
token on every state-changing session request, rate-limited failures.  The dataset store
is ``webapp.stores.datasets``; nothing here ever sees ``/predict`` traffic.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    stream_with_context,
    url_for,
)
from werkzeug.exceptions import RequestEntityTooLarge

from webapp import current, imaging
from webapp.http import marks, uploads
from webapp.http.errors import ApiError, too_large
from webapp.i18n import _, _l, current_language, translate
from webapp.messages import Message
from webapp.stores.dataset_names import DatasetStoreError, check_taken
from webapp.stores.registry import REPORT_FILES, RegistryError
from webapp.training.jobs import TEACH_DEFAULTS, JobError, check_options
from webapp.views.admin import bp as admin_bp
from webapp.views.admin import fail

bp = Blueprint("teach", __name__)
admin_bp.register_blueprint(bp)  # /admin/teach...: nested, once, when first imported
marks.mark_blueprint(bp, marks.CAMERA)  # the Teach page films

THUMB_SIZES = range(32, 513)
REPORT_TYPES = {".png": "image/png", ".json": "application/json"}
JOB_STATES = {"queued": _l("queued"), "running": _l("running"), "done": _l("done"),
              "failed": _l("failed"), "cancelled": _l("cancelled")}


# The stores this blueprint works on (typed accessors: webapp.current).
store = current.datasets
jobs = current.jobs

# Dataset archives (zip bodies): to DATA_DIR/.tmp, up to MAX_DATASET_MB.
archive_upload = uploads.spooled("MAX_DATASET_MB", lambda: store().staging_dir("archive-"),
                                 multipart_only=True)


# --------------------------------------------------------------------------- errors
# (RegistryError, CSRF and the disk's errors: the admin area's handlers, webapp.views.admin)


@bp.errorhandler(DatasetStoreError)
@bp.errorhandler(JobError)
def _known_error(exc):
    return fail(exc.status, exc.code, exc.message, **exc.extra)


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(exc):
    if request.spooled_route is not None:  # a dataset archive: its own limit
        limit = current_app.config["MAX_DATASET_MB"]
        return too_large(Message("The dataset archive is larger than the %(mb)s MB limit "
                                 "(MAX_DATASET_MB).", mb=f"{limit:g}"), image=False)
    limit = current_app.config["MAX_UPLOAD_MB"]
    return too_large(Message("The upload is larger than the %(mb)s MB limit (MAX_UPLOAD_MB).",
                             mb=f"{limit:g}"), image=False)


# --------------------------------------------------------------------------- helpers


def _json_body(required: bool = True) -> dict:
    return uploads.json_object(Message("See the Teach API in docs/teach.md."),
                               required=required)


def _import_archive(name: str | None) -> dict:
    """The uploaded zip (spooled to DATA_DIR/.tmp) as a new dataset."""
    upload = request.files.get("archive") or request.files.get("file")
    if upload is None:
        raise DatasetStoreError(400, "no_archive", Message(
            "No archive received. Send the zip as a multipart form field named 'archive'."))
    stream = upload.stream
    path = Path(getattr(stream, "name", "") or "")
    if not path.name.startswith("archive-"):
        raise DatasetStoreError(400, "no_archive", Message(
            "The archive was not received as a file."))
    stream.flush()
    if path.stat().st_size == 0:
        raise DatasetStoreError(400, "empty_file", Message(
            "The uploaded archive is empty (0 bytes)."))
    if not name:
        name = Path(upload.filename or "").stem or None
    limit = int(current_app.config["MAX_UPLOAD_MB"] * 1024 * 1024)
    result = store().import_zip(
        path, name, max_member_bytes=limit,
        max_total_bytes=int(current_app.config["MAX_DATASET_MB"] * 4 * 1024 * 1024),
    )
    return {**store().describe(result.name), "import": result.as_dict()}


def _add_images() -> tuple[list[dict], str]:
    label = request.form.get("label")
    if label is None:
        raise DatasetStoreError(400, "no_label", Message(
            "Say which class the image shows: a form field named 'label', e.g. -F label=pen."))
    files = [f for key in ("image", "file") for f in request.files.getlist(key)]
    if not files:
        raise DatasetStoreError(400, "no_image", Message(
            "No image received. Send it as a multipart form field named 'image' (several are "
            "fine)."))
    limit = current_app.config["MAX_IMAGES_PER_REQUEST"]
    if len(files) > limit:
        raise DatasetStoreError(400, "too_many_images", Message(
            "%(count)s images sent; at most %(limit)s per request.", count=len(files),
            limit=limit))
    return files, label


def _model_summary(model_id: str | None) -> dict | None:
    if not model_id:
        return None
    registry = current.registry()
    try:
        meta = registry.meta(model_id)
    except RegistryError:
        return None  # deleted since
    meta["active"] = registry.state().active == model_id
    return meta


# --------------------------------------------------------------------------- pages


@bp.get("/teach")
def page():
    return render_template("admin/teach_index.html", datasets=store().list(),
                           defaults=TEACH_DEFAULTS)


@bp.post("/teach")
def create_page():
    try:
        summary = store().create(request.form.get("name", ""), request.form.get("classes", ""))
    except DatasetStoreError as exc:
        flash(translate(exc.message), "danger")
        return render_template("admin/teach_index.html", datasets=store().list(),
                               defaults=TEACH_DEFAULTS, form=request.form), exc.status
    flash(_("Created dataset %(name)s. Now show the camera each class.",
            name=summary["display_name"]), "success")
    return redirect(url_for("admin.teach.dataset_page", name=summary["name"]))


@bp.post("/teach/_import")
@archive_upload
def import_page():
    try:
        summary = _import_archive((request.form.get("name") or "").strip() or None)
    except DatasetStoreError as exc:
        flash(translate(exc.message), "danger")
        return redirect(url_for("admin.teach.page"))
    result = summary["import"]
    if result["skipped"]:
        reasons = ", ".join(f"{n} {translate(why)}"
                            for why, n in result["skipped_reasons"].items())
        flash(_("Imported %(imported)s images into %(name)s; skipped %(skipped)s file(s) "
                "(%(reasons)s).", imported=result["imported"], name=summary["display_name"],
                skipped=result["skipped"], reasons=reasons), "success")
    else:
        flash(_("Imported %(imported)s images into %(name)s.", imported=result["imported"],
                name=summary["display_name"]), "success")
    return redirect(url_for("admin.teach.dataset_page", name=summary["name"]))


@bp.get("/teach/<name>")
def dataset_page(name):
    dataset = store().describe(name, images=True)
    recent = [_job_view(job) for job in jobs().list(dataset=name)[:5]]
    latest = recent[0] if recent else None
    model = _model_summary(latest.get("model_id")) if latest else None
    return render_template("admin/teach_dataset.html", dataset=dataset, jobs=recent,
                           latest=latest, model=model, defaults=TEACH_DEFAULTS,
                           report_files=REPORT_FILES, job_states=JOB_STATES)


@bp.post("/teach/<name>/classes")
def add_class_page(name):
    try:
        store().add_class(name, request.form.get("class", ""))
    except DatasetStoreError as exc:
        if exc.status == 404 and exc.code == "unknown_dataset":
            raise
        flash(translate(exc.message), "danger")
    return redirect(url_for("admin.teach.dataset_page", name=name))


@bp.post("/teach/<name>/delete")
def delete_page(name):
    shown = store().describe(name)["display_name"]
    store().delete(name)
    flash(_("Deleted dataset %(name)s.", name=shown), "success")
    return redirect(url_for("admin.teach.page"))


# --------------------------------------------------------------------------- datasets API


@bp.get("/api/datasets")
def api_datasets():
    return jsonify(datasets=store().list())


@bp.post("/api/datasets")
@archive_upload
def api_create():
    """JSON ``{"name", "classes"}`` creates an empty dataset; a multipart ``archive`` (zip
    of class folders, optional ``name``) imports one."""
    if request.mimetype == "multipart/form-data":
        summary = _import_archive((request.form.get("name") or "").strip() or None)
    else:
        body = _json_body()
        summary = store().create(body.get("name"), body.get("classes"))
    response = jsonify(summary)
    response.status_code = 201
    response.headers["Location"] = url_for("admin.teach.api_dataset", name=summary["name"])
    return response


@bp.get("/api/datasets/<name>")
def api_dataset(name):
    return jsonify(store().describe(name, images=True))


@bp.delete("/api/datasets/<name>")
def api_delete(name):
    store().delete(name)
    return jsonify(deleted=name)


@bp.post("/api/datasets/<name>/classes")
def api_add_class(name):
    body = _json_body()
    return jsonify(store().add_class(name, body.get("name"))), 201


@bp.delete("/api/datasets/<name>/classes/<label>")
def api_delete_class(name, label):
    return jsonify(store().delete_class(name, label))


@bp.post("/api/datasets/<name>/images")
def api_add_images(name):
    """Multipart ``image`` (one or several) + ``label``, optional ``taken`` (when they were
    taken, ms since 1970; default: now): stored re-encoded as JPEG."""
    store().describe(name)  # 404 first for an unknown dataset
    files, label = _add_images()
    taken = check_taken(request.form.get("taken"))
    added = []
    for n, upload in enumerate(files):
        data = upload.read()
        try:
            added.append(store().add_image(name, label, data, taken))
        except imaging.ImageError as exc:
            if len(files) > 1:  # say which one, like /predict does
                exc = imaging.ImageError(exc.status, exc.code, Message(
                    "Image %(number)s (%(file)s): %(reason)s", number=n + 1,
                    file=upload.filename, reason=exc.message))
            if added:
                exc.message = Message("%(reason)s %(stored)s image(s) before it were stored.",
                                      reason=exc.message, stored=len(added))
            raise exc from None
    counts = {c["name"]: c["count"] for c in store().describe(name)["classes"]}
    for item in added:
        item["url"] = url_for("admin.teach.api_image", name=name, image_id=item["id"])
    body = {"added": added, "counts": counts}
    if len(added) == 1:
        body.update(added[0])
    return jsonify(body), 201


@bp.get("/api/datasets/<name>/images/<image_id>")
def api_image(name, image_id):
    """The stored JPEG; ``?size=N`` (32–512) for a thumbnail at most N pixels wide/high."""
    size = request.args.get("size", type=int)
    if size is not None and size not in THUMB_SIZES:
        raise ApiError(400, "bad_size", Message("size must be from 32 to 512."))
    if size:
        data = store().thumbnail(name, image_id, size)
        response = send_file(io.BytesIO(data), mimetype="image/jpeg")
    else:
        _, path = store().image_path(name, image_id)
        response = send_file(path, mimetype="image/jpeg")
    response.headers["Cache-Control"] = "private, max-age=86400"  # images never change
    return response


@bp.delete("/api/datasets/<name>/images/<image_id>")
def api_delete_image(name, image_id):
    label = store().delete_image(name, image_id)
    counts = {c["name"]: c["count"] for c in store().describe(name)["classes"]}
    return jsonify(deleted=image_id, label=label, counts=counts)


@bp.get("/api/datasets/<name>/export")
def api_export(name):
    chunks = store().export_zip(name)  # 404 before the first byte for an unknown name
    first = next(chunks)
    return Response(
        stream_with_context(_chain(first, chunks)), mimetype="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}.zip"'},
    )


def _chain(first: bytes, rest):
    yield first
    yield from rest


@bp.post("/api/datasets/<name>/train")
def api_train(name):
    """Queue a training job on the dataset as it is now → 202 ``{"job": id, ...}``."""
    raw = _json_body(required=False)
    options, model_name = check_options(raw)
    job = jobs().create(store(), name, options=options, name=model_name,
                        model_dir=current_app.config["MODEL_DIR"],
                        language=current_language())
    job = _job_view(job)
    response = jsonify({"job": job["id"], **job})
    response.status_code = 202
    response.headers["Location"] = url_for("admin.teach.api_job", job_id=job["id"])
    return response


# --------------------------------------------------------------------------- jobs API


def _job_view(job: dict) -> dict:
    """A job as the API and the page show it: its error in this request's language."""
    if job.get("error_message"):
        job = {**job, "error": translate(Message.from_json(job["error_message"]))}
    return job


@bp.get("/api/jobs")
def api_jobs():
    dataset = request.args.get("dataset") or None
    return jsonify(jobs=[_job_view(job) for job in jobs().list(dataset=dataset)])


@bp.get("/api/jobs/<job_id>")
def api_job(job_id):
    return jsonify(_job_view(jobs().get(job_id)))


@bp.delete("/api/jobs/<job_id>")
def api_cancel(job_id):
    job = _job_view(jobs().cancel(job_id))
    return jsonify(job), 202 if job["state"] == "running" else 200


# --------------------------------------------------------------------------- model reports


@bp.get("/api/models/<model_id>/report")
def api_report(model_id):
    path = current.registry().report_file(model_id, "report.json")
    return jsonify(json.loads(path.read_text("utf-8")))


@bp.get("/api/models/<model_id>/report/<filename>")
def report_file(model_id, filename):
    """The confusion matrix and curves PNGs (and the JSON) of a model trained here."""
    path = current.registry().report_file(model_id, filename)
    response = send_file(path, mimetype=REPORT_TYPES.get(Path(filename).suffix,
                                                         "application/octet-stream"))
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response
