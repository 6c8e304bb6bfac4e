"""Open Inference Protocol (V2) tensors: the rules both V2 transports share.

A request holds either one tensor per feature (named as in the schema, numbers in any
numeric datatype, text as BYTES) or one `[N, F]` tensor in schema order (all-number
schemas). An input's data is JSON values (flat or nested row-major) or binary (the
binary tensor extension's layout, which gRPC's raw contents share); `to_matrix` turns
validated tensors into the matrix the estimator was fitted on, and the answer's tensors
are built and laid out here too.

The rules are V1's (every feature present by name and nothing else, numbers finite,
strings within the length limit), with one difference the binary format forces: it has
no null, so NaN in a float tensor is the missing value (imputed as in training), as
null is in JSON. Sizes are checked before anything is decoded: each shape against the
instance limit, and each binary input's size against its shape.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from nonstop.errors import InvalidInput, PayloadTooLarge, clip
from nonstop.manifest import FeatureSpec
from nonstop.schema import columns_to_matrix
from serve_app.wire.limits import Limits, listed

PREDICT = "predict"
PREDICT_PROBA = "predict_proba"

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]
# little-endian, as the extension specifies; BYTES has no fixed width
NUMPY_TYPES: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
_NUMERIC = frozenset(NUMPY_TYPES) - {"BOOL"}
_INTEGRAL = frozenset(t for t in _NUMERIC if not t.startswith("FP"))
_LENGTH = struct.Struct("<I")
Payload = memoryview | list[Any]  # an input's binary slice, or its JSON data


class _Parameters(BaseModel):
    """The extension's parameters, checked; others (Triton's priority, timeout, a
    client's own) are the protocol's extension point and pass unread."""

    model_config = ConfigDict(extra="allow")

    binary_data_size: StrictInt | None = Field(default=None, ge=0)
    binary_data: StrictBool | None = None
    binary_data_output: StrictBool | None = None


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[StrictInt] = Field(max_length=2)
    datatype: Datatype
    parameters: _Parameters = _Parameters()
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: _Parameters = _Parameters()


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    model_name: str | None = Field(default=None, description="sent by KServe's client; must match the path's model")
    parameters: _Parameters = _Parameters()
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray  # flat, row-major


def to_matrix(inputs: list[RequestInput], tensors: list[Payload], features: list[FeatureSpec], limits: Limits) -> np.ndarray:
    """The matrix of validated tensors, each input's data being its binary slice or its
    values as a list: the rules every V2 transport (REST, gRPC) shares."""
    rows = _rows(inputs, limits)
    if _is_matrix_form(inputs, features):
        return _matrix(inputs[0], tensors[0], rows, features)
    by_name = {t.name: (t, data) for t, data in zip(inputs, tensors, strict=True)}
    columns = [_column(*by_name[f.name], rows, f, limits) for f in features]
    return columns_to_matrix(columns, features)


def _rows(inputs: list[RequestInput], limits: Limits) -> int:
    """The instance count every input agrees on, within the limit, before any data is read."""
    counts = set()
    for tensor in inputs:
        if not tensor.shape or any(d < 0 for d in tensor.shape):
            raise InvalidInput(f"input {clip(tensor.name)!r}: shape must be [N] or [N, width] with sizes >= 0")
        counts.add(tensor.shape[0])
    if len(counts) > 1:
        raise InvalidInput(f"inputs disagree on the number of instances: shapes' first sizes include {listed(sorted(counts))}")
    rows = counts.pop()
    if rows == 0:
        raise InvalidInput("the inputs hold no instances: send at least one")
    if rows > limits.max_instances:
        raise PayloadTooLarge(f"{rows} instances exceed the limit of {limits.max_instances} per request")
    return rows


def _is_matrix_form(inputs: list[RequestInput], features: list[FeatureSpec]) -> bool:
    names = [t.name for t in inputs]
    repeated = sorted(n for n, count in Counter(names).items() if count > 1)
    if repeated:
        raise InvalidInput(f"input(s) given more than once: {listed(repeated)}")
    schema = [f.name for f in features]
    if len(inputs) == 1 and names[0] not in schema:
        return True
    given, known = set(names), set(schema)
    missing = [n for n in schema if n not in given]
    unknown = [n for n in names if n not in known]
    if missing or unknown:
        raise InvalidInput(
            f"inputs must be one tensor per feature, named as in the schema (missing: {listed(missing)}; "
            f"unknown: {listed(unknown)}), or a single [N, {len(schema)}] tensor in schema order"
        )
    return False


def _matrix(tensor: RequestInput, data: Payload, rows: int, features: list[FeatureSpec]) -> np.ndarray:
    width = len(features)
    text = [f.name for f in features if f.kind != "number"]
    if text:
        raise InvalidInput(
            f"input {clip(tensor.name)!r} is not a feature name, and one [N, F] tensor cannot carry this schema's "
            f"text feature(s) {', '.join(text)}: send one tensor per feature (text as BYTES)"
        )
    if tensor.shape != [rows, width]:
        raise InvalidInput(
            f"input {clip(tensor.name)!r} is not a feature name, so it must be the [N, {width}] tensor of all "
            f"features in schema order; its shape is {tensor.shape}"
        )
    values = _numbers(tensor, data, rows * width, tensor.name)
    matrix = values.reshape(rows, width)
    _check_finite(matrix, tensor.name, width, features)
    return matrix


def _column(tensor: RequestInput, data: Payload, rows: int, spec: FeatureSpec, limits: Limits) -> np.ndarray:
    if tensor.shape not in ([rows], [rows, 1]):
        raise InvalidInput(f"input {spec.name!r}: shape must be [{rows}] or [{rows}, 1], got {tensor.shape}")
    if spec.kind == "number":
        column = _numbers(tensor, data, rows, spec.name)
        _check_finite(column.reshape(rows, 1), spec.name, 1, [spec])
        return column
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {spec.name!r} is a text feature: send it as BYTES, not {tensor.datatype}")
    strings = _json_strings(data, rows, spec.name) if isinstance(data, list) else _binary_strings(data, rows, spec.name, limits)
    longest = max((len(s) for s in strings if s is not None), default=0)
    if longest > limits.max_string_length:
        raise InvalidInput(f"input {spec.name!r}: string longer than {limits.max_string_length} characters")
    return np.array(strings, dtype=object)


def _numbers(tensor: RequestInput, data: Payload, count: int, name: str) -> np.ndarray:
    """float64 values of a numeric tensor, from its binary slice or its JSON data."""
    if tensor.datatype not in _NUMERIC:
        raise InvalidInput(f"input {clip(name)!r} holds numbers: send a numeric datatype (FP64, FP32, INT64...), not {tensor.datatype}")
    if isinstance(data, memoryview):
        dtype = np.dtype(NUMPY_TYPES[tensor.datatype])
        if len(data) != count * dtype.itemsize:
            raise InvalidInput(
                f"input {clip(name)!r}: its binary data is {len(data)} bytes, but {count} {tensor.datatype} values take "
                f"{count * dtype.itemsize}"
            )
        return np.frombuffer(data, dtype=dtype).astype(np.float64)
    flat = _flat(data, tensor.shape, count, name)
    kinds = {type(v) for v in flat}
    if not kinds <= {int, float, type(None)}:
        odd = next(v for v in flat if type(v) not in (int, float, type(None)))
        raise InvalidInput(f"input {clip(name)!r}: expected numbers, got {type(odd).__name__} {clip(repr(odd))}")
    if float in kinds and tensor.datatype in _INTEGRAL:
        raise InvalidInput(f"input {clip(name)!r}: {tensor.datatype} data holds non-integer values")
    try:
        return np.array(flat, dtype=np.float64)  # null becomes NaN: a missing value
    except OverflowError as exc:
        raise InvalidInput(f"input {clip(name)!r}: a number too large for a float") from exc


def _flat(data: list[Any], shape: list[int], count: int, name: str) -> list[Any]:
    """JSON data flat or nested row-major, as the protocol allows; ragged nesting refused."""
    if len(shape) == 2 and data and isinstance(data[0], list):
        if len(data) != shape[0] or any(type(row) is not list or len(row) != shape[1] for row in data):
            raise InvalidInput(f"input {clip(name)!r}: nested data does not match its shape {shape}")
        data = list(chain.from_iterable(data))
    if len(data) != count:
        raise InvalidInput(f"input {clip(name)!r}: shape {shape} holds {count} values, data has {len(data)}")
    return data


def _check_finite(matrix: np.ndarray, name: str, width: int, features: list[FeatureSpec]) -> None:
    infinite = np.isinf(matrix)
    if infinite.any():
        row, column = divmod(int(np.argmax(infinite)), width)
        feature = features[column].name if width == len(features) else name
        raise InvalidInput(f"instance {row}, feature {feature!r}: {matrix[row, column]} is not a finite number")


def _json_strings(data: list[Any], rows: int, name: str) -> list[str | None]:
    flat = _flat(data, [rows, 1] if data and isinstance(data[0], list) else [rows], rows, name)
    for index, value in enumerate(flat):
        if value is not None and type(value) is not str:
            raise InvalidInput(f"instance {index}, feature {name!r}: expected a string, got {type(value).__name__}")
    return flat


def _binary_strings(data: memoryview, rows: int, name: str, limits: Limits) -> list[str | None]:
    """The extension's BYTES layout: per element a 4-byte little-endian length, then the
    bytes. Every length is checked against what remains before anything is sliced."""
    strings: list[str | None] = []
    at, end = 0, len(data)
    most = 4 * limits.max_string_length  # UTF-8 takes at most 4 bytes a character
    for index in range(rows):
        if at + _LENGTH.size > end:
            raise InvalidInput(f"input {name!r}: binary BYTES data ends before element {index} of {rows}")
        (length,) = _LENGTH.unpack_from(data, at)
        at += _LENGTH.size
        if length > end - at:
            raise InvalidInput(f"input {name!r}: element {index} declares {length} bytes, {end - at} remain")
        if length > most:
            raise InvalidInput(f"input {name!r}: string longer than {limits.max_string_length} characters")
        try:
            strings.append(str(data[at : at + length], "utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"instance {index}, feature {name!r}: not UTF-8 text") from exc
        at += length
    if at != end:
        raise InvalidInput(f"input {name!r}: {end - at} bytes after its {rows} BYTES elements")
    return strings


def requested(request: InferenceRequest) -> dict[str, bool]:
    everything_binary = bool(request.parameters.binary_data_output)
    if request.outputs is None:
        return {PREDICT: everything_binary}
    names = [o.name for o in request.outputs]
    repeated = sorted(n for n, count in Counter(names).items() if count > 1)
    if repeated:
        raise InvalidInput(f"output(s) requested more than once: {listed(repeated)}")
    if not request.outputs:
        raise InvalidInput('"outputs" is empty: name at least one, or leave it out for the prediction')
    return {
        o.name: o.parameters.binary_data if o.parameters.binary_data is not None else everything_binary
        for o in request.outputs
    }


def datatype_of(values: list[Any]) -> str:
    """The V2 datatype of predictions or class labels: what the estimator returns."""
    kinds = {type(v) for v in values}
    if kinds and kinds <= {bool, np.bool_}:
        return "BOOL"
    if kinds <= {int, np.int64}:
        return "INT64"
    if kinds <= {int, float, np.int64, np.float64}:
        return "FP64"
    return "BYTES"


def prediction_tensor(predictions: list[Any]) -> OutputTensor:
    datatype = datatype_of(predictions)
    if datatype == "BYTES":
        values = np.array([str(p) for p in predictions], dtype=object)
    else:
        values = np.asarray(predictions, dtype=NUMPY_TYPES[datatype])
    return OutputTensor(PREDICT, datatype, [len(predictions)], values)


def tensor_bytes(tensor: OutputTensor) -> bytes:
    """The extension's (and gRPC's raw contents') layout of a tensor."""
    if tensor.datatype != "BYTES":
        return np.ascontiguousarray(tensor.values, dtype=NUMPY_TYPES[tensor.datatype]).tobytes()
    encoded = [str(v).encode() for v in tensor.values]
    return b"".join(_LENGTH.pack(len(e)) + e for e in encoded)
