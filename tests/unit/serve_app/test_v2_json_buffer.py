"""Large V2 JSON bodies of FP64 data read by simdjson into buffers (serve_app/wire/v2_json.py
`_buffered`): whatever the buffer path reads is exactly what the JSON path reads, and
whatever it could misread, or the JSON path would refuse, it leaves to the JSON path."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.errors import InvalidInput, PayloadTooLarge
from nonstop.manifest import FeatureSpec
from serve_app.wire import v2_json
from serve_app.wire.json_buffer import MIN_BYTES
from serve_app.wire.limits import Limits

NAMES = ["mean radius", "texture", "area", "smoothness"]
FEATURES = [FeatureSpec(name=n, kind="number", dtype="float64") for n in NAMES]
ROW = [17.99, 10.38, 1001, 0.1184]
MANY = [ROW] * 1500  # past the size below which the JSON path reads every body
LIMITS = Limits()


def _matrix_body(rows: list[list[Any]], nested: bool = True, name: str = "input-0", **top: Any) -> bytes:
    data = rows if nested else [v for row in rows for v in row]
    return orjson.dumps({**top, "inputs": [{"name": name, "shape": [len(rows), len(NAMES)], "datatype": "FP64", "data": data}]})


def _columns_body(rows: list[list[Any]], nested: bool = False) -> bytes:
    inputs = [
        {"name": n, "shape": [len(rows), 1] if nested else [len(rows)], "datatype": "FP64",
         "data": [[r[i]] if nested else r[i] for r in rows]}
        for i, n in enumerate(NAMES)
    ]  # fmt: skip
    return orjson.dumps({"inputs": inputs})


def _json_path(body: bytes) -> tuple[str, Any]:
    try:
        decoded = v2_json._json_decoded(body, len(body), "m", FEATURES, LIMITS)
    except (InvalidInput, PayloadTooLarge) as exc:
        return "refused", exc.message
    return "ok", (decoded.matrix, decoded.request_id, decoded.outputs)


def _served(body: bytes) -> tuple[str, Any]:
    try:
        decoded = v2_json.decode(body, None, "m", FEATURES, LIMITS)
    except (InvalidInput, PayloadTooLarge) as exc:
        return "refused", exc.message
    return "ok", (decoded.matrix, decoded.request_id, decoded.outputs)


def _same(a: tuple[str, Any], b: tuple[str, Any]) -> None:
    assert a[0] == b[0], (a, b)
    if a[0] == "refused":
        assert a[1] == b[1]
    else:
        np.testing.assert_array_equal(a[1][0], b[1][0])
        assert a[1][1:] == b[1][1:]


EDGES = [ROW, [-0.0, 1e-300, 18446744073709551615, 2**53 + 1], [1.5e10, -7, 0, -9223372036854775808], *MANY]


@pytest.mark.parametrize(
    "body",
    [
        _matrix_body(EDGES),
        _matrix_body(EDGES, nested=False),
        _matrix_body(EDGES, id="req-1", parameters={"binary_data_output": False, "priority": 3}, model_name="m"),
        _columns_body(EDGES),
        _columns_body(EDGES, nested=True),
        json.dumps({"inputs": json.loads(_matrix_body(EDGES))["inputs"], "outputs": [{"name": "predict_proba"}]}, indent=1).encode(),
    ],
    ids=["nested", "flat", "id and parameters", "per feature", "per feature nested", "outputs, spaced"],
)
def test_large_fp64_bodies_are_read_as_buffers_exactly_as_the_json_path_reads_them(body: bytes) -> None:
    assert len(body) >= MIN_BYTES
    buffered = v2_json._buffered(body, "m", FEATURES, LIMITS)
    assert buffered is not None and buffered.matrix.dtype == np.float64
    _same(("ok", (buffered.matrix, buffered.request_id, buffered.outputs)), _json_path(body))
    np.testing.assert_array_equal(buffered.matrix[:3], np.array(EDGES[:3], dtype=np.float64))


def _swap(body: bytes, old: bytes, new: bytes) -> bytes:
    assert old in body
    return body.replace(old, new, 1)


GOOD = _matrix_body(MANY)
FLAT = _matrix_body(MANY, nested=False)
FIRST = b"[[17.99,10.38,1001,0.1184]"


@pytest.mark.parametrize(
    "body",
    [
        _swap(GOOD, FIRST, b"[[17.99,[10.38],1001,0.1184]"),  # a value nested deeper than a row
        _swap(FLAT, b"[17.99,", b"[[17.99],"),  # flat data with one value in an array
        _swap(GOOD, FIRST, b"[[17.99,10.38,1001]"),  # ragged rows
        _swap(GOOD, FIRST, b"[[17.99,10.38,1001,0.1184,5]"),
        _swap(GOOD, b'"input-0"', b'"input[0]"'),  # a [ in a string: the count of arrays is off
        _swap(GOOD, b'"name":"input-0"', b'"name":"\\u005b"'),
        _swap(GOOD, b'{"inputs":', b'{"inputs":[],"inputs":'),  # a repeated key: JSON reads the last
        _swap(GOOD, b'"datatype":"FP64"', b'"datatype":"FP64","datatype":"INT8"'),
        _swap(GOOD, b'"datatype":"FP64"', b'"datatype":"INT64"'),
        _swap(GOOD, b'"datatype":"FP64"', b'"datatype":"FP64","parameters":{"binary_data_size":8}'),
        _swap(GOOD, b'{"inputs":', b'{"model_name":"other","inputs":'),
        _swap(GOOD, b'{"inputs":', b'{"extra":1,"inputs":'),
        _swap(GOOD, b'"shape":[1500,4]', b'"shape":[1500.0,4]'),
        _swap(GOOD, b'"shape":[1500,4]', b'"shape":[1500,5]'),
        _swap(GOOD, FIRST, b"[[17.99,10.38,1001,null]"),
        _swap(GOOD, FIRST, b"[[17.99,10.38,1001,true]"),
        _swap(GOOD, FIRST, b'[[17.99,10.38,1001,"4"]'),
        _swap(GOOD, FIRST, b"[[17.99,10.38,1001,123456789012345678901234567890]"),
        _swap(GOOD, FIRST, b"[[17.99,10.38,1001,1e999]"),
        _swap(GOOD, FIRST, b"[[17.99,10.38,1001,NaN]"),
        _swap(GOOD, b'{"inputs":', b'{"outputs":[{"name":"predict"},{"name":"predict"}],"inputs":'),
        GOOD[:-3],
        GOOD + b"\x00",
        orjson.dumps({"inputs": [{"name": "input-0", "shape": [10_001, 4], "datatype": "FP64", "data": [[1.0] * 4] * 10_001}]}),
    ],
)
def test_what_the_buffer_could_misread_or_the_json_path_refuses_is_left_to_the_json_path(body: bytes) -> None:
    assert len(body) >= MIN_BYTES
    assert v2_json._buffered(body, "m", FEATURES, LIMITS) is None
    _same(_served(body), _json_path(body))


def test_the_buffer_path_goes_on_after_bodies_it_could_not_read() -> None:
    """The parser is shared with V1's buffer path and reused; one that failed is replaced."""
    for bad in (GOOD[:-3], _swap(GOOD, FIRST, b"[[17.99,10.38,1001,null]"), _swap(GOOD, FIRST, b"[[1,2,3,1" + b"0" * 30 + b"]")):
        assert v2_json._buffered(bad, "m", FEATURES, LIMITS) is None
        buffered = v2_json._buffered(FLAT, "m", FEATURES, LIMITS)
        assert buffered is not None
        np.testing.assert_array_equal(buffered.matrix, MANY)


_values = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**63), 2**64 - 1)
_cells = _values | st.lists(_values, max_size=2) | st.booleans() | st.none()


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.lists(_cells, min_size=3, max_size=5), min_size=1, max_size=4),
    form=st.sampled_from(["nested", "flat", "per feature", "per feature nested"]),
)
def test_any_large_fp64_body_is_read_as_the_json_path_reads_it(rows: list[list[Any]], form: str) -> None:
    """The rows drawn, then many good rows, in each form: the same matrix or the same refusal."""
    every = [*rows, *MANY]
    if form in ("nested", "flat"):
        body = _matrix_body(every, nested=form == "nested")
    else:
        body = json.dumps(
            {"inputs": [
                {"name": n, "shape": [len(every)] + ([1] if form == "per feature nested" else []), "datatype": "FP64",
                 "data": [([r[i]] if form == "per feature nested" else r[i]) if i < len(r) else 0 for r in every]}
                for i, n in enumerate(NAMES)
            ]}
        ).encode()  # fmt: skip
    _same(_served(body), _json_path(body))
