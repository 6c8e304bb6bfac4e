"""V1 instances (lists of numbers parsed by simdjson into doubles, msgspec decoding against the schema) and V2 JSON tensors
(serve_app/wire/numbers.py) take a fast path when they are well formed, no Python code run
per value; the value-by-value check is the reference.
Whatever the shape, the fast path answers exactly what the check alone answers: the same
matrix, or the same refusal in the same words."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.errors import InvalidInput, PayloadTooLarge
from nonstop.manifest import FeatureSpec
from serve_app.wire import v2_json
from serve_app.wire.limits import Limits
from serve_app.wire.json_buffer import MIN_BYTES
from serve_app.wire.v1_json import _MOST_PLANS, _checked_matrix, _listed_matrix, _plan, _typed_matrix, body_matrix

NAMES = ["mean radius", "texture", "area", "smoothness"]
FEATURES = [FeatureSpec(name=n, kind="number", dtype="float64") for n in NAMES]
ROW = [17.99, 10.38, 1001, 0.1184]
LIMITS = Limits()


def _decode(instances: list[Any]) -> tuple[str, Any]:
    """The codec's answer to a body holding these instances, parsed as the route parses it."""
    try:
        return "ok", body_matrix(json.dumps({"instances": instances}).encode(), None, FEATURES, LIMITS)
    except InvalidInput as exc:
        return "refused", exc.message


def _checked(instances: list[Any]) -> tuple[str, Any]:
    try:
        return "ok", _checked_matrix(instances, FEATURES, LIMITS)
    except InvalidInput as exc:
        return "refused", exc.message


def _objects(rows: list[list[Any]], names: list[str] = NAMES) -> list[dict[str, Any]]:
    return [{n: row[NAMES.index(n)] for n in names} for row in rows]


def _typed(instances: list[Any]) -> np.ndarray | None:
    return _typed_matrix(orjson.dumps({"instances": instances}), _plan(FEATURES), LIMITS)


def test_well_formed_bodies_take_the_fast_path_in_every_shape() -> None:
    """Lists, objects in schema order, objects in another order and a mix of the two all
    become the matrix without the row-by-row check; integers are numbers."""
    rows = [ROW, [v * 2 for v in ROW]]
    expected = np.array(rows, dtype=np.float64)
    mixed = [rows[0], _objects(rows)[1]]
    for instances in (rows, _objects(rows), _objects(rows, list(reversed(NAMES))), mixed):
        fast = _typed(instances)
        assert fast is not None and fast.dtype == np.float64
        np.testing.assert_array_equal(fast, expected)


MANY = [ROW] * 2000  # a body past the size below which msgspec reads lists


def _padded(first_rows: bytes, tail: bytes = b"") -> bytes:
    """A large list body whose first rows are given as text, then MANY good rows."""
    body = b'{"instances": [' + first_rows + b", [17.99, 10.38, 1001, 0.1184]" * len(MANY) + b"]" + tail + b"}"
    assert len(body) >= MIN_BYTES
    return body


def test_large_bodies_of_lists_are_read_as_one_buffer_of_doubles_equal_to_the_checks() -> None:
    instances = [ROW, [-0.0, 1e-300, 18446744073709551615, 2**53 + 1], [1.5e10, -7, 0, 3], *MANY]
    body = orjson.dumps({"instances": instances})
    assert len(body) >= MIN_BYTES
    listed = _listed_matrix(body, len(FEATURES), LIMITS)
    assert listed is not None and listed.dtype == np.float64
    np.testing.assert_array_equal(listed, _checked_matrix(instances, FEATURES, LIMITS))
    spaced = _padded(b"[ 1 , 2 , 3 , 4 ] ,\t[5,6,7,8]").replace(b'{"instances": [', b' {\n "instances" : [\n ')
    np.testing.assert_array_equal(_listed_matrix(spaced, 4, LIMITS)[:2], [[1, 2, 3, 4], [5, 6, 7, 8]])
    small = orjson.dumps({"instances": [ROW]})
    assert _listed_matrix(small, 4, LIMITS) is None and _typed([ROW]) is not None  # msgspec's


