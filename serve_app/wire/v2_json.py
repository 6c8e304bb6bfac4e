"""Open Inference Protocol (V2) REST bodies: JSON, or JSON then binary tensor data.

With the `Inference-Header-Content-Length` header, the body is that many bytes of JSON
followed by each binary input's bytes in input order, sized by its `binary_data_size`
parameter; without it the body is JSON alone. The body is checked against the byte limit
and each binary input's declared size against the bytes actually there before anything
is decoded; the tensors themselves follow the rules of serve_app.wire.v2_tensors. The
answer goes back the same way: JSON, with the outputs asked for as binary after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from nonstop.errors import InvalidInput, PayloadTooLarge, clip, validation_problems
from nonstop.manifest import FeatureSpec
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
    view = memoryview(body)
    try:
        request = InferenceRequest.model_validate_json(body if split == len(body) else bytes(view[:split]))
    except ValidationError as exc:
        raise InvalidInput(f"not a V2 inference request: {clip(validation_problems(exc), 300)}") from exc
    if request.model_name is not None and request.model_name != model:
        raise InvalidInput(f"the body names model {clip(request.model_name)!r}, the path {model!r}")
    matrix = to_matrix(request.inputs, _payloads(request.inputs, view[split:]), features, limits)
    return Decoded(matrix=matrix, request_id=request.id, outputs=requested(request))


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
