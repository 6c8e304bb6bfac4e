"""One set of input rules for every protocol: the same bad input is refused with the
same reason over V1 JSON, V1 Arrow, V2 REST (JSON and binary) and gRPC (typed contents
and raw), with the status the one error table gives (serve_app/edge.py) — never a server
fault. A case lists the protocols that can carry it (Arrow cannot hold 300 in an INT8
column; V1 has no datatypes and no versioned routes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pyarrow as pa
import pytest

from nonstop.errors import clip
from nonstop.registry import Registry
from serve_app.grpc_v2 import oip_v2_pb2 as pb
from serve_app.grpc_v2 import oip_v2_pb2_grpc as pb_grpc
from serve_app.replica.dataplane import MAX_VERSION_DIGITS
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_stream
from tests.conftest import MODEL
from tests.inprocess.serve_app.inprocess import call
from tests.inprocess.serve_app.test_v2_grpc import _session, _status

WIDTH = 30  # the demo model's features, all numbers
LITERAL = "@literal@"  # stands for JSON text json.dumps cannot write (1e400)


@dataclass(frozen=True)
class Case:
    value: Any  # the first feature's value; the others are 1
    datatype: str  # as V2 and gRPC send it
    reason: str  # what follows "instance 0, feature '<first>': "
    protocols: tuple[str, ...]
    literal: str | None = None  # JSON text for `value` where Python's json writes none


ALL = ("v1_json", "v1_arrow", "v2_json", "v2_binary", "grpc_contents", "grpc_raw")
JSON_ONLY = ("v1_json", "v2_json")
CASES = {
    "a NaN literal": Case(float("nan"), "FP64", "nan is not a finite number", ("v1_json", "v1_arrow", "v2_json")),
    "Infinity": Case(float("inf"), "FP64", "inf is not a finite number", ALL),
    "-Infinity": Case(float("-inf"), "FP64", "-inf is not a finite number", ALL),
    "a float beyond float64": Case(None, "FP64", "inf is not a finite number", JSON_ONLY, literal="1e400"),
    "an integer beyond float64": Case(10**400, "FP64", f"{clip(str(10**400))} is too large for a float", JSON_ONLY),
    # orjson reads an integer beyond 64 bits as a double: a refusal still quotes it as written
    "a list holding an integer beyond 64 bits": Case(
        [-(2**63) - 1], "FP64", f"expected a number, got list [{-(2**63) - 1}]", JSON_ONLY
    ),
    "INT8 300": Case(300, "INT8", "300 is out of range for INT8", ("v2_json", "grpc_contents")),
    "INT16 -40000": Case(-40000, "INT16", "-40000 is out of range for INT16", ("v2_json", "grpc_contents")),
    "UINT8 -1": Case(-1, "UINT8", "-1 is out of range for UINT8", ("v2_json",)),
    "UINT16 70000": Case(70000, "UINT16", "70000 is out of range for UINT16", ("v2_json", "grpc_contents")),
    "FP32 1e39": Case(1e39, "FP32", "1e+39 is out of range for FP32", ("v2_json",)),
}
CONTENTS = {"FP64": "fp64_contents", "FP32": "fp32_contents", "INT8": "int_contents", "INT16": "int_contents", "UINT16": "uint_contents"}
RAW = {"FP64": "<f8"}


def _row(case: Case) -> list[Any]:
    integral = case.datatype.startswith(("INT", "UINT"))
    return [LITERAL if case.literal else case.value] + [1 if integral else 1.0] * (WIDTH - 1)


def _json(content: dict[str, Any], case: Case) -> bytes:
    return json.dumps(content).replace(f'"{LITERAL}"', case.literal or "").encode()


def _grpc_request(case: Case, raw: bool, version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL, model_version=version)
    tensor = request.inputs.add(name="x", datatype=case.datatype, shape=[1, WIDTH])
    if raw:
        request.raw_input_contents.append(np.asarray(_row(case), dtype=RAW[case.datatype]).tobytes())
    else:
        getattr(tensor.contents, CONTENTS[case.datatype]).extend(_row(case))
    return request


def _http(registry: Registry, protocol: str, case: Case, names: list[str]) -> tuple[int, str]:
    row = _row(case)
    v2_tensor = {"name": "x", "shape": [1, WIDTH], "datatype": case.datatype}
    if protocol == "v1_json":
        kwargs: dict[str, Any] = {"content": _json({"instances": [row]}, case), "headers": {"content-type": "application/json"}}
        path = f"/v1/models/{MODEL}:predict"
    elif protocol == "v1_arrow":
        table = pa.table({name: pa.array([value], pa.float64()) for name, value in zip(names, row, strict=True)})
        kwargs, path = {"content": arrow_stream(table), "headers": {"content-type": ARROW_STREAM}}, f"/v1/models/{MODEL}:predict"
    elif protocol == "v2_json":
        kwargs, path = {"content": _json({"inputs": [{**v2_tensor, "data": [row]}]}, case)}, f"/v2/models/{MODEL}/infer"
    else:
        header = json.dumps({"inputs": [{**v2_tensor, "parameters": {"binary_data_size": 8 * WIDTH}}]}).encode()
        body = header + np.asarray(row, dtype=RAW[case.datatype]).tobytes()
        kwargs = {"content": body, "headers": {"inference-header-content-length": str(len(header))}}
        path = f"/v2/models/{MODEL}/infer"
    response = call(registry, "POST", path, **kwargs)
    return response.status_code, response.json()["error"] if response.status_code != 200 else ""


@pytest.mark.parametrize("name", CASES)
def test_the_same_bad_value_is_refused_for_the_same_reason_on_every_protocol(served: Registry, name: str) -> None:
    case = CASES[name]
    names = served.manifest(MODEL, 1).feature_names
    expected = f"instance 0, feature {names[0]!r}: {case.reason}"
    answers = {p: _http(served, p, case, names) for p in case.protocols if not p.startswith("grpc")}
    grpc_protocols = [p for p in case.protocols if p.startswith("grpc")]

    async def calls(channel: grpc.aio.Channel) -> list[tuple[grpc.StatusCode, str]]:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return [await _status(stub.ModelInfer(_grpc_request(case, raw=p == "grpc_raw"))) for p in grpc_protocols]

    grpc_answers = _session(served, calls) if grpc_protocols else []
    assert answers == {p: (422, expected) for p in answers}
    assert grpc_answers == [(grpc.StatusCode.INVALID_ARGUMENT, expected)] * len(grpc_protocols)


def test_nan_in_binary_data_is_the_missing_value_as_null_is_in_json(served: Registry) -> None:
    """The one documented difference: binary data and typed contents have no null."""
    case = Case(float("nan"), "FP64", "", ())
    names = served.manifest(MODEL, 1).feature_names
    assert _http(served, "v2_binary", case, names) == (200, "")

    async def calls(channel: grpc.aio.Channel) -> list[tuple[grpc.StatusCode, str]]:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return [await _status(stub.ModelInfer(_grpc_request(case, raw=raw))) for raw in (False, True)]

    assert _session(served, calls) == [(grpc.StatusCode.OK, "")] * 2


@pytest.mark.parametrize("version", ["01", "001", "+1", "-1", "1.0", " 1", "²", "١", "0", "9" * (MAX_VERSION_DIGITS + 1), "1" * 5000])
def test_a_version_not_written_canonically_names_no_version_on_every_protocol(served: Registry, version: str) -> None:
    """`/versions/01/` is not another spelling of version 1, and a number of thousands
    of digits is refused before it is read: 404 and NOT_FOUND, with the same reason."""
    segment = version.replace(" ", "%20")
    http = [call(served, "POST", f"/v2/models/{MODEL}/versions/{segment}/infer", json={"inputs": []}), call(served, "GET", f"/v2/models/{MODEL}/versions/{segment}")]
    http += [call(served, "GET", f"/v2/models/{MODEL}/versions/{segment}/ready")]
    case = Case(1.0, "FP64", "", ())

    async def calls(channel: grpc.aio.Channel) -> list[tuple[grpc.StatusCode, str]]:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return [
            await _status(stub.ModelInfer(_grpc_request(case, raw=False, version=version))),
            await _status(stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL, version=version))),
            await _status(stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version=version))),
        ]

    grpc_answers = _session(served, calls)
    reasons = {r.json()["error"] for r in http} | {details for _, details in grpc_answers}
    assert [r.status_code for r in http] == [404] * 3 and [code for code, _ in grpc_answers] == [grpc.StatusCode.NOT_FOUND] * 3
    assert len(reasons) == 1 and f"version {clip(version)!r} is not served here" in reasons.pop()