@pytest.mark.parametrize(
    "body",
    [
        _padded(b"[1, [2], 3, 4]"),  # flattened, it would be four numbers
        _padded(b"[[1], [2], [3], [4]]"),
        _padded(b"[1, 2, 3, 4, 5], [1, 2, 3]"),  # eight values in two rows, not four and four
        _padded(b"[1, 2, 3, 4], 5, 6, 7, 8"),
        _padded(b"[1, 2, 3, 4]", tail=b', "parameters": {}'),
        _padded(b"[1, 2, 3, 4]", tail=b', "instances": [[5, 6, 7, 8]]'),
        _padded(b"[1, 2, 3, true]"),
        _padded(b"[1, 2, 3, null]"),
        _padded(b'[1, 2, 3, "4"]'),
        _padded(b"[1, 2, 3, 123456789012345678901234567890]"),
        _padded(b"[1, 2, 3, 1e999]"),
        _padded(b"[1, 2, 3, 4]") + b"\x00",
        _padded(b"[1, 2, 3, 4]")[:-3],
    ],
)
def test_what_the_buffer_would_misread_is_left_to_the_other_paths(body: bytes) -> None:
    assert _listed_matrix(body, len(FEATURES), LIMITS) is None


def test_the_buffer_path_goes_on_after_a_body_it_could_not_read() -> None:
    """simdjson's parser is reused; one that failed mid-parse is replaced."""
    good = orjson.dumps({"instances": MANY})
    for bad in (_padded(b"[1, 2, 3, 1" + b"0" * 30 + b"]"), _padded(b"[1, 2, 3, 4]")[:-3], _padded(b"[1, 2, 3, null]")):
        assert _listed_matrix(bad, 4, LIMITS) is None
        np.testing.assert_array_equal(_listed_matrix(good, 4, LIMITS), MANY)


_numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**63), 2**64 - 1)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(_numbers | st.lists(_numbers, max_size=2) | st.booleans() | st.none(), min_size=3, max_size=5), min_size=1, max_size=4))
def test_any_large_list_body_read_as_a_buffer_is_what_the_check_gives(rows: list[Any]) -> None:
    """The rows drawn, followed by many good rows: the buffer reads them or leaves them."""
    body = json.dumps({"instances": [*rows, *MANY]}).encode()
    listed = _listed_matrix(body, len(FEATURES), LIMITS)
    if listed is not None:
        np.testing.assert_array_equal(listed, _checked_matrix(json.loads(body)["instances"], FEATURES, LIMITS))
    else:
        assert any(len(r) != len(FEATURES) or not all(type(v) in (int, float) for v in r) for r in rows)


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": []}',
        b'{"instances": [[1, 2, 3, 4]], "parameters": {}}',
        b'{"instances": [[1, 2, 3, NaN]]}',
        b'{"instances": [[1, 2, 3, null]]}',
        b'{"instances": [[1, 2, 3, 1e400]]}',
        b'{"instances": [[1, 2, 3, 4]]} trailing',
        b'[[1, 2, 3, 4]]',
    ],
)
def test_the_fast_path_leaves_to_the_check_what_it_does_not_take(body: bytes) -> None:
    assert _typed_matrix(body, _plan(FEATURES), LIMITS) is None


def test_versions_served_in_turn_keep_their_decoders_however_many_a_replica_holds() -> None:
    """A replica of a many-models app answers dozens of versions in turn; each keeps the
    decoder built on its first request, and past the bound the least recently used goes."""
    schemas = [[FeatureSpec(name=f"m{m}_{n}", kind="number", dtype="float64") for n in NAMES] for m in range(_MOST_PLANS + 1)]
    hot = schemas[:64]
    first = [_plan(s) for s in hot]
    assert all(_plan(s) is p for s, p in zip(hot, first, strict=True))
    for s in schemas[64:]:  # the hot ones are the least recently used now, and one too many arrives
        _plan(s)
    assert _plan(hot[0]) is not first[0]  # the least recently used was let go, and is built again
    assert _plan(schemas[-1]) is _plan(schemas[-1])
    body = orjson.dumps({"instances": [dict(zip([f.name for f in hot[1]], ROW, strict=True))]})
    assert _typed_matrix(body, _plan(hot[1]), LIMITS).tolist() == [[float(v) for v in ROW]]


