"""Open Inference Protocol (V2) REST bodies: JSON, or JSON then binary tensor data.

With the `Inference-Header-Content-Length` header, the body is that many bytes of JSON
followed by each binary input's bytes in input order, sized by its `binary_data_size`
parameter; without it the body is JSON alone. The body is checked against the byte limit
and each binary input's declared size against the bytes actually there before anything
is decoded; the tensors themselves follow the rules of serve_app.wire.v2_tensors. The
answer goes back the same way: JSON, with the outputs asked for as binary after it.

A large JSON-only body whose inputs are all FP64 data is read first by simdjson, each
input's numbers as one buffer of doubles (serve_app/wire/json_buffer.py) and the rest
validated as the JSON path validates it; whatever that path does not take, or would
refuse, goes to the JSON path, which alone words a refusal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from nonstop.errors import InvalidInput, PayloadTooLarge, clip, validation_problems
from nonstop.manifest import FeatureSpec
from serve_app.wire import json_buffer
from serve_app.wire.limits import Limits
from serve_app.wire.v2_tensors import InferenceRequest, OutputTensor, Payload, RequestInput, requested, tensor_bytes, to_matrix

HEADER_LENGTH = "inference-header-content-length"
BINARY_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class Decoded:
    """What the data plane needs: the matrix, and what the answer should hold."""

    matrix: np.ndarray
    request_id: str | None
    outputs: dict[str, bool]  # requested output name -> as binary


def decode(body: bytes, header_length: str | None, model: str, features: list[FeatureSpec], limits: Limits) -> Decoded:
    if len(body) > limits.max_body_bytes:
        raise PayloadTooLarge(f"request body of {len(body)} bytes exceeds the limit of {limits.max_body_bytes}")
    split = _split_at(header_length, len(body))
    if split == len(body) and len(body) >= json_buffer.MIN_BYTES:
        buffered = _buffered(body, model, features, limits)
        if buffered is not None:
            return buffered
    return _json_decoded(body, split, model, features, limits)


def _json_decoded(body: bytes, split: int, model: str, features: list[FeatureSpec], limits: Limits) -> Decoded:
    """The JSON header validated by pydantic, its data as Python values or the binary
    section's slices: the path that reads every body and words every refusal."""
    view = memoryview(body)
    try:
        request = InferenceRequest.model_validate_json(body if split == len(body) else bytes(view[:split]))
    except ValidationError as exc:
        raise InvalidInput(f"not a V2 inference request: {clip(validation_problems(exc), 300)}") from exc
    if request.model_name is not None and request.model_name != model:
        raise InvalidInput(f"the body names model {clip(request.model_name)!r}, the path {model!r}")
    matrix = to_matrix(request.inputs, _payloads(request.inputs, view[split:]), features, limits)
    return Decoded(matrix=matrix, request_id=request.id, outputs=requested(request))


def _buffered(body: bytes, model: str, features: list[FeatureSpec], limits: Limits) -> Decoded | None:
    """A large JSON body whose every input is FP64 data, its numbers read as one buffer per
    input (serve_app/wire/json_buffer.py) and the rest validated as the JSON path validates
    it; None for anything else and for anything refused, so the JSON path alone decides
    a refusal and words it."""
    document = json_buffer.parse(body)
    if document is None:
        return None
    walk = _Walk()
    try:
        header, data = walk.request(document)
    except (_Unread, TypeError, ValueError, RuntimeError, IndexError, KeyError):  # a value not a number, or not the shape read here
        return None
    finally:
        document = None  # the parser takes the next body only once nothing points into this one
    if json_buffer.brackets(body) != walk.arrays or not all(np.isfinite(values).all() for values in data):
        return None  # an array the walk did not count: nested deeper than a row, or a `[` in a string
    try:
        request = InferenceRequest.model_validate_json(orjson.dumps(header))
    except ValidationError:
        return None
    if any(t.datatype != "FP64" or t.parameters.binary_data_size is not None for t in request.inputs):
        return None
    if request.model_name is not None and request.model_name != model:
        return None
    try:
        return Decoded(matrix=to_matrix(request.inputs, list(data), features, limits), request_id=request.id, outputs=requested(request))
    except (InvalidInput, PayloadTooLarge):
        return None


