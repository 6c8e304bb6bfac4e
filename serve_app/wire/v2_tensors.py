"""Open Inference Protocol (V2) tensors: the rules both V2 transports share.

A request holds either one tensor per feature (named as in the schema, numbers in any
numeric datatype, text as BYTES) or one `[N, F]` tensor in schema order (all-number
schemas). An input's data is JSON values (flat or nested row-major) or binary (the
binary tensor extension's layout, which gRPC's raw contents share); `to_matrix` turns
validated tensors into the matrix the estimator was fitted on, and the answer's tensors
are built and laid out here too.

The rules are V1's, refused in V1's words (every feature present by name and nothing
else, numbers finite, strings within the length limit), plus the datatype's: every value
fits it (INT8 300 is refused, not read as a float). One difference the binary format
forces: binary data and gRPC's typed contents have no null, so NaN there is the missing
value (imputed as in training), as null is in JSON; a NaN literal in JSON is refused, as
V1 refuses it. Sizes are checked before anything is decoded: each shape against the
instance limit, and each binary input's size against its shape.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from nonstop.errors import InvalidInput, PayloadTooLarge, clip
from nonstop.manifest import FeatureSpec
from nonstop.schema import columns_to_matrix
from serve_app.wire.limits import Limits, listed
from serve_app.wire.numbers import finite_floats

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
Payload = memoryview | np.ndarray | list[Any]  # an input's binary slice, its typed gRPC contents, or its JSON data


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
    parameters: _Parameters = Field(default_factory=_Parameters)
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: _Parameters = Field(default_factory=_Parameters)


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    model_name: str | None = Field(default=None, description="sent by KServe's client; must match the path's model")
    parameters: _Parameters = Field(default_factory=_Parameters)
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
    fast = _json_columns([by_name[f.name] for f in features], rows, features)
    if fast is not None:
        return fast
    columns = [_column(*by_name[f.name], rows, f, limits) for f in features]
    return columns_to_matrix(columns, features)


def _json_columns(given: list[tuple[RequestInput, Payload]], rows: int, features: list[FeatureSpec]) -> np.ndarray | None:
    """A tensor per feature, all FP64 JSON of the right length, numbers only, finite: every
    column checked and converted in one pass (serve_app/wire/numbers.py), rather than a
    pass per feature; anything else is None, for the column-by-column rules."""
    if any(f.kind != "number" for f in features):
        return None
    for tensor, data in given:
        if tensor.datatype != "FP64" or type(data) is not list or len(data) != rows or tensor.shape not in ([rows], [rows, 1]):
            return None
    flat = finite_floats(list(chain.from_iterable(data for _, data in given)))  # a nested [N, 1] value is refused there
    return None if flat is None else flat.reshape(len(features), rows).T.copy()


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
    values = _numbers(tensor, data, rows * width, lambda i: f"instance {i // width}, feature {features[i % width].name!r}")
    return values.reshape(rows, width)


def _column(tensor: RequestInput, data: Payload, rows: int, spec: FeatureSpec, limits: Limits) -> np.ndarray:
    if tensor.shape not in ([rows], [rows, 1]):
        raise InvalidInput(f"input {spec.name!r}: shape must be [{rows}] or [{rows}, 1], got {tensor.shape}")
    if spec.kind == "number":
        return _numbers(tensor, data, rows, lambda i: f"instance {i}, feature {spec.name!r}")
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {spec.name!r} is a text feature: send it as BYTES, not {tensor.datatype}")
    strings = _json_strings(data, rows, spec.name) if isinstance(data, list) else _binary_strings(data, rows, spec.name, limits)
    longest = max((len(s) for s in strings if s is not None), default=0)
    if longest > limits.max_string_length:
        raise InvalidInput(f"input {spec.name!r}: string longer than {limits.max_string_length} characters")
    return np.array(strings, dtype=object)


def _numbers(tensor: RequestInput, data: Payload, count: int, where: Callable[[int], str]) -> np.ndarray:
    """float64 values of a numeric tensor, each within its datatype and finite, from its
    binary slice, its typed gRPC contents or its JSON data. `where` names element i as
    V1 names a value (instance, feature), so a refusal reads the same on every protocol."""
    name = tensor.name
    if tensor.datatype not in _NUMERIC:
        raise InvalidInput(f"input {clip(name)!r} holds numbers: send a numeric datatype (FP64, FP32, INT64...), not {tensor.datatype}")
    dtype = np.dtype(NUMPY_TYPES[tensor.datatype])
    if isinstance(data, memoryview):
        if len(data) != count * dtype.itemsize:
            raise InvalidInput(
                f"input {clip(name)!r}: its binary data is {len(data)} bytes, but {count} {tensor.datatype} values take "
                f"{count * dtype.itemsize}"
            )
        return _finite(np.frombuffer(data, dtype=dtype).astype(np.float64), where)  # in range by construction
    if isinstance(data, np.ndarray):  # typed contents: no null, so NaN is the missing value, as in binary
        if len(data) != count:
            raise InvalidInput(f"input {clip(name)!r}: shape {tensor.shape} holds {count} values, data has {len(data)}")
        _in_range(data, tensor.datatype, where)
        return _finite(data.astype(np.float64), where)
    flat = _flat(data, tensor.shape, count, name)
    fast = finite_floats(flat) if tensor.datatype == "FP64" else None
    if fast is not None:
        return fast
    if tensor.datatype == "FP64" and {type(v) for v in flat} <= {int, float, type(None)}:
        try:
            values = np.array(flat, dtype=np.float64)  # null becomes NaN: a missing value
            if np.isfinite(values).all() or all(v is None or math.isfinite(v) for v in flat):
                return values
        except OverflowError:
            pass
    _refuse_first_bad(flat, tensor.datatype, where)
    return np.array(flat, dtype=np.float64)


def _refuse_first_bad(flat: list[Any], datatype: str, where: Callable[[int], str]) -> None:
    """Refuse the first value, in row-major order, that V1 or the datatype refuses, with
    V1's words: JSON has null for a missing value, so NaN and Infinity are refused."""
    integral = datatype in _INTEGRAL
    bounds = np.iinfo(NUMPY_TYPES[datatype]) if integral else np.finfo(NUMPY_TYPES[datatype])
    low, high = (int(bounds.min), int(bounds.max)) if integral else (float(bounds.min), float(bounds.max))
    for index, value in enumerate(flat):
        kind = type(value)
        if value is None:
            continue
        if kind not in (int, float):
            problem = f"expected a number, got {kind.__name__} {clip(json.dumps(value))}"
        elif kind is float and not math.isfinite(value):
            problem = f"{value} is not a finite number"
        elif kind is float and integral:
            problem = f"{value} is not an integer, as {datatype} values are"
        elif low <= value <= high:
            continue
        elif datatype == "FP64":
            problem = f"{clip(str(value))} is too large for a float"
        else:
            problem = f"{clip(str(value))} is out of range for {datatype}"
        raise InvalidInput(f"{where(index)}: {problem}")


