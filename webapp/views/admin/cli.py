"""The ``flask`` commands: ``flask --app app models
add|list|activate|rollback|redo|rename|delete`` (the model registry, with the same code and
checks as the admin API) and ``flask --app app finetune`` (``python -m webapp.finetune``).
``flask kiosk`` lives with the kiosk."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from webapp import current
from webapp.checkpoints.onnx_model import bundle
from webapp.serving.workers import NotServing
from webapp.stores.registry import RegistryError

# models_cli and finetune_command (below) join the app's command line in create_app.
models_cli = AppGroup("models", help="Manage the model registry in MODEL_DIR.")


@click.command(
    "finetune",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                      "help_option_names": []},
    add_help_option=False,
    help="Fine-tune on your image folders (python -m webapp.finetune --help).",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def finetune_command(args):
    from webapp import finetune  # torch: imported only when the command runs

    sys.exit(finetune.main(list(args)))


def _fail(exc: RegistryError):
    raise click.ClickException(exc.message)


def _size(n) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


@models_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_models(as_json):
    """List the stored models; * marks the active one."""
    entries, state = current.holder().model_entries()
    if as_json:
        click.echo(json.dumps({"active": state["active"], "history": state["history"],
                               "redo": state["redo"], "models": entries}, indent=2))
        return
    click.echo(f"MODEL_DIR {current_app.config['MODEL_DIR']}")
    for e in entries:
        mark = "*" if e["active"] else " "
        classes = ", ".join(e["classes"][:5]) + (" …" if len(e["classes"]) > 5 else "")
        click.echo(f"{mark} {e['id']:<24} {e['name']}  [{e['arch']}, {e['num_classes']} "
                   f"classes: {classes}]  {_size(e.get('size_bytes'))}  "
                   f"{e.get('uploaded') or ''}")
    if state["history"]:
        click.echo(f"rollback goes to: {state['history'][0]}")
    if state["redo"]:
        click.echo(f"redo goes to: {state['redo'][0]}")


@models_cli.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--name", help="Display name (default: from the checkpoint).")
@click.option("--arch", help="Architecture (default: the file's, else detected from the "
              "weights).")
@click.option("--classes", help="Class names in output order, comma-separated (when the "
              "file does not name them).")
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False),
              help="A labels file: one class name a line, a JSON list or a JSON "
              "class_to_idx.")
@click.option("--input-size", type=int, help="Input size in pixels (default: the file's, "
              "else 224).")
@click.option("--mean", help="Normalisation mean, three numbers (default ImageNet's).")
@click.option("--std", help="Normalisation std, three numbers (default ImageNet's).")
@click.option("--activation", type=click.Choice(["relu", "gelu"]), help="What the layers "
              "without weights of a Sequential head are (default relu).")
@click.option("--ema/--no-ema", default=None, help="Use the EMA weights of a file that has "
              "them (default: yes).")
@click.option("--activate", is_flag=True, help="Activate the model once it is stored.")
def add(paths, name, arch, classes, labels_path, input_size, mean, std, activation, ema,
        activate):
    """Validate the model file at PATH and store it (the file is copied): a checkpoint,
    a state_dict (bare or in a training checkpoint), safetensors, or an ONNX model (with
    its external data file as a second PATH: model.onnx model.onnx.data)."""
    labels = Path(labels_path).read_bytes() if labels_path else None
    path, move = paths[0], False
    if len(paths) > 1:  # an ONNX model and its data file(s): stored together as a zip
        path = bundle([(p, Path(p)) for p in paths], current.registry().temp_path("upload-"))
        move = True
    try:
        meta = current.registry().add(path, name=name, move=move, fields={
            "arch": arch, "classes": classes, "labels": labels, "input_size": input_size,
            "mean": mean, "std": std, "activation": activation, "ema": ema})
        if activate:
            current.registry().activate(meta["id"])
    except RegistryError as exc:
        _fail(exc)
    click.echo(f"stored {meta['id']}  {meta['name']}  ({meta['summary']})"
               + ("  - active" if activate else ""))


def _change(change):
    """A change to the store, or the reason it cannot be done (exit status 1)."""
    try:
        return change()
    except RegistryError as exc:
        _fail(exc)


WAIT_OPTION = click.option(
    "--wait", "wait", type=click.FloatRange(0, 600, min_open=True), default=None,
    metavar="SECONDS", help="Return once every worker of the servers on this machine that "
    "use this store serves the model (exit status 1 after SECONDS if one does not).")


def _changed(state, wait: float | None) -> None:
    click.echo(f"active: {state.active}")
    if wait is None:
        return
    try:
        serving = current.workers().wait_for(state.active, wait)
    except NotServing as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"served by {len(serving)} worker(s): "
               + ", ".join(str(pid) for pid in sorted(serving)))


@models_cli.command("activate")
@click.argument("model_id")
@WAIT_OPTION
def activate(model_id, wait):
    """Make MODEL_ID the active model (every worker switches within a second)."""
    _changed(_change(lambda: current.registry().activate(model_id)), wait)


@models_cli.command("rollback")
@WAIT_OPTION
def rollback(wait):
    """Return to the model that was active before the current one."""
    _changed(_change(current.registry().rollback), wait)


@models_cli.command("redo")
@WAIT_OPTION
def redo(wait):
    """Undo the last rollback: return to the model it left."""
    _changed(_change(current.registry().redo), wait)


@models_cli.command("rename")
@click.argument("model_id")
@click.argument("name")
def rename(model_id, name):
    """Give MODEL_ID a new display name."""
    meta = _change(lambda: current.registry().rename(model_id, name))
    click.echo(f"{model_id}  {meta['name']}")


@models_cli.command("delete")
@click.argument("model_id")
def delete(model_id):
    """Delete an inactive stored model."""
    _change(lambda: current.registry().delete(model_id))
    click.echo(f"deleted {model_id}")
