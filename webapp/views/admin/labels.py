"""The admin's *Class names*: what the pages call the built-in model's 1,000 ImageNet
classes in each language, and a teacher's corrections (``/admin/labels``, and the same as
JSON at ``/admin/api/labels/<language>``).  The store is ``webapp.stores.label_names``."""

from __future__ import annotations

from flask import flash, jsonify, redirect, render_template, request, url_for

from webapp import current
from webapp.checkpoints.loaded import ModelLoadError
from webapp.http import uploads
from webapp.http.errors import ApiError
from webapp.i18n import _, current_language, languages, normalise, translate
from webapp.messages import Message, reason
from webapp.stores.label_names import LabelNameError, check_index, is_imagenet
from webapp.views.admin import bp, fail

MAX_ROWS = 60  # a search shows at most this many classes


@bp.errorhandler(LabelNameError)
def _label_error(exc: LabelNameError):
    return fail(exc.status, exc.code, exc.message)


def _language(raw: str | None) -> str:
    """A language the pages speak (as people write it: zh-CN), or 404."""
    if not raw:
        return current_language()
    found = normalise(raw, languages())
    if found is None:
        raise ApiError(404, "unknown_language", Message(
            "There is no language %(code)s here (available: %(available)s).",
            code=repr(raw[:20]), available=", ".join(languages())))
    return found


def _imagenet_labels() -> list[str] | None:
    """The built-in model's labels when they are ImageNet's 1,000 classes, else None."""
    labels = list(current.holder().builtin().labels)
    return labels if is_imagenet(labels) else None


def _rows(language: str) -> list[dict]:
    """Every ImageNet class in ``language`` (``LabelNames.table``); 409 when the built-in
    model has other classes."""
    labels = _imagenet_labels()
    if labels is None:
        raise LabelNameError(409, "not_imagenet", Message(
            "The built-in model does not answer with ImageNet's classes; its classes keep "
            "the names they were given."))
    return current.label_names().table(labels, language)


def _matches(row: dict, query: str) -> bool:
    if query.isdigit():
        return row["index"] == int(query)
    wanted = query.casefold()
    return any(wanted in (text or "").casefold()
               for text in (row["label"], row["shipped"], row["own"]))


@bp.get("/labels")
def labels_page():
    language = _language(request.args.get("language"))
    query = (request.args.get("q") or "").strip()[:80]
    try:
        labels = _imagenet_labels()
    except ModelLoadError as exc:
        return fail(503, "model_unavailable", Message(
            "The model is not available: %(reason)s", reason=reason(exc)))
    rows = current.label_names().table(labels, language) if labels else []
    shown = ([row for row in rows if _matches(row, query)] if query
             else [row for row in rows if row["own"]])
    return render_template("admin/labels.html", language=language, query=query,
                           rows=shown[:MAX_ROWS], more=max(0, len(shown) - MAX_ROWS),
                           imagenet=labels is not None, own_count=sum(1 for r in rows if r["own"]))


@bp.post("/labels")
def labels_save():
    """The form of one class: its new name (empty: back to the shipped name)."""
    language = _language(request.form.get("language"))
    index = request.form.get("index")
    name = request.form.get("name", "")
    if request.form.get("reset"):
        name = ""
    back = url_for("admin.labels_page", language=language,
                   q=request.form.get("q") or None)
    try:
        current.label_names().set_name(language, index, name)
    except LabelNameError as exc:
        flash(translate(exc.message), "danger")
        return redirect(back)
    flash(_("Saved: class %(index)s is now called %(name)s.", index=index,
            name=name.strip()) if name.strip() else
          _("Class %(index)s has its shipped name again.", index=index), "success")
    return redirect(back)


# --------------------------------------------------------------------------- API


@bp.get("/api/labels/<language>")
def api_labels(language):
    language = _language(language)
    return jsonify(language=language, classes=_rows(language))


@bp.put("/api/labels/<language>/<index>")
def api_label_set(language, index):
    """JSON ``{"name": "..."}``: the teacher's name for class ``index`` in ``language``."""
    language = _language(language)
    body = uploads.json_object(Message('Send the name as JSON, e.g. {"name": "虎斑猫"}.'))
    if not isinstance(body.get("name"), str):
        raise ApiError(400, "bad_json", Message(
            'Send the name as JSON, e.g. {"name": "虎斑猫"}.'))
    _rows(language)  # 409 first when there are no ImageNet classes to name
    current.label_names().set_name(language, index, body["name"])
    return jsonify(_rows(language)[check_index(index)])


@bp.delete("/api/labels/<language>/<index>")
def api_label_reset(language, index):
    """Class ``index`` goes back to its shipped name in ``language``."""
    language = _language(language)
    _rows(language)
    current.label_names().set_name(language, index, None)
    return jsonify(_rows(language)[check_index(index)])
