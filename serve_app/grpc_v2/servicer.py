"""Open Inference Protocol (V2) over gRPC (`inference.GRPCInferenceService`).

Ray Serve's gRPC ingress calls the deployment method named after the RPC (`ModelInfer`
...) with the request message already parsed; the deployment's methods hand it here.
Parsing is bounded before it starts: Serve's gRPC servers refuse a message over
RAY_SERVE_GRPC_MAX_MESSAGE_SIZE, which `nonstop up` and the RayService set to the body
limit (`max_body_bytes`), and a message over `max_body_bytes` is refused here too.

A request runs as a REST one does: bound to a version, its tensors decoded against that
version's schema by the same rules (serve_app.wire.v2_tensors.to_matrix: one [N, F] tensor
or one tensor per feature, BYTES for text, sizes checked before any data is read),
predicted by the same batched call. Tensor data comes in `contents` (the field of the
datatype) or in `raw_input_contents` (one entry per input, the binary extension's
layout); answers go back in `raw_output_contents`, as Triton sends them. Errors take
their code from the table the REST routes read too (serve_app/edge.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message
from pydantic import ValidationError

from nonstop.errors import InvalidInput, ModelNotReady, NonstopError, PayloadTooLarge, clip, validation_problems
from nonstop.manifest import FeatureSpec
from serve_app.edge import KEY_HEADER, REQUEST_ID_HEADER, error_text, grpc_code, request_id
from serve_app.grpc_v2 import oip_v2_pb2 as pb
from serve_app.replica.dataplane import EXTENSIONS, SERVER_NAME, DataPlane, server_version
from serve_app.wire.limits import Limits
from serve_app.wire.v2_tensors import InferenceRequest, Payload, RequestInput, requested, tensor_bytes, to_matrix

# The `contents` field that carries each datatype's values (FP16 has none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# The numeric fields' own types: their values arrive typed, with no null (NaN is the
# missing value, as in binary data), not as JSON values.
TYPED_CONTENTS = {
    "int_contents": np.int64,
    "int64_contents": np.int64,
    "uint_contents": np.uint64,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}

Reply = TypeVar("Reply", bound=Message)


class Context(Protocol):
    """What this module needs of Serve's gRPC context (ray.serve.grpc_util.RayServegRPCContext)."""

    def set_code(self, code: grpc.StatusCode) -> None: ...
    def set_details(self, details: str) -> None: ...
    def invocation_metadata(self) -> list[tuple[str, str]]: ...
    def set_trailing_metadata(self, trailing_metadata: list[tuple[str, str]]) -> None: ...


def _metadata(context: Context, key: str) -> str | None:
    return next((value for name, value in context.invocation_metadata() if name == key), None)


def request_key(context: Context) -> str | None:
    """The canary's sticky key: `x-request-key` metadata, as the HTTP header of that name."""
    return _metadata(context, KEY_HEADER)


