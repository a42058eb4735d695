"""An uploaded ONNX image classifier: checked (one square image input, one (N, classes)
output, finite scores on a probe) and described; served by the engine, without torch.

Two things an upload may need before it is served: weights kept in an external data
file (``model.onnx`` + ``model.onnx.data``, what ``torch.onnx.export`` writes for large
models; uploaded as a zip of both, or both at once, ``bundle``) are read into the one
network; an input of uint8 pixels and/or channels-last ``(N, H, W, 3)`` gets a few nodes
in front (transpose, round, cast), so every network takes the same float ``(N, 3, H, W)``
batch.  The file is stored as uploaded; the engine cache holds the network served."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from webapp.checkpoints.architectures import check_output
from webapp.checkpoints.fields import Given, agree
from webapp.checkpoints.labels import NAME_KEYS, class_names, imagenet_labels, parse_classes_field
from webapp.checkpoints.loaded import LoadedModel, ModelLoadError
from webapp.checkpoints.preprocess import IMAGENET_MEAN, IMAGENET_STD
from webapp.messages import Message


class NotOnnx(Exception):
    """The file starts like an ONNX model but is none."""


def load_onnx(path: Path, given: Given, what: str, *, name: str | None, version: str,
              source_kind: str) -> LoadedModel:
    """An ONNX image classifier, checked and described (it is served as it is, by the
    engine, with no torch): one float input (N, 3, H, W) with H = W (or free), one
    (N, C) output, C = the number of class names (from the fields, the model's
    metadata, or ImageNet's for C = 1000), finite scores on a probe image.  The
    preprocessing (size, mean, std) comes from the fields, ImageNet's by default.
    Weights in an external data file are read from the zip (or the files) uploaded with
    it, never from wherever the model points; an input of uint8 pixels or
    channels-last gets nodes in front (``adapt_input``)."""
    model, data_files = read_model(path, what)
    if not model.graph.node:
        raise NotOnnx()
    if given.arch not in (None, "onnx"):
        raise ModelLoadError(Message("%(what)s: this is an ONNX model, not %(arch)s weights; "
                                     "leave the architecture on auto", what=what,
                                     arch=given.arch))
    external = _external_tensors(model)
    if external:
        _read_external_data(external, data_files, what)
    input_shape, output_classes, layout, pixels = _onnx_signature(model, what)
    if pixels:
        if given.mean is not None or given.std is not None:
            raise ModelLoadError(Message("%(what)s: the model takes 8-bit pixels (uint8) and "
                                         "normalises them itself; leave mean and std empty",
                                         what=what))
        given = dataclasses.replace(given, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)
    if layout == "nhwc" or pixels:
        adapt_input(model, layout, pixels)
    served = model.SerializeToString() if (external or layout == "nhwc" or pixels) else None
    size = input_shape[2] if isinstance(input_shape[2], int) else None
    input_size = agree("input_size", given.input_size, size, 224,
                       Message("the input_size field"), what)
    found = _names_in_metadata(model, what)
    names = agree("classes", given.classes, found, None, given.classes_from or "", what)
    outputs = _onnx_probe(served or str(path), input_size, what)
    classes_from = given.classes_from or (Message("the model's metadata") if found else None)
    if names is None and outputs.shape[1] == 1000:
        names = imagenet_labels()
        classes_from = Message("ImageNet (1000 outputs without names)")
    if names is None:
        raise ModelLoadError(Message(
            "%(what)s: give the %(count)s class names of this ONNX model in output order "
            "(the classes field or a labels file)", what=what, count=outputs.shape[1]))
    if outputs.shape[1] != len(names) or output_classes not in (None, len(names)):
        raise ModelLoadError(Message(
            "%(what)s: the model has %(outputs)s outputs but %(source)s names %(count)s "
            "classes", what=what, outputs=outputs.shape[1], source=classes_from,
            count=len(names)))
    probabilities = bool((outputs >= 0).all() and np.allclose(outputs.sum(axis=1), 1, atol=1e-3))
    return LoadedModel(
        module=None, arch="onnx", labels=names,
        name=name or f"ONNX model ({len(names)} classes)", version=version,
        source=str(path), source_kind=source_kind, input_size=input_size,
        mean=tuple(given.mean or IMAGENET_MEAN), std=tuple(given.std or IMAGENET_STD),
        kind="onnx", onnx_path=path, onnx_bytes=served,
        outputs="probabilities" if probabilities else "logits",
        details={"kind": "onnx", "classes_from": classes_from,
                 "batch": "any" if not isinstance(input_shape[0], int) else input_shape[0],
                 "outputs": "probabilities" if probabilities else "logits",
                 "external_data": ", ".join(sorted(data_files)) if external else None,
                 "input": _input_words(layout, pixels)},
    )


def _input_words(layout: str, pixels: bool) -> str | None:
    if not pixels and layout == "nchw":
        return None
    if pixels:
        return Message("uint8 pixels, channels last") if layout == "nhwc" else \
            Message("uint8 pixels")
    return Message("float, channels last")


def read_model(path: Path, what: str):
    """(the ONNX model, its external data files by name) from an ``.onnx`` file or a zip
    holding one ``.onnx`` and its data files; ``NotOnnx`` when it is neither."""
    import zipfile

    import onnx

    data_files: dict[str, bytes] = {}
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [i for i in archive.infolist() if not i.is_dir()]
                models = [i for i in members if i.filename.lower().endswith(".onnx")]
                if len(models) != 1:
                    raise ModelLoadError(Message(
                        "%(what)s: the zip holds %(count)s .onnx models; zip one model with "
                        "its data file (model.onnx and model.onnx.data)", what=what,
                        count=len(models)))
                data = archive.read(models[0])
                for info in members:
                    if info is not models[0]:
                        data_files[Path(info.filename).name] = archive.read(info)
        else:
            data = path.read_bytes()
        return onnx.load_model_from_string(data), data_files
    except ModelLoadError:
        raise
    except Exception:  # noqa: BLE001 - protobuf says little; the caller says what it is
        raise NotOnnx() from None


def _external_tensors(model) -> list:
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    return [t for t in _get_all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]


MAX_ONNX_BYTES = 2**31 - 2**20  # one protobuf message: what a single-file model may be


def _read_external_data(tensors: list, data_files: dict[str, bytes], what: str) -> None:
    """Each tensor's bytes from the data file it names, which must be one of the files
    uploaded with the model (a plain name: no folders), at an offset inside it."""
    import onnx

    total = 0
    for tensor in tensors:
        entry = {e.key: e.value for e in tensor.external_data}
        location = entry.get("location", "")
        if not data_files:
            raise ModelLoadError(Message(
                "%(what)s: the model keeps its weights in a separate file (%(location)s), "
                "which was not sent with it; upload both files (a zip of model.onnx and "
                "%(file)s, or both files in the checkpoint field)", what=what,
                location=repr(location), file=location or "model.onnx.data"))
        name = Path(location).name
        if name != location or name not in data_files:
            raise ModelLoadError(Message(
                "%(what)s: the model's weights are in %(location)s, which is not among the "
                "files sent with it (%(files)s); send the data file the model was saved "
                "with, under its own name", what=what, location=repr(location),
                files=", ".join(sorted(data_files))))
        blob = data_files[name]
        try:
            offset = int(entry.get("offset", 0))
            length = int(entry["length"]) if "length" in entry else len(blob) - offset
        except ValueError:
            offset, length = -1, 0
        if offset < 0 or length < 0 or offset + length > len(blob):
            raise ModelLoadError(Message("%(what)s: the model's weights point outside "
                                         "%(name)s (it is cut short, or not the file it was "
                                         "saved with)", what=what, name=name))
        total += length
        if total > MAX_ONNX_BYTES:
            raise ModelLoadError(Message("%(what)s: the weights are over 2 GB, more than one "
                                         "ONNX network can hold; this server serves models "
                                         "under 2 GB", what=what))
        tensor.raw_data = blob[offset:offset + length]
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


def adapt_input(model, layout: str, pixels: bool) -> None:
    """Nodes in front of the model's image input so that it takes the server's batch,
    float ``(N, 3, H, W)``: transposed to channels last for an ``(N, H, W, 3)`` input;
    for a uint8 input (the model normalises itself; served with mean 0 and std 1/255,
    so the batch holds the pixel values), rounded, clipped to 0..255 and cast."""
    import onnx
    from onnx import helper

    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    original = next(i for i in graph.input if i.name not in initializers)
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in original.type.tensor_type.shape.dim]
    if layout == "nhwc":
        dims = [dims[0], 3, dims[1], dims[2]]
    name, nodes, current = "image", [], "image"
    while name in {i.name for i in graph.input} | {o for n in graph.node for o in n.output}:
        name = current = f"_{name}"
    if layout == "nhwc" and pixels:
        nodes.append(helper.make_node("Transpose", [current], [f"{name}_nhwc"],
                                      perm=[0, 2, 3, 1]))
        current = f"{name}_nhwc"
    if pixels:
        graph.initializer.extend([
            helper.make_tensor(f"{name}_lo", onnx.TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor(f"{name}_hi", onnx.TensorProto.FLOAT, [], [255.0])])
        nodes += [helper.make_node("Round", [current], [f"{name}_round"]),
                  helper.make_node("Clip", [f"{name}_round", f"{name}_lo", f"{name}_hi"],
                                   [f"{name}_clip"]),
                  helper.make_node("Cast", [f"{name}_clip"], [original.name],
                                   to=onnx.TensorProto.UINT8)]
    else:
        nodes.append(helper.make_node("Transpose", [current], [original.name],
                                      perm=[0, 2, 3, 1]))
    replacement = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)
    position = list(graph.input).index(original)
    graph.input.remove(original)
    graph.input.insert(position, replacement)
    for node in reversed(nodes):
        graph.node.insert(0, node)


def _names_in_metadata(model, what: str) -> list[str] | None:
    """Class names an exporter kept in the model's metadata (``NAME_KEYS``), as JSON or
    as text (one a line or comma-separated)."""
    metadata = {p.key: p.value for p in model.metadata_props}
    for key in NAME_KEYS:
        if key in metadata:
            try:
                return class_names(json.loads(metadata[key]),
                                   Message("the model's %(key)s", key=repr(key)), what)
            except ValueError:
                return parse_classes_field(metadata[key], what)
    return None


def _onnx_signature(model, what: str) -> tuple[list, int | None, str, bool]:
    """(input shape as (N, 3, H, W), number of outputs or None, the input's layout
    ``nchw`` or ``nhwc``, whether it takes uint8 pixels) of a classifier; dims are ints
    or names."""
    import onnx

    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    outputs = list(model.graph.output)

    def shape(value):
        dims = value.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]

    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelLoadError(Message(
            "%(what)s: an image classifier has one input (an image batch); this model has "
            "%(inputs)s inputs and %(outputs)s outputs", what=what, inputs=len(inputs),
            outputs=len(outputs)))
    dims, elem = shape(inputs[0]), inputs[0].type.tensor_type.elem_type
    layout = "nhwc" if len(dims) == 4 and dims[3] == 3 and dims[1] != 3 else "nchw"
    if layout == "nhwc":
        dims = [dims[0], 3, dims[1], dims[2]]
    if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8) or len(dims) != 4 \
            or dims[1] != 3:
        raise ModelLoadError(Message(
            "%(what)s: the model's input must be an image batch, (N, 3, H, W) or (N, H, W, "
            "3) of float or uint8; it is %(shape)s of type %(type)s. Export the model with "
            "such an input", what=what, shape=str(tuple(shape(inputs[0]))),
            type=onnx.TensorProto.DataType.Name(elem)))
    if isinstance(dims[2], int) and isinstance(dims[3], int) and dims[2] != dims[3]:
        raise ModelLoadError(Message(
            "%(what)s: the model's input is %(height)s × %(width)s; the server feeds square "
            "images (export it for H = W, or with free H and W)", what=what, height=dims[2],
            width=dims[3]))
    if isinstance(dims[0], int) and dims[0] != 1:
        raise ModelLoadError(Message(
            "%(what)s: the model's batch size is fixed at %(batch)s; export it with batch "
            "size 1 or a free batch dimension", what=what, batch=dims[0]))
    out = shape(outputs[0])
    if len(out) != 2:
        raise ModelLoadError(Message("%(what)s: the model's first output must be (N, "
                                     "classes); it is %(shape)s", what=what,
                                     shape=str(tuple(out))))
    return (dims, out[1] if isinstance(out[1], int) and out[1] > 0 else None, layout,
            elem == onnx.TensorProto.UINT8)


def _onnx_probe(model: str | bytes, input_size: int, what: str) -> np.ndarray:
    """Scores of the model (a path, or the network served) for a blank image and a
    noise image, (2, C), checked."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        rng = np.random.default_rng(0)
        rows = [session.run(None, {name: x})[0] for x in (
            np.zeros((1, 3, input_size, input_size), np.float32),
            rng.standard_normal((1, 3, input_size, input_size), dtype=np.float32))]
    except Exception as exc:  # noqa: BLE001 - ORT's errors name the failing node
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else \
            type(exc).__name__
        raise ModelLoadError(Message("%(what)s: the ONNX model does not run on a %(size)s × "
                                     "%(size)s image (%(error)s)", what=what,
                                     size=input_size, error=first)) from None
    for row in rows:
        row = np.asarray(row)
        check_output(row, row.shape[-1] if row.ndim == 2 else -1, what)
    return np.concatenate(rows).astype(np.float64)


def bundle(files: list[tuple[str, Path]], out: Path) -> Path:
    """A zip (stored, not compressed) of an ONNX model and its external data files, as
    ``load_onnx`` reads them: ``files`` are (the name it was uploaded under, where it
    is); only the names' last part is kept."""
    import zipfile

    with zipfile.ZipFile(out, "x", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, path in files:
            archive.write(path, Path(name.replace("\\", "/")).name or "file")
    return out
