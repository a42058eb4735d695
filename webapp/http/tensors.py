"""Tensors of the Open Inference Protocol (KServe "v2") over HTTP: an inference request's
inputs and requested outputs, and the response's outputs, in JSON and in the binary
tensor data extension that Triton's clients use by default.

The binary extension: the body is the request's JSON followed by raw tensor bytes; the
``Inference-Header-Content-Length`` header gives the JSON's length, and each input that
comes as bytes says how many with ``"parameters": {"binary_data_size": n}``, in the order
of the inputs.  A BYTES tensor is its elements in row-major order, each a 4-byte
little-endian length and the bytes; a number tensor is its values, little-endian.  An
output is answered the same way when the client asks (``"binary_data": true`` on the
output, or ``"binary_data_output": true`` on the request).

Every malformed request is a ``TensorError`` (400) with a sentence saying what is wrong.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from webapp.http.uploads import MAX_JSON_DEPTH, json_depth
from webapp.messages import Message

HEADER_LENGTH = "Inference-Header-Content-Length"
# The number types of the protocol, as little-endian NumPy types.
NUMBERS = {"BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
           "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2",
           "FP32": "<f4", "FP64": "<f8"}
DATATYPES = (*NUMBERS, "BYTES", "BF16")


class TensorError(Exception):
    """A request that does not follow the protocol; the message says what is wrong."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


@dataclass
class RequestInput:
    name: str
    datatype: str
    shape: list[int]
    parameters: dict
    data: list | None = None  # the JSON "data" (nested lists allowed)
    raw: bytes | None = None  # or its bytes, from the binary part of the body

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    def elements(self) -> list[bytes]:
        """A BYTES tensor's elements in row-major order (JSON strings as UTF-8)."""
        if self.raw is not None:
            out, at = [], 0
            while at < len(self.raw):
                if at + 4 > len(self.raw):
                    raise TensorError(Message("Input '%(name)s': its binary data ends inside "
                                              "an element's 4-byte length.", name=self.name))
                (size,) = struct.unpack_from("<I", self.raw, at)
                at += 4
                if at + size > len(self.raw):
                    raise TensorError(Message("Input '%(name)s': an element says it has "
                                              "%(size)s bytes, more than its binary data "
                                              "holds.", name=self.name, size=size))
                out.append(self.raw[at:at + size])
                at += size
        else:
            out = []
            for item in flatten(self.data, self.name):
                if not isinstance(item, str):
                    raise TensorError(Message("Input '%(name)s': a BYTES tensor's data in "
                                              "JSON are strings.", name=self.name))
                out.append(item.encode("utf-8"))
        if len(out) != self.count:
            raise self._count_error(len(out))
        return out

    def _count_error(self, count: int) -> TensorError:
        return TensorError(Message("Input '%(name)s' has %(count)s elements but its shape "
                                   "%(shape)s needs %(needed)s.", name=self.name, count=count,
                                   shape=str(self.shape), needed=self.count))

    def array(self) -> np.ndarray:
        """A number tensor as an array of its shape."""
        dtype = np.dtype(NUMBERS[self.datatype])
        if self.raw is not None:
            if len(self.raw) != self.count * dtype.itemsize:
                raise TensorError(Message(
                    "Input '%(name)s' has %(size)s bytes of binary data but its shape "
                    "%(shape)s needs %(needed)s.", name=self.name, size=len(self.raw),
                    shape=str(self.shape), needed=self.count * dtype.itemsize))
            return np.frombuffer(self.raw, dtype=dtype).reshape(self.shape)
        values = flatten(self.data, self.name)
        if len(values) != self.count:
            raise self._count_error(len(values))
        wanted = bool if self.datatype == "BOOL" else (int, float)
        if any(isinstance(v, bool) != (wanted is bool) or not isinstance(v, wanted)
               for v in values):
            raise TensorError(
                Message("Input '%(name)s': the data of a %(datatype)s tensor are true or "
                        "false.", name=self.name, datatype=self.datatype) if wanted is bool
                else Message("Input '%(name)s': the data of a %(datatype)s tensor are "
                             "numbers.", name=self.name, datatype=self.datatype))
        try:
            return np.asarray(values, dtype=dtype).reshape(self.shape)
        except (OverflowError, ValueError):
            raise TensorError(Message("Input '%(name)s': a value does not fit %(datatype)s.",
                                      name=self.name, datatype=self.datatype)) from None


@dataclass
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    id: str | None
    parameters: dict
    inputs: list[RequestInput]
    outputs: list[RequestedOutput] | None  # None: every output
    binary_outputs: bool = False  # the default for outputs not listed


@dataclass
class Output:
    name: str
    datatype: str
    value: np.ndarray  # of strings for BYTES
    parameters: dict = field(default_factory=dict)


def flatten(data, name: str) -> list:
    """Nested lists in row-major order (without recursion: the depth is bounded anyway)."""
    if not isinstance(data, list):
        raise TensorError(Message("Input '%(name)s': \"data\" must be a list.", name=name))
    out, todo = [], [iter(data)]
    while todo:
        for item in todo[-1]:
            if isinstance(item, list):
                todo.append(iter(item))
                break
            out.append(item)
        else:
            todo.pop()
    return out


