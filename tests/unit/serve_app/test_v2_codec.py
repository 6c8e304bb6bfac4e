"""The V2 codec on its own: every accepted request shape decodes to the V1 matrix, every
malformed body is a typed error naming the problem, and responses round-trip."""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import numpy as np
import pytest

from nonstop.errors import InvalidInput, PayloadTooLarge
from nonstop.manifest import FeatureSpec
from serve_app.wire.limits import Limits
from serve_app.wire.v2_json import decode, encode
from serve_app.wire.v2_tensors import OutputTensor, prediction_tensor

NUMBERS = [FeatureSpec(name=n, kind="number", dtype="float64") for n in ("a", "b", "c")]
MIXED = [FeatureSpec(name="a", kind="number", dtype="float64"), FeatureSpec(name="colour", kind="category", dtype="str")]
ROWS = [[1.0, 2.0, 3.0], [4.0, 5.5, 6.0]]


def _per_feature(rows: list[list[Any]], datatype: str = "FP64") -> dict[str, Any]:
    return {
        "inputs": [
            {"name": f.name, "shape": [len(rows)], "datatype": datatype, "data": [r[i] for r in rows]}
            for i, f in enumerate(NUMBERS)
        ]
    }


def _binary(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, str]:
    text = json.dumps(header).encode()
    return text + b"".join(chunks), str(len(text))


def _bytes_tensor(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def test_every_accepted_shape_decodes_to_the_same_matrix() -> None:
    expected = np.array(ROWS)
    per_feature = json.dumps(_per_feature(ROWS)).encode()
    nested = json.dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": ROWS}]}).encode()
    flat = json.dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": sum(ROWS, [])}]}).encode()
    column = json.dumps(
        {"inputs": [{**i, "shape": [2, 1]} for i in _per_feature(ROWS)["inputs"]]}
    ).encode()
    matrix = np.asarray(ROWS, dtype="<f4")
    binary_matrix = _binary(
        {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": matrix.nbytes}}]},
        matrix.tobytes(),
    )
    columns = [np.asarray([r[i] for r in ROWS], dtype="<f8") for i in range(3)]
    binary_columns = _binary(
        {
            "inputs": [
                {"name": f.name, "shape": [2], "datatype": "FP64", "parameters": {"binary_data_size": 16}} for f in NUMBERS
            ]
        },
        *(c.tobytes() for c in columns),
    )
    for body, header in [(per_feature, None), (nested, None), (flat, None), (column, None), binary_matrix, binary_columns]:
        decoded = decode(body, header, "m", NUMBERS, Limits())
        np.testing.assert_array_equal(decoded.matrix, expected)
        assert decoded.matrix.dtype == np.float64


def test_text_features_arrive_as_bytes_in_json_or_binary_and_null_or_nan_is_missing() -> None:
    json_body = json.dumps(
        {
            "inputs": [
                {"name": "colour", "shape": [2], "datatype": "BYTES", "data": ["red", None]},
                {"name": "a", "shape": [2], "datatype": "INT64", "data": [1, None]},
            ]
        }
    ).encode()
    numbers = np.array([1.0, np.nan])
    binary = _binary(
        {
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "FP64", "parameters": {"binary_data_size": 16}},
                {"name": "colour", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 4 + 3 + 4 + 5}},
            ]
        },
        numbers.tobytes(),
        _bytes_tensor(["red", "grün"]),
    )
    as_json = decode(json_body, None, "m", MIXED, Limits()).matrix
    as_binary = decode(*binary, "m", MIXED, Limits()).matrix
    assert as_json[0].tolist() == [1.0, "red"] and np.isnan(as_json[1, 0]) and np.isnan(as_json[1, 1])
    assert as_binary[0].tolist() == [1.0, "red"] and np.isnan(as_binary[1, 0]) and as_binary[1, 1] == "grün"


def _error(body: bytes | dict[str, Any], header: str | None = None, features: list[FeatureSpec] = NUMBERS, limits: Limits = Limits()) -> str:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    with pytest.raises((InvalidInput, PayloadTooLarge)) as caught:
        decode(raw, header, "m", features, limits)
    return caught.value.message