def _in_range(values: np.ndarray, datatype: str, where: Callable[[int], str]) -> None:
    """Typed contents within the datatype: a field wider than it (int_contents carry INT8
    as int32) may hold what the datatype cannot."""
    if datatype not in _INTEGRAL:
        return  # fp32_contents and fp64_contents hold what FP32 and FP64 do
    bounds = np.iinfo(NUMPY_TYPES[datatype])
    outside = (values < int(bounds.min)) | (values > int(bounds.max))
    if outside.any():
        index = int(np.argmax(outside))
        raise InvalidInput(f"{where(index)}: {values[index]} is out of range for {datatype}")


def _finite(values: np.ndarray, where: Callable[[int], str]) -> np.ndarray:
    """NaN is the missing value of binary and typed data; infinity is refused, as by V1."""
    infinite = np.isinf(values)
    if infinite.any():
        index = int(np.argmax(infinite))
        raise InvalidInput(f"{where(index)}: {values[index]} is not a finite number")
    return values


def _flat(data: list[Any], shape: list[int], count: int, name: str) -> list[Any]:
    """JSON data flat or nested row-major, as the protocol allows; ragged nesting refused."""
    if len(shape) == 2 and data and isinstance(data[0], list):
        if len(data) != shape[0] or any(type(row) is not list or len(row) != shape[1] for row in data):
            raise InvalidInput(f"input {clip(name)!r}: nested data does not match its shape {shape}")
        data = list(chain.from_iterable(data))
    if len(data) != count:
        raise InvalidInput(f"input {clip(name)!r}: shape {shape} holds {count} values, data has {len(data)}")
    return data


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