class GrpcV2:
    """The service's methods over one replica's data plane; each returns its reply
    message, or sets the error's status on the context and returns an empty one."""

    def __init__(self, plane: DataPlane, limits: Limits) -> None:
        self._plane = plane
        self._limits = limits

    async def answer(
        self, call: Callable[[Any], Awaitable[Reply]], request: Any, context: Context, empty: type[Reply], model: str = ""
    ) -> Reply:
        try:
            return await call(request)
        except NonstopError as exc:
            if model:
                self._plane.refused(model, exc)
            context.set_code(grpc_code(exc))
            context.set_details(error_text(exc))
            return empty()

    async def server_live(self, _: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, _: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        """Ready once every served model has a version loaded (not an error while not)."""
        try:
            self._plane.check_ready()
        except ModelNotReady:
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=True)

    async def server_metadata(self, _: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS)

    async def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        """A model or version not served here is NOT_FOUND; one not loaded yet is not ready."""
        try:
            self._plane.bind_requested(request.name, request.version)
        except ModelNotReady:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        binding = await self._plane.bind_loaded(request.name, request.version)
        return pb.ModelMetadataResponse(**self._plane.describe(binding))

    def infer_for(self, context: Context) -> Callable[[pb.ModelInferRequest], Awaitable[pb.ModelInferResponse]]:
        """ModelInfer with what the call's metadata says: the canary's sticky key, and the
        request id (the client's `x-request-id` or a new one), answered in the trailing
        metadata of that name, errors included."""

        async def infer(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
            rid = request_id(_metadata(context, REQUEST_ID_HEADER))
            context.set_trailing_metadata([(REQUEST_ID_HEADER, rid)])
            return await self.model_infer(request, request_key(context), rid)

        return infer

    async def model_infer(
        self, request: pb.ModelInferRequest, key: str | None = None, rid: str | None = None
    ) -> pb.ModelInferResponse:
        """`key`: the client's `x-request-key` metadata, which keeps its canary choice sticky;
        `rid`: the request id its capture is stored under."""
        size = request.ByteSize()
        if size > self._limits.max_body_bytes:
            raise PayloadTooLarge(f"request message of {size} bytes exceeds the limit of {self._limits.max_body_bytes}")
        binding = await self._plane.bind_loaded(request.model_name, request.model_version, key)
        matrix, outputs = decode(request, binding.features, self._limits)
        result, tensors = await self._plane.infer_outputs(binding, matrix, outputs, rid)
        reply = pb.ModelInferResponse(model_name=result.model, model_version=str(result.version), id=request.id)
        for tensor in tensors:
            reply.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            reply.raw_output_contents.append(tensor_bytes(tensor))
        return reply


def decode(request: pb.ModelInferRequest, features: list[FeatureSpec], limits: Limits) -> tuple[np.ndarray, list[str]]:
    """The matrix the request's tensors make for these features, and the outputs asked
    for by name (`predict` if none), by the REST rules (serve_app/wire/v2_tensors.py)."""
    parsed, payloads = _request(request)
    return to_matrix(parsed.inputs, payloads, features, limits), list(requested(parsed))


def _request(request: pb.ModelInferRequest) -> tuple[InferenceRequest, list[Payload]]:
    """The request as the codec's validated model, and each input's data: its raw bytes
    or the values of its datatype's `contents` field."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: send one per input")
    try:
        parsed = InferenceRequest(
            id=request.id or None,
            inputs=[RequestInput(name=t.name, shape=list(t.shape), datatype=t.datatype) for t in request.inputs],
            outputs=[{"name": o.name} for o in request.outputs] or None,
        )
    except ValidationError as exc:
        raise InvalidInput(f"not a V2 inference request: {clip(validation_problems(exc), 300)}") from exc
    if raw:
        given = [t.name for t in request.inputs if t.HasField("contents")]
        if given:
            raise InvalidInput(f"input(s) {', '.join(clip(n) for n in given[:5])} have contents beside raw_input_contents: send one")
        return parsed, [memoryview(entry) for entry in raw]
    return parsed, [_contents(t) for t in request.inputs]


def _contents(tensor: pb.ModelInferRequest.InferInputTensor) -> Payload:
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInput(f"input {clip(tensor.name)!r}: {clip(tensor.datatype)} values travel in raw_input_contents only")
    others = [f.name for f, _ in tensor.contents.ListFields() if f.name != field]
    if others:
        raise InvalidInput(f"input {clip(tensor.name)!r} is {tensor.datatype}: send its values in {field}, not {others[0]}")
    values = getattr(tensor.contents, field)
    if field in TYPED_CONTENTS:  # typed as the field is: a narrower datatype's range is checked in to_matrix
        return np.array(values, dtype=TYPED_CONTENTS[field])
    if tensor.datatype != "BYTES":
        return list(values)
    try:
        return [value.decode() for value in values]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input {clip(tensor.name)!r}: bytes_contents must be UTF-8 text") from exc
