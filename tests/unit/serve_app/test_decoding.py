"""JSON bodies are read by orjson first and by Python's json when orjson refuses: whichever
reads a body, the request it becomes is the one Python's json alone would make of it."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.errors import InvalidInput
from serve_app.wire.limits import Limits
from serve_app.wire.v1_json import json_instances

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


def _same(a: Any, b: Any) -> bool:
    """Equality that counts NaN as equal to NaN and tells 1 from 1.0 from True, except that
    orjson reads an integer beyond 64 bits as the nearest double: the value a numeric
    feature makes of it anyway (and any other kind of feature refuses a number)."""
    if isinstance(a, float) and type(b) is int and not -(2**63) <= b < 2**64:
        return a == float(b)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _outcome(body: bytes) -> tuple[str, Any]:
    try:
        return "ok", json_instances(body, Limits(max_instances=10**6))
    except InvalidInput as exc:
        return "refused", exc.message


def _python_json_only(body: bytes) -> tuple[str, Any]:
    """What the route answered when Python's json read every body."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return "refused", None
    if not (isinstance(payload, dict) and set(payload) == {"instances"} and isinstance(payload["instances"], list)):
        return "refused", None
    return ("ok", payload["instances"]) if payload["instances"] else ("refused", None)


@settings(max_examples=400, deadline=None)
@given(instances=st.lists(_values, max_size=5), extra=st.booleans(), indent=st.sampled_from([None, 2]))
def test_any_body_becomes_what_pythons_json_makes_of_it(instances: list[Any], extra: bool, indent: int | None) -> None:
    body = json.dumps({"instances": instances, **({"x": 1} if extra else {})}, indent=indent).encode()
    (kind, value), (expected_kind, expected) = _outcome(body), _python_json_only(body)
    assert kind == expected_kind, body
    if kind == "ok":
        assert _same(value, expected), body


@pytest.mark.parametrize(
    ("body", "note"),
    [
        (b'{"instances": [[NaN, 1]]}', "a NaN literal"),
        (b'{"instances": [[1e400, 1]]}', "a number too large for a double"),
        (b'{"instances": [[' + b"9" * 400 + b", 1]]}", "an integer of 400 digits"),
        (b'{"instances": [["\\ud800", 1]]}', "a lone surrogate escape"),
        ('{"instances": [[1, 2]]}'.encode("utf-16"), "UTF-16 with a byte order mark"),
    ],
)
def test_bodies_orjson_refuses_are_read_by_pythons_json(body: bytes, note: str) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    kind, value = _outcome(body)
    assert kind == "ok", note
    assert _same(value, json.loads(body)["instances"]), note