def _one(**changes: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3], **changes}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not a V2 inference request: .*Invalid JSON"),
        (b"[]", "not a V2 inference request"),
        ({"inputs": []}, "inputs: List should have at least 1 item"),
        ({"inputs": [{"name": "x"}]}, "inputs.0.shape: Field required"),
        (_one(datatype="FP8"), "inputs.0.datatype: Input should be 'BOOL'"),
        (_one(shape=[1, 3, 1]), "inputs.0.shape: List should have at most 2 items"),
        (_one(shape=[1, "3"]), "inputs.0.shape.1: Input should be a valid integer"),
        (_one(extra=1), "inputs.0.extra: Extra inputs are not permitted"),
        ({**_one(), "oops": 1}, "oops: Extra inputs are not permitted"),
        ({**_one(), "model_name": "other"}, "the body names model 'other', the path 'm'"),
        (_one(data=None), "has neither data nor a binary_data_size"),
        (_one(shape=[-1, 3]), "shape must be \\[N\\] or \\[N, width\\]"),
        (_one(shape=[0, 3], data=[]), "hold no instances"),
        (_one(shape=[1, 2], data=[1, 2]), "must be the \\[N, 3\\] tensor"),
        (_one(shape=[2, 3]), "shape \\[2, 3\\] holds 6 values, data has 3"),
        (_one(shape=[2, 3], data=[[1, 2, 3], [4, 5]]), "nested data does not match its shape"),
        (_one(data=[1, "2", 3]), "instance 0, feature 'b': expected a number, got str \"2\""),
        (_one(data=[1, True, 3]), "instance 0, feature 'b': expected a number, got bool true"),
        (_one(data=[1, [2], 3]), "instance 0, feature 'b': expected a number, got list \\[2\\]"),
        (_one(datatype="INT32", data=[1, 2.5, 3]), "instance 0, feature .b.: 2.5 is not an integer, as INT32 values are"),
        (_one(datatype="BYTES", data=["1", "2", "3"]), "send a numeric datatype"),
        (_one(datatype="BOOL", data=[True, False, True]), "send a numeric datatype"),
        (_one(data=[1, 10**400, 3]), "too large for a float"),
        ({**_one(), "outputs": []}, '"outputs" is empty'),
        ({**_one(), "outputs": [{"name": "predict"}, {"name": "predict"}]}, "requested more than once: predict"),
        ({"inputs": [_one()["inputs"][0], _one()["inputs"][0]]}, "given more than once: x"),
        (_per_feature(ROWS) | {"inputs": _per_feature(ROWS)["inputs"][:2]}, "missing: c; unknown: none"),
        ({"inputs": [*_per_feature(ROWS)["inputs"], {**_per_feature(ROWS)["inputs"][0], "name": "d"}]}, "unknown: d"),
        ({"inputs": [{**i, "shape": [2 + (i["name"] == "b")]} for i in _per_feature(ROWS)["inputs"]]}, "disagree on the number"),
    ],
)
def test_malformed_json_requests_are_refused_naming_the_problem(body: Any, message: str) -> None:
    found = _error(body)
    assert re.search(message, found), found


def test_infinity_is_refused_and_named_by_feature() -> None:
    values = np.array([[1.0, np.inf, 3.0]])
    body, header = _binary(
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "parameters": {"binary_data_size": 24}}]},
        values.tobytes(),
    )
    assert _error(body, header) == "instance 0, feature 'b': inf is not a finite number"


