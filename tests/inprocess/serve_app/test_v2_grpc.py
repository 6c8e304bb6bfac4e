"""The gRPC edge in-process: a real grpc.aio server on loopback serving serve_app.grpc_v2.servicer
over a real registry, data plane and model, called through the generated stub. The
status table, and the rules for `contents` and `raw_input_contents` that Triton's
client never exercises (tests/integration/test_v2_grpc.py drives it through the stack)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from nonstop.errors import InvalidInput, ModelLoadError, NonstopError, PayloadTooLarge, VersionNotFound
from nonstop.loading import TrustPolicy, load_version
from nonstop.registry import Registry
from nonstop.schema import rows_to_matrix
from serve_app.config import ModelTarget
from serve_app.edge import grpc_code
from serve_app.grpc_v2 import oip_v2_pb2 as pb
from serve_app.grpc_v2 import oip_v2_pb2_grpc as pb_grpc
from serve_app.grpc_v2.servicer import GrpcV2
from serve_app.replica.dataplane import DataPlane
from serve_app.replica.holder import ModelHolder
from serve_app.wire.limits import Limits
from tests.conftest import MODEL
from tests.inprocess.serve_app.inprocess import train_mixed


class _Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """What the deployment's methods do (serve_app/app.py), on a plain grpc.aio server."""

    def __init__(self, v2: GrpcV2) -> None:
        self.v2 = v2

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await self.v2.answer(self.v2.server_live, request, context, pb.ServerLiveResponse)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await self.v2.answer(self.v2.server_ready, request, context, pb.ServerReadyResponse)

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await self.v2.answer(self.v2.model_ready, request, context, pb.ModelReadyResponse, request.name)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await self.v2.answer(self.v2.model_metadata, request, context, pb.ModelMetadataResponse, request.name)

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await self.v2.answer(self.v2.model_infer, request, context, pb.ModelInferResponse, request.model_name)


def _session(registry: Registry, calls: Callable[[grpc.aio.Channel], Awaitable[Any]], limits: Limits = Limits()) -> Any:
    async def go() -> Any:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(ModelTarget(model=MODEL, poll_interval_s=3600))
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(GrpcV2(DataPlane(holder), limits)), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await calls(channel)
        finally:
            await server.stop(None)
            await holder.close()

    return asyncio.run(go())


async def _status(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _matrix_request(rows: list[list[float]], **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL, **fields)
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[len(rows), len(rows[0])])
    tensor.contents.fp64_contents.extend(np.ravel(rows).tolist())
    return request