def _object(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TensorError(Message("%(what)s must be a JSON object.", what=what))
    return value


def read_request(body: bytes, header_length: str | None) -> InferRequest:
    """The inference request in ``body`` (JSON, or JSON and binary tensor data)."""
    binary = b""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 < length <= len(body):
            raise TensorError(Message("%(header)s must be the length of the JSON part of the "
                                      "body, between 1 and %(size)s.", header=HEADER_LENGTH,
                                      size=len(body)))
        body, binary = body[:length], body[length:]
    try:
        value = json.loads(body)
        too_deep = json_depth(value) > MAX_JSON_DEPTH
    except RecursionError:
        too_deep = True
    except ValueError:
        raise TensorError(Message(
            "The request is not JSON: send an inference request object, e.g. %(example)s.",
            example='{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", '
            '"data": ["<base64>"]}]}')) from None
    if too_deep:
        raise TensorError(Message("The JSON is nested more than %(limit)s levels deep.",
                                  limit=MAX_JSON_DEPTH))
    if not isinstance(value, dict):
        raise TensorError(Message("The request must be a JSON object with \"inputs\"."))
    request_id = value.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError(Message('"id" must be a string.'))
    parameters = _object(value.get("parameters"), '"parameters"')
    raw_inputs = value.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise TensorError(Message('The request has no "inputs": a list of input tensors.'))
    inputs, at = [], 0
    for n, raw in enumerate(raw_inputs):
        tensor, at = _input(raw, n, binary, at)
        inputs.append(tensor)
    if at != len(binary):
        raise TensorError(Message("The body has %(size)s bytes of binary data that no "
                                  "input's binary_data_size accounts for.",
                                  size=len(binary) - at))
    outputs = value.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise TensorError(Message('"outputs" must be a list of {"name": ...} objects.'))
        outputs = [_output(raw, n, parameters) for n, raw in enumerate(outputs)]
    return InferRequest(request_id, parameters, inputs, outputs,
                        parameters.get("binary_data_output") is True)


def _input(raw, n: int, binary: bytes, at: int) -> tuple[RequestInput, int]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise TensorError(Message("Input %(n)s must be an object with a \"name\".", n=n + 1))
    name = raw["name"]
    datatype, shape = raw.get("datatype"), raw.get("shape")
    if datatype not in DATATYPES:
        raise TensorError(Message("Input '%(name)s': \"datatype\" must be one of "
                                  "%(choices)s, not %(given)s.", name=name,
                                  choices=", ".join(DATATYPES), given=repr(datatype)))
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**32 for d in shape):
        raise TensorError(Message("Input '%(name)s': \"shape\" must be a list of whole "
                                  "numbers (0 or more).", name=name))
    parameters = _object(raw.get("parameters"),
                         Message("Input '%(name)s': \"parameters\"", name=name))
    if any(key.startswith("shared_memory") for key in parameters):
        raise TensorError(Message("Input '%(name)s': this server does not take tensors in "
                                  "shared memory; send them in the request.", name=name))
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise TensorError(Message("Input '%(name)s' has no \"data\" (nor a "
                                      "binary_data_size).", name=name))
        return RequestInput(name, datatype, shape, parameters, data=raw["data"]), at
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 \
            or at + size > len(binary):
        raise TensorError(Message("Input '%(name)s': binary_data_size must be a whole number "
                                  "of bytes that the binary part of the body holds.",
                                  name=name))
    return RequestInput(name, datatype, shape, parameters, raw=binary[at:at + size]), at + size


def _output(raw, n: int, request_parameters: dict) -> RequestedOutput:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise TensorError(Message("Requested output %(n)s must be an object with a "
                                  "\"name\".", n=n + 1))
    parameters = _object(raw.get("parameters"),
                         Message("Output '%(name)s': \"parameters\"", name=raw["name"]))
    if any(key.startswith("shared_memory") for key in parameters):
        raise TensorError(Message("Output '%(name)s': this server does not write tensors to "
                                  "shared memory.", name=raw["name"]))
    binary = parameters.get("binary_data", request_parameters.get("binary_data_output"))
    return RequestedOutput(raw["name"], binary is True)


def response_body(response: dict, outputs: list[Output], binary: set[str]
                  ) -> tuple[bytes, dict]:
    """The response (``response``: model_name, model_version, id) with ``outputs``, the
    ones named in ``binary`` as binary tensor data: (body, headers)."""
    described, chunks = [], []
    for output in outputs:
        entry = {"name": output.name, "datatype": output.datatype,
                 "shape": list(output.value.shape)}
        if output.parameters:
            entry["parameters"] = dict(output.parameters)
        if output.name in binary:
            data = _binary(output)
            entry.setdefault("parameters", {})["binary_data_size"] = len(data)
            chunks.append(data)
        elif output.datatype == "BYTES":
            entry["data"] = [str(v) for v in output.value.reshape(-1)]
        else:
            entry["data"] = output.value.reshape(-1).tolist()
        described.append(entry)
    text = json.dumps({**response, "outputs": described}, ensure_ascii=False).encode("utf-8")
    if not chunks:
        return text, {"Content-Type": "application/json"}
    return text + b"".join(chunks), {"Content-Type": "application/octet-stream",
                                      HEADER_LENGTH: str(len(text))}


def _binary(output: Output) -> bytes:
    if output.datatype == "BYTES":
        parts = []
        for value in output.value.reshape(-1):
            data = str(value).encode("utf-8")
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(output.value, dtype=NUMBERS[output.datatype]).tobytes()