class _Unread(Exception):
    """The body is not what the buffer path reads."""


class _Walk:
    """A V2 request document as plain values, each input's data left as a buffer of
    doubles (and an empty list in its place), counting the arrays it meets: flat data is
    one array, nested data one per row plus its own. Duplicate keys (which JSON reads as
    the last, simdjson's lookup as the first) and strings holding `[` (which the count of
    arrays could not tell from one) are not read."""

    def __init__(self) -> None:
        self.arrays = 0

    def request(self, document: Any) -> tuple[dict[str, Any], list[np.ndarray]]:
        top = self._keys(document)
        inputs = document["inputs"] if "inputs" in top else None
        if not json_buffer.is_array(inputs):
            raise _Unread
        self.arrays += 1
        header = {k: self.plain(document[k]) for k in top if k != "inputs"}
        header["inputs"], data = [], []
        for tensor in inputs:
            fields = self._keys(tensor)
            if "data" not in fields:
                raise _Unread
            entry = {k: self.plain(tensor[k]) for k in fields if k != "data"}
            data.append(self._data(tensor["data"], entry.get("shape")))
            header["inputs"].append({**entry, "data": []})
        return header, data

    def plain(self, value: Any) -> Any:
        if json_buffer.is_object(value):
            return {k: self.plain(value[k]) for k in self._keys(value)}
        if json_buffer.is_array(value):
            self.arrays += 1
            return [self.plain(v) for v in value]
        if isinstance(value, str) and "[" in value:
            raise _Unread
        return value

    def _data(self, data: Any, shape: Any) -> np.ndarray:
        if not json_buffer.is_array(data):
            raise _Unread
        if len(data) and json_buffer.is_array(data[0]):  # nested: one row per first size, each of the second
            if not (type(shape) is list and len(shape) == 2 and len(data) == shape[0]):
                raise _Unread
            if any(len(row) != shape[1] for row in data):
                raise _Unread
            self.arrays += len(data)
        self.arrays += 1
        return json_buffer.doubles(data)

    def _keys(self, value: Any) -> list[str]:
        if not json_buffer.is_object(value):
            raise _Unread
        keys = list(value.keys())
        if len(set(keys)) != len(keys) or any("[" in k for k in keys):
            raise _Unread
        return keys


def _split_at(header_length: str | None, size: int) -> int:
    if header_length is None:
        return size
    value = header_length.strip()
    if not (value.isascii() and value.isdigit()) or not 0 < int(value) <= size:
        raise InvalidInput(
            f"Inference-Header-Content-Length must be the byte length of the JSON header, "
            f"between 1 and the body's {size} bytes; got {clip(header_length)!r}"
        )
    return int(value)


def _payloads(inputs: list[RequestInput], binary: memoryview) -> list[Payload]:
    """Each input's JSON data or slice of the binary section (in input order, all of it claimed)."""
    slices: list[Payload] = []
    at = 0
    for tensor in inputs:
        size = tensor.parameters.binary_data_size
        if size is None:
            if tensor.data is None:
                raise InvalidInput(f"input {clip(tensor.name)!r} has neither data nor a binary_data_size parameter")
            slices.append(tensor.data)
            continue
        if tensor.data is not None:
            raise InvalidInput(f"input {clip(tensor.name)!r} has both data and binary_data_size: send one")
        if at + size > len(binary):
            raise InvalidInput(
                f"input {clip(tensor.name)!r} declares {size} binary bytes but only {len(binary) - at} follow the header"
            )
        slices.append(binary[at : at + size])
        at += size
    if at != len(binary):
        raise InvalidInput(
            f"{len(binary) - at} bytes after the JSON header belong to no input "
            "(binary inputs need a binary_data_size parameter; a JSON-only body needs no Inference-Header-Content-Length)"
        )
    return slices


def encode(
    model: str, version: int, request_id: str | None, outputs: list[OutputTensor], binary: dict[str, bool]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when any output goes as binary."""
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary.get(tensor.name):
            raw = tensor_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensor.values.tolist()
        described.append(entry)
    header: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": described}
    if request_id is not None:
        header["id"] = request_id
    text = _dumps(header)
    if not chunks:
        return text, None
    return text + b"".join(chunks), len(text)


def _dumps(content: dict[str, Any]) -> bytes:
    return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()