def test_too_many_instances_are_left_to_the_check_which_refuses_them() -> None:
    body = orjson.dumps({"instances": [ROW] * 3})
    assert _typed_matrix(body, _plan(FEATURES), Limits(max_instances=2)) is None
    with pytest.raises(PayloadTooLarge, match="3 instances exceed the limit of 2"):
        body_matrix(body, None, FEATURES, Limits(max_instances=2))


def test_a_repeated_key_counts_its_last_value_as_plain_json_does() -> None:
    body = b'{"instances": [{"mean radius": 1, "texture": 2, "area": 3, "smoothness": 4, "area": 9}]}'
    assert _typed_matrix(body, _plan(FEATURES), LIMITS) is not None
    np.testing.assert_array_equal(body_matrix(body, None, FEATURES, LIMITS), [[1, 2, 9, 4]])
    np.testing.assert_array_equal(_checked_matrix(json.loads(body)["instances"], FEATURES, LIMITS), [[1, 2, 9, 4]])


def test_a_schema_with_a_category_takes_the_checked_path() -> None:
    features = [*FEATURES, FeatureSpec(name="colour", kind="category", dtype="string")]
    body = orjson.dumps({"instances": [{**_objects([ROW])[0], "colour": "red"}]})
    assert _typed_matrix(body, _plan(features), LIMITS) is None
    assert body_matrix(body, None, features, LIMITS).shape == (1, 5)


@pytest.mark.parametrize(
    ("instances", "message"),
    [
        (_objects([ROW, ROW])[:1] + [{k: v for k, v in _objects([ROW])[0].items() if k != "area"}], "instance 1: missing feature(s) area"),
        ([{**_objects([ROW])[0], "colour": 1.0}], "instance 0: unknown feature(s) colour"),
        ([_objects([ROW])[0], {**_objects([ROW])[0], "colour": 1.0}], "instance 1: unknown feature(s) colour"),
        (_objects([ROW[:2] + ["big", ROW[3]]]), "instance 0, feature 'area': expected a number, got str \"big\""),
        (_objects([ROW[:2] + [True, ROW[3]]]), "instance 0, feature 'area': expected a number, got bool true"),
        (_objects([ROW, ROW[:3] + [[1.0]]]), "instance 1, feature 'smoothness': expected a number, got list [1.0]"),
        ([ROW[:2] + [False, ROW[3]]], "instance 0, feature 'area': expected a number, got bool false"),
        ([ROW, ROW[:3]], "instance 1: expected 4 values in schema order, got 3"),
        ([ROW, _objects([ROW])[0]], None),  # mixed shapes are accepted
        ([ROW, "text"], "instance 1: must be an object keyed by feature name or a list of values"),
    ],
)
def test_the_fast_path_refuses_in_the_checks_words(instances: list[Any], message: str | None) -> None:
    """Alone, and followed by many good rows (past which the fast path looks for true and
    false differently)."""
    good = _objects([ROW])[0] if isinstance(instances[0], dict) else ROW
    for body in (instances, instances + [good] * 100):
        assert (_typed(body) is None) == (message is not None)
        kind, answer = _decode(body)
        assert (kind, answer if kind == "refused" else None) == (("refused", message) if message else ("ok", None))