def test_the_one_table_maps_errors_by_their_nearest_listed_ancestor() -> None:
    assert grpc_code(VersionNotFound("x")) == grpc.StatusCode.NOT_FOUND
    assert grpc_code(PayloadTooLarge("x")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_code(InvalidInput("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code(ModelLoadError(MODEL, 1, "x")) == grpc.StatusCode.UNAVAILABLE
    assert grpc_code(NonstopError("x")) == grpc.StatusCode.INTERNAL


def test_contents_and_raw_contents_give_the_estimators_predictions(served: Registry) -> None:
    manifest = served.manifest(MODEL, 1)
    rows = manifest.samples.inputs
    expected = load_version(served, MODEL, 1, TrustPolicy()).predict(rows_to_matrix(rows, manifest.features))
    raw = pb.ModelInferRequest(model_name=MODEL, model_version="1", id="raw")
    for i, name in enumerate(manifest.feature_names):
        raw.inputs.add(name=name, datatype="FP32", shape=[len(rows)])
        raw.raw_input_contents.append(np.asarray([r[i] for r in rows], dtype="<f4").tobytes())
    asked = _matrix_request(rows)
    asked.outputs.add(name="predict_proba")

    async def calls(channel: grpc.aio.Channel) -> list[Any]:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return [
            await stub.ServerLive(pb.ServerLiveRequest()),
            await stub.ServerReady(pb.ServerReadyRequest()),
            await stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="1")),
            await stub.ModelInfer(_matrix_request(rows)),
            await stub.ModelInfer(raw),
            await stub.ModelInfer(asked),
        ]

    live, ready, model_ready, typed, binary, probabilities = _session(served, calls)
    assert live.live and ready.ready and model_ready.ready
    assert np.frombuffer(typed.raw_output_contents[0], "<i8").tolist() == expected
    assert (typed.model_version, typed.outputs[0].name, list(typed.outputs[0].shape)) == ("1", "predict", [len(rows)])
    as_fp32 = np.asarray(rows, dtype=np.float32).astype(np.float64).tolist()
    fp32_expected = load_version(served, MODEL, 1, TrustPolicy()).predict(rows_to_matrix(as_fp32, manifest.features))
    assert np.frombuffer(binary.raw_output_contents[0], "<i8").tolist() == fp32_expected and binary.id == "raw"
    assert [o.name for o in probabilities.outputs] == ["predict_proba"]
    assert np.frombuffer(probabilities.raw_output_contents[0], "<f8").reshape(len(rows), 2).sum(axis=1) == pytest.approx(1.0)


def test_text_features_travel_as_bytes_in_contents_or_raw(registry: Registry, tmp_path: Path) -> None:
    manifest = train_mixed(registry, tmp_path)
    text = [f.kind != "number" for f in manifest.features]
    # BYTES has no null: a missing text value is sent as a known one
    rows = [["red" if v is None and t else v for v, t in zip(r, text, strict=True)] for r in manifest.samples.inputs]
    expected = load_version(registry, MODEL, 1, TrustPolicy()).predict(rows_to_matrix(rows, manifest.features))
    typed, raw = pb.ModelInferRequest(model_name=MODEL), pb.ModelInferRequest(model_name=MODEL)
    for i, feature in enumerate(manifest.features):
        values = [r[i] for r in rows]
        tensor = typed.inputs.add(name=feature.name, datatype="BYTES" if text[i] else "FP64", shape=[len(rows)])
        raw.inputs.add(name=feature.name, datatype="BYTES" if text[i] else "FP64", shape=[len(rows)])
        if text[i]:
            tensor.contents.bytes_contents.extend(str(v).encode() for v in values)
            raw.raw_input_contents.append(b"".join(len(str(v).encode()).to_bytes(4, "little") + str(v).encode() for v in values))
        else:
            floats = [np.nan if v is None else float(v) for v in values]
            tensor.contents.fp64_contents.extend(floats)
            raw.raw_input_contents.append(np.asarray(floats, dtype="<f8").tobytes())

    async def calls(channel: grpc.aio.Channel) -> list[Any]:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return [await stub.ModelInfer(typed), await stub.ModelInfer(raw)]

    for answer in _session(registry, calls):
        assert answer.outputs[0].datatype == "INT64"
        assert np.frombuffer(answer.raw_output_contents[0], "<i8").tolist() == expected


def test_malformed_requests_get_a_status_naming_the_problem(served: Registry) -> None:
    rows = served.manifest(MODEL, 1).samples.inputs
    width = len(rows[0])
    wrong_field = _matrix_request(rows)
    wrong_field.inputs[0].contents.int64_contents.extend([1])
    both = _matrix_request(rows)
    both.raw_input_contents.append(b"\0" * 8)
    too_few_raw = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[b"\0" * 8])
    too_few_raw.inputs.add(name="a", datatype="FP64", shape=[1])
    too_few_raw.inputs.add(name="b", datatype="FP64", shape=[1])
    half = pb.ModelInferRequest(model_name=MODEL)
    half.inputs.add(name="input-0", datatype="FP16", shape=[1, width])
    bad_text = pb.ModelInferRequest(model_name=MODEL)
    bad_text.inputs.add(name="input-0", datatype="BYTES", shape=[1, width]).contents.bytes_contents.extend([b"\xff"] * width)
    odd_type = pb.ModelInferRequest(model_name=MODEL)
    odd_type.inputs.add(name="input-0", datatype="FP128", shape=[1, width])
    cases = {
        "version": (_matrix_request(rows, model_version="7"), grpc.StatusCode.NOT_FOUND, "version 7 is not served here"),
        "not a number": (_matrix_request(rows, model_version="v1"), grpc.StatusCode.NOT_FOUND, "'v1' is not served here"),
        "model": (pb.ModelInferRequest(model_name="other"), grpc.StatusCode.NOT_FOUND, "unknown model 'other'"),
        "no inputs": (pb.ModelInferRequest(model_name=MODEL), grpc.StatusCode.INVALID_ARGUMENT, "inputs: List should have at least 1"),
        "field": (wrong_field, grpc.StatusCode.INVALID_ARGUMENT, "send its values in fp64_contents, not int64_contents"),
        "both": (both, grpc.StatusCode.INVALID_ARGUMENT, "have contents beside raw_input_contents"),
        "raw count": (too_few_raw, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents has 1 entries for 2 inputs"),
        "fp16": (half, grpc.StatusCode.INVALID_ARGUMENT, "FP16 values travel in raw_input_contents only"),
        "utf-8": (bad_text, grpc.StatusCode.INVALID_ARGUMENT, "bytes_contents must be UTF-8"),
        "datatype": (odd_type, grpc.StatusCode.INVALID_ARGUMENT, "datatype: Input should be"),
    }

    async def calls(channel: grpc.aio.Channel) -> dict[str, tuple[grpc.StatusCode, str]]:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return {name: await _status(stub.ModelInfer(request)) for name, (request, _, _) in cases.items()}

    got = _session(served, calls)
    for name, (_, code, phrase) in cases.items():
        assert got[name][0] == code and phrase in got[name][1], (name, got[name])


def test_a_message_over_the_body_limit_is_refused(served: Registry) -> None:
    rows = served.manifest(MODEL, 1).samples.inputs

    async def calls(channel: grpc.aio.Channel) -> tuple[grpc.StatusCode, str]:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return await _status(stub.ModelInfer(_matrix_request(rows * 10)))

    code, details = _session(served, calls, Limits(max_body_bytes=1024))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "exceeds the limit of 1024" in details


def test_bytes_that_are_not_a_message_are_refused_by_grpc_and_the_server_answers_on(served: Registry) -> None:
    """Protobuf parses before any code of ours runs; gRPC itself answers what it cannot."""

    async def calls(channel: grpc.aio.Channel) -> tuple[tuple[grpc.StatusCode, str], Any]:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        garbage = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes both ways
        return await _status(garbage(b"\xff\xff\xff\xff")), await stub.ServerLive(pb.ServerLiveRequest())

    (code, details), live = _session(served, calls)
    assert code == grpc.StatusCode.UNKNOWN and "DecodeError" in details and live.live, (code, details)
