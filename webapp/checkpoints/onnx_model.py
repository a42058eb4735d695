"""An uploaded ONNX image classifier: checked (one square float image input, one
(N, classes) output, finite scores on a probe) and described; served as it is by the
engine, without torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from webapp.checkpoints.architectures import check_output
from webapp.checkpoints.fields import Given, agree
from webapp.checkpoints.labels import NAME_KEYS, class_names, imagenet_labels, parse_classes_field
from webapp.checkpoints.loaded import LoadedModel, ModelLoadError
from webapp.checkpoints.preprocess import IMAGENET_MEAN, IMAGENET_STD


class NotOnnx(Exception):
    """The file starts like an ONNX model but is none."""


def load_onnx(path: Path, given: Given, what: str, *, name: str | None, version: str,
              source_kind: str) -> LoadedModel:
    """An ONNX image classifier, checked and described (it is served as it is, by the
    engine, with no torch): one float input (N, 3, H, W) with H = W (or free), one
    (N, C) output, C = the number of class names (from the fields, the model's
    metadata, or ImageNet's for C = 1000), finite scores on a probe image.  The
    preprocessing (size, mean, std) comes from the fields, ImageNet's by default.
    Weights kept in external files are refused: they would be read from wherever the
    model points."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf says little; the caller says what it is
        raise NotOnnx() from None
    if not model.graph.node:
        raise NotOnnx()
    if given.arch not in (None, "onnx"):
        raise ModelLoadError(f"{what}: this is an ONNX model, not {given.arch} weights; "
                             "leave the architecture on auto")
    external = [t.name for t in model.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ModelLoadError(f"{what}: the model keeps weights in external files "
                             f"({external[0]}, ...); save it as one file "
                             "(onnx.save(model, path, save_as_external_data=False))")
    input_shape, output_classes = _onnx_signature(model, what)
    size = input_shape[2] if isinstance(input_shape[2], int) else None
    input_size = agree("input_size", given.input_size, size, 224,
                       "the input_size field", what)
    found = _names_in_metadata(model, what)
    names = agree("classes", given.classes, found, None, given.classes_from or "", what)
    outputs = _onnx_probe(path, input_size, what)
    classes_from = given.classes_from or ("the model's metadata" if found else None)
    if names is None and outputs.shape[1] == 1000:
        names, classes_from = imagenet_labels(), "ImageNet (1000 outputs without names)"
    if names is None:
        raise ModelLoadError(
            f"{what}: give the {outputs.shape[1]} class names of this ONNX model in output "
            "order (the classes field or a labels file)")
    if outputs.shape[1] != len(names) or output_classes not in (None, len(names)):
        raise ModelLoadError(f"{what}: the model has {outputs.shape[1]} outputs but "
                             f"{classes_from} names {len(names)} classes")
    probabilities = bool((outputs >= 0).all() and np.allclose(outputs.sum(axis=1), 1, atol=1e-3))
    return LoadedModel(
        module=None, arch="onnx", labels=names,
        name=name or f"ONNX model ({len(names)} classes)", version=version,
        source=str(path), source_kind=source_kind, input_size=input_size,
        mean=tuple(given.mean or IMAGENET_MEAN), std=tuple(given.std or IMAGENET_STD),
        kind="onnx", onnx_path=path, outputs="probabilities" if probabilities else "logits",
        details={"kind": "onnx", "classes_from": classes_from,
                 "batch": "any" if not isinstance(input_shape[0], int) else input_shape[0],
                 "outputs": "probabilities" if probabilities else "logits"},
    )


def _names_in_metadata(model, what: str) -> list[str] | None:
    """Class names an exporter kept in the model's metadata (``NAME_KEYS``), as JSON or
    as text (one a line or comma-separated)."""
    metadata = {p.key: p.value for p in model.metadata_props}
    for key in NAME_KEYS:
        if key in metadata:
            try:
                return class_names(json.loads(metadata[key]), f"the model's {key!r}", what)
            except ValueError:
                return parse_classes_field(metadata[key], what)
    return None


def _onnx_signature(model, what: str) -> tuple[list, int | None]:
    """(input shape, number of outputs or None) of a classifier; dims are ints or names."""
    import onnx

    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    outputs = list(model.graph.output)

    def shape(value):
        dims = value.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]

    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelLoadError(f"{what}: an image classifier has one input (an image batch); "
                             f"this model has {len(inputs)} inputs and {len(outputs)} outputs")
    dims, elem = shape(inputs[0]), inputs[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT or len(dims) != 4 or dims[1] != 3:
        layout = "(N, H, W, 3): convert it to channels-first" if len(dims) == 4 and \
            dims[3] == 3 else f"{tuple(dims)} of type {onnx.TensorProto.DataType.Name(elem)}"
        raise ModelLoadError(f"{what}: the model's input must be a float (N, 3, H, W) image "
                             f"batch; it is {layout}")
    if isinstance(dims[2], int) and isinstance(dims[3], int) and dims[2] != dims[3]:
        raise ModelLoadError(f"{what}: the model's input is {dims[2]} × {dims[3]}; the server "
                             "feeds square images (export it for H = W, or with free H and W)")
    if isinstance(dims[0], int) and dims[0] != 1:
        raise ModelLoadError(f"{what}: the model's batch size is fixed at {dims[0]}; export "
                             "it with batch size 1 or a free batch dimension")
    out = shape(outputs[0])
    if len(out) != 2:
        raise ModelLoadError(f"{what}: the model's first output must be (N, classes); it "
                             f"is {tuple(out)}")
    return dims, out[1] if isinstance(out[1], int) and out[1] > 0 else None


def _onnx_probe(path: Path, input_size: int, what: str) -> np.ndarray:
    """Scores of the model for a blank image and a noise image, (2, C), checked."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        rng = np.random.default_rng(0)
        rows = [session.run(None, {name: x})[0] for x in (
            np.zeros((1, 3, input_size, input_size), np.float32),
            rng.standard_normal((1, 3, input_size, input_size), dtype=np.float32))]
    except Exception as exc:  # noqa: BLE001 - ORT's errors name the failing node
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else \
            type(exc).__name__
        raise ModelLoadError(f"{what}: the ONNX model does not run on a "
                             f"{input_size} × {input_size} image ({first})") from None
    for row in rows:
        row = np.asarray(row)
        check_output(row, row.shape[-1] if row.ndim == 2 else -1, what)
    return np.concatenate(rows).astype(np.float64)