@pytest.mark.parametrize(
    ("header", "tail", "size", "message"),
    [
        ("0", b"", 24, "Inference-Header-Content-Length must be"),
        ("abc", b"", 24, "Inference-Header-Content-Length must be"),
        ("²", b"", 24, "Inference-Header-Content-Length must be"),
        ("999999", b"", 24, "Inference-Header-Content-Length must be"),
        (None, b"", 24, "declares 24 binary bytes but only 0 follow"),
        (None, b"\0" * 16, 24, "declares 24 binary bytes but only 16 follow"),
        (None, b"\0" * 32, 24, "8 bytes after the JSON header belong to no input"),
        (None, b"\0" * 16, 16, "its binary data is 16 bytes, but 3 FP64 values take 24"),
        (None, b"\0" * 24, -1, "binary_data_size: Input should be greater than or equal to 0"),
    ],
)
def test_malformed_binary_bodies_are_refused(header: str | None, tail: bytes, size: int, message: str) -> None:
    text = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "parameters": {"binary_data_size": size}}]}
    ).encode()
    found = _error(text + tail, header if header is not None else str(len(text)))
    assert message in found, found


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (b"\x03\x00\x00", "ends before element 0 of 2"),
        (b"\x09\x00\x00\x00red", "element 0 declares 9 bytes, 3 remain"),
        (_bytes_tensor(["red"]), "ends before element 1 of 2"),
        (_bytes_tensor(["red", "blue"]) + b"x", "1 bytes after its 2 BYTES elements"),
        (_bytes_tensor(["red", "x" * 300]), "string longer than 256 characters"),
        (_bytes_tensor(["red"]) + b"\x02\x00\x00\x00\xff\xfe", "instance 1, feature 'colour': not UTF-8"),
    ],
)
def test_malformed_binary_strings_are_refused(tensor: bytes, message: str) -> None:
    body, header = _binary(
        {
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "FP64", "data": [1, 2]},
                {"name": "colour", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(tensor)}},
            ]
        },
        tensor,
    )
    found = _error(body, header, MIXED)
    assert message in found, found


def test_a_text_schema_refuses_the_matrix_form_and_numbers_for_text() -> None:
    matrix = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}
    assert "cannot carry this schema's text feature(s) colour" in _error(matrix, features=MIXED)
    numbers = {
        "inputs": [
            {"name": "a", "shape": [1], "datatype": "FP64", "data": [1]},
            {"name": "colour", "shape": [1], "datatype": "FP64", "data": [1]},
        ]
    }
    assert "'colour' is a text feature: send it as BYTES, not FP64" in _error(numbers, features=MIXED)


def test_sizes_are_bounded_before_decoding() -> None:
    assert "exceeds the limit of 1024" in _error(b" " * 2000, limits=Limits(max_body_bytes=1024))
    many = _one(shape=[5, 3], data=[0] * 15)
    assert "5 instances exceed the limit of 4" in _error(many, limits=Limits(max_instances=4))
    # the count is judged on the declared shape, before any data is read
    assert "10000000 instances exceed" in _error(_one(shape=[10**7, 3], data=[]), limits=Limits())


def test_thousands_of_inputs_are_refused_quickly_in_a_short_message() -> None:
    tensors = [{"name": f"n{i}", "shape": [1], "datatype": "FP64", "data": [1]} for i in range(20_000)]
    message = _error({"inputs": tensors})
    assert "unknown: n0, n1, n2, n3, n4 and 19995 more" in message and len(message) < 300
    assert _error({"inputs": tensors[:3] * 2}) == "input(s) given more than once: n0, n1, n2"


def test_responses_in_json_and_binary_round_trip() -> None:
    outputs = [prediction_tensor([0, 1, 1]), OutputTensor("labels", "BYTES", [2], np.array(["a", "bé"], dtype=object))]
    text, length = encode("m", 3, "req-1", outputs, {"predict": False, "labels": False})
    assert length is None
    assert json.loads(text) == {
        "model_name": "m",
        "model_version": "3",
        "id": "req-1",
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [3], "data": [0, 1, 1]},
            {"name": "labels", "datatype": "BYTES", "shape": [2], "data": ["a", "bé"]},
        ],
    }
    body, length = encode("m", 3, None, outputs, {"predict": True, "labels": True})
    assert length is not None
    header = json.loads(body[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [24, 4 + 1 + 4 + 3] and "data" not in header["outputs"][0]
    assert np.frombuffer(body[length : length + 24], "<i8").tolist() == [0, 1, 1]
    assert body[length + 24 :] == _bytes_tensor(["a", "bé"])
    assert prediction_tensor([0.5, 1.5]).datatype == "FP64" and prediction_tensor(["x"]).datatype == "BYTES"