def test_nan_and_infinity_are_refused_in_every_shape_and_out_of_order_keys_are_not() -> None:
    """NaN and Infinity are literals orjson will not read: Python's json reads them, then
    the check refuses them naming instance and feature, whichever order the keys came in."""
    for literal, shown in ((b"NaN", "nan"), (b"Infinity", "inf"), (b"-Infinity", "-inf")):
        for body in (
            b'{"instances": [[1, 2, 3, 4], [1, 2, ' + literal + b", 4]]}",
            b'{"instances": [{"smoothness": 4, "area": ' + literal + b', "texture": 2, "mean radius": 1}]}',
        ):
            with pytest.raises(InvalidInput, match=rf"feature 'area': {shown} is not a finite number"):
                body_matrix(body, None, FEATURES, LIMITS)
    shuffled = body_matrix(orjson.dumps({"instances": _objects([ROW], NAMES[::-1])}), None, FEATURES, LIMITS)
    np.testing.assert_array_equal(shuffled, [ROW])


def test_a_value_beyond_a_float_is_refused_as_before() -> None:
    big = b"1" + b"0" * 400
    with pytest.raises(InvalidInput, match="feature 'texture': 1000000.* is too large for a float"):
        body_matrix(b'{"instances": [{"mean radius": 1, "texture": ' + big + b', "area": 1, "smoothness": 1}]}', None, FEATURES, LIMITS)


def test_null_is_the_missing_value_on_every_shape() -> None:
    for instances in ([[None, 1, 2, 3]], [{"mean radius": None, "texture": 1, "area": 2, "smoothness": 3}]):
        kind, matrix = _decode(instances)
        assert kind == "ok" and math.isnan(matrix[0, 0]) and list(matrix[0, 1:]) == [1, 2, 3]


_value = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**63), 2**63 - 1)
    | st.none()
    | st.booleans()
    | st.text(max_size=3)
    | st.lists(st.integers(-9, 9), max_size=2)
)
_key = st.sampled_from(NAMES + ["colour"])


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.one_of(
            st.lists(_value, min_size=3, max_size=5),
            st.dictionaries(_key, _value, min_size=3, max_size=5),
            st.permutations(NAMES).flatmap(lambda order: st.tuples(*[_value for _ in order]).map(lambda v, o=order: dict(zip(o, v)))),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_any_instances_get_what_the_row_by_row_check_gives(rows: list[Any]) -> None:
    """Few values and many (past which the fast path looks for true and false differently)."""
    for instances in (rows, [*([ROW] * 40), *rows, *([ROW] * 40)]):
        (kind, answer), (expected_kind, expected) = _decode(instances), _checked(instances)
        assert kind == expected_kind, rows
        if kind == "ok":
            np.testing.assert_array_equal(answer, expected)
        else:
            assert answer == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "expected a number, got bool true"),
        (False, "expected a number, got bool false"),
        ("1.5", 'expected a number, got str "1.5"'),
        ([1.0], "expected a number, got list [1.0]"),
        (10**400, "too large for a float"),
        (None, None),  # the missing value
        (7, None),
    ],
)
@pytest.mark.parametrize("rows", [1, 100, 2000])  # 2,000 rows: past the size the buffer path reads
@pytest.mark.parametrize("form", ["matrix", "per feature"])
def test_v2_json_fp64_tensors_refuse_as_v1_does_at_any_size(value: Any, message: str | None, rows: int, form: str) -> None:
    """The bad value in the last row, feature 'area', after rows of good values."""
    values = [list(ROW) for _ in range(rows)]
    values[-1][2] = value
    if form == "matrix":
        inputs = [{"name": "x", "shape": [rows, len(NAMES)], "datatype": "FP64", "data": values}]
    else:
        inputs = [{"name": n, "shape": [rows], "datatype": "FP64", "data": [r[i] for r in values]} for i, n in enumerate(NAMES)]
    body = json.dumps({"inputs": inputs}).encode()
    if message is None:
        matrix = v2_json.decode(body, None, "m", FEATURES, LIMITS).matrix
        expected = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=np.float64)
        np.testing.assert_array_equal(matrix, expected)
    else:
        with pytest.raises(InvalidInput, match=re.escape(f"instance {rows - 1}, feature 'area': ") + ".*" + re.escape(message)):
            v2_json.decode(body, None, "m", FEATURES, LIMITS)
