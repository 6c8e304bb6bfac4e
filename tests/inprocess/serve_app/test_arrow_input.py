"""Binary instances (Arrow IPC stream) through the routes in-process: the same answers as
JSON for the same rows, and the same refusals, each naming the problem."""

from __future__ import annotations

import pickle
import struct
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from nonstop.registry import Registry
from serve_app.wire.limits import Limits
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_stream
from tests.conftest import MODEL
from tests.inprocess.serve_app.inprocess import PREDICT, call, train_mixed


def columns(registry: Registry, rows: int = 5) -> dict[str, list[Any]]:
    manifest = registry.manifest("breast_cancer", 1)
    samples = manifest.samples.inputs[:rows]
    return {name: [row[i] for row in samples] for i, name in enumerate(manifest.feature_names)}


def post(
    registry: Registry,
    body: bytes,
    content_type: str = ARROW_STREAM,
    limits: Limits = Limits(),
) -> Any:
    return call(
        registry,
        "POST",
        PREDICT,
        limits=limits,
        content=body,
        headers={"content-type": content_type},
    )


def test_arrow_and_json_get_the_same_predictions_nulls_included(
    served: Registry,
) -> None:
    data = columns(served)
    data["mean_radius"][1] = None
    data["worst_area"][2] = None
    rows = [list(r) for r in zip(*data.values(), strict=True)]
    as_json = call(served, "POST", PREDICT, json={"instances": rows})
    as_arrow = post(served, arrow_stream(pa.table(data)))
    assert as_json.status_code == as_arrow.status_code == 200, as_arrow.text
    assert as_arrow.json() == as_json.json()
    assert as_arrow.headers["x-model-version"] == "1"


def test_column_order_integer_columns_and_content_type_parameters_do_not_matter(
    served: Registry,
) -> None:
    data = columns(served)
    expected = post(served, arrow_stream(pa.table(data))).json()
    shuffled = dict(reversed(list(data.items())))
    shuffled["mean_radius"] = [round(v) for v in shuffled["mean_radius"]]
    rounded = {**data, "mean_radius": [float(round(v)) for v in data["mean_radius"]]}
    assert post(served, arrow_stream(pa.table(shuffled)), f"{ARROW_STREAM.upper()}; charset=binary").json() == (
        post(served, arrow_stream(pa.table(rounded))).json()
    )
    chunked = pa.concat_tables([pa.table(data).slice(0, 2), pa.table(data).slice(2)])
    assert post(served, arrow_stream(chunked)).json() == expected


def _refusal(served: Registry, change: str) -> bytes:
    data: dict[str, Any] = columns(served)
    match change:
        case "garbage":
            return b"\xff\xff\xff\xff" + b"not arrow at all" * 4
        case "no-rows":
            return arrow_stream(pa.table(data).slice(0, 0))
        case "missing":
            del data["mean_radius"]
        case "unknown":
            data["colour"] = ["red"] * 5
        case "text":
            data["mean_radius"] = ["12.5"] * 5
        case "bool":
            data["mean_radius"] = [True] * 5
        case "nan":
            data["mean_radius"][3] = float("nan")
        case "inf":
            data["worst_area"][0] = float("-inf")
    return arrow_stream(pa.table(data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("garbage", "request body is not a readable Arrow IPC stream"),
        ("no-rows", "the Arrow stream has no rows"),
        ("missing", "missing feature column\\(s\\) mean_radius"),
        ("unknown", "unknown column\\(s\\) colour"),
        ("text", "column 'mean_radius': expected numbers, got Arrow type string"),
        ("bool", "column 'mean_radius': expected numbers, got Arrow type bool"),
        ("nan", "instance 3, feature 'mean_radius': nan is not a finite number"),
        ("inf", "instance 0, feature 'worst_area': -inf is not a finite number"),
    ],
)
def test_bad_arrow_input_gets_a_422_naming_the_problem(served: Registry, change: str, message: str) -> None:
    response = post(served, _refusal(served, change))
    assert response.status_code == 422
    assert re.search(message, response.json()["error"]), response.json()


def test_repeated_columns_and_row_limits(served: Registry) -> None:
    data = columns(served)
    table = pa.table(data).append_column("mean_radius", pa.array(data["mean_radius"]))
    repeated = post(served, arrow_stream(table))
    assert repeated.status_code == 422 and "given more than once: mean_radius" in repeated.json()["error"]
    many = post(served, arrow_stream(pa.table(data)), limits=Limits(max_instances=4))
    assert many.status_code == 413 and "5 instances exceed the limit of 4" in many.json()["error"]
    small = Limits(max_body_bytes=1024)
    big = post(served, arrow_stream(pa.table(data)), limits=small)
    assert big.status_code == 413 and "exceeds the limit of 1024" in big.json()["error"]


def test_a_mixed_schema_by_arrow_matches_json_and_checks_strings(registry: Registry, tmp_path: Path) -> None:
    manifest = train_mixed(registry, tmp_path)
    rows = [list(r) for r in manifest.samples.inputs[:4]]
    names = manifest.feature_names
    colour, visits = names.index("colour"), names.index("visits")
    rows[1][colour], rows[2][visits], rows[3][colour] = None, None, "purple"
    data = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    table = pa.table({**data, "colour": pa.array(data["colour"]).dictionary_encode()})
    as_arrow = post(registry, arrow_stream(table))
    assert as_arrow.status_code == 200, as_arrow.text
    assert as_arrow.json() == call(registry, "POST", PREDICT, json={"instances": rows}).json()

    numbers = post(registry, arrow_stream(pa.table({**data, "colour": [1, 2, 3, 4]})))
    assert (
        numbers.status_code == 422
        and "column 'colour': expected strings, got Arrow type int64" in numbers.json()["error"]
    )
    long = post(registry, arrow_stream(pa.table({**data, "colour": ["x" * 300] * 4})))
    assert long.status_code == 422 and "column 'colour': string longer than 256 characters" in long.json()["error"]


class _Marker:
    """Unpickling this touches a file: proof that a reader ran code from the request."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.path.touch, ())


def test_a_pickled_extension_type_in_the_stream_is_refused_never_unpickled(served: Registry, tmp_path: Path) -> None:
    """pyarrow once unpickled `arrow.py_extension_type` metadata on read (CVE-2023-47248);
    extension types are refused outright, not read as their storage type."""
    marker = tmp_path / "ran"
    data = columns(served)
    table = pa.table(data)
    metadata = {
        b"ARROW:extension:name": b"arrow.py_extension_type",
        b"ARROW:extension:metadata": pickle.dumps(_Marker(marker)),
    }
    index = table.schema.get_field_index("mean_radius")
    table = table.cast(table.schema.set(index, table.schema.field(index).with_metadata(metadata)))
    response = post(served, arrow_stream(table))
    assert not marker.exists(), "the request body ran code on the server"
    assert response.status_code == 422, response.text
    assert "column 'mean_radius': extension types are not accepted" in response.json()["error"]


def test_compressed_streams_are_refused_before_anything_is_decoded(served: Registry) -> None:
    """A few kilobytes of zstd can declare gigabytes; the server never inflates them."""
    sink = pa.BufferOutputStream()
    table = pa.table(columns(served))
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    response = post(served, sink.getvalue().to_pybytes())
    assert response.status_code == 422
    assert "compressed Arrow streams are not accepted" in response.json()["error"]


def test_a_billion_declared_rows_get_a_413_from_a_few_hundred_bytes(served: Registry) -> None:
    """Null-typed columns carry no buffers, so a tiny stream can claim any row count."""
    names = served.manifest("breast_cancer", 1).feature_names
    body = arrow_stream(pa.table({name: pa.nulls(10**9) for name in names}))
    assert len(body) < 20_000
    response = post(served, body)
    assert response.status_code == 413 and "1000000000 instances exceed the limit" in response.json()["error"]


# --- hostile streams: each once crashed the replica or got a 500 -------------------------


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A model with a text feature: string columns are where unvalidated offsets bite."""
    folder = tmp_path_factory.mktemp("mixed")
    registry = Registry(str(folder / "registry"))
    train_mixed(registry, folder)
    return registry


def _unchecked(kind: pa.DataType, length: int, buffers: list[pa.Buffer | None], null_count: int = -1) -> pa.Array:
    """An array built from raw buffers, as an attacker writes one: nothing validates it."""
    return pa.Array.from_buffers(kind, length, buffers, null_count=null_count)


def _offsets(*values: int) -> pa.Buffer:
    return pa.py_buffer(struct.pack(f"<{len(values)}i", *values))


def _hostile(registry: Registry, attack: str) -> bytes:
    manifest = registry.manifest(MODEL, 1)
    rows = manifest.samples.inputs[:3]
    data: dict[str, Any] = {name: [row[i] for row in rows] for i, name in enumerate(manifest.feature_names)}
    colour: Any
    match attack:
        case "offsets-past-buffer":
            colour = _unchecked(pa.string(), 3, [None, _offsets(0, 1 << 30, 1 << 31 - 1, 5), pa.py_buffer(b"abcde")])
        case "invalid-utf8-value":
            colour = _unchecked(pa.string(), 3, [None, _offsets(0, 2, 3, 4), pa.py_buffer(b"\xff\xfeab")])
        case "dictionary-offsets-past-buffer":
            words = _unchecked(pa.string(), 2, [None, _offsets(0, 1 << 30, 5), pa.py_buffer(b"abcde")])
            colour = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), words)
        case "dictionary-index-out-of-range":
            indices = pa.array([0, 7, 0], pa.int32())
            colour = pa.DictionaryArray.from_buffers(
                pa.dictionary(pa.int32(), pa.string()), 3, [None, indices.buffers()[1]], pa.array(["red", "blue"])
            )
        case "string-view-dictionary":
            colour = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), pa.array(["red", "blue"], pa.string_view()))
        case "string-view":
            colour = pa.array(["red", "blue", "red"], pa.string_view())
        case "wrong-null-count":
            valid = pa.py_buffer(bytes([0b001]))  # one valid value, two nulls
            colour = _unchecked(pa.string(), 3, [valid, _offsets(0, 3, 3, 3), pa.py_buffer(b"red")], null_count=1)
        case "invalid-utf8-name":
            body = arrow_stream(pa.table({**data, "colour_X": data["colour"]}))
            return body.replace(b"colour_X", b"colour\xff\xfe")
    return arrow_stream(pa.table({**data, "colour": colour}))


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ("offsets-past-buffer", "not a readable Arrow IPC stream: .*[Oo]ffset"),
        ("invalid-utf8-value", "not a readable Arrow IPC stream: .*UTF8"),
        ("dictionary-offsets-past-buffer", "not a readable Arrow IPC stream: .*Dictionary array invalid"),
        ("dictionary-index-out-of-range", "not a readable Arrow IPC stream: .*out of bounds"),
        ("string-view-dictionary", "column 'colour': expected strings, got Arrow type dictionary<values=string_view"),
        ("string-view", "column 'colour': expected strings, got Arrow type string_view"),
        ("wrong-null-count", "not a readable Arrow IPC stream: .*null_count"),
        ("invalid-utf8-name", "not a readable Arrow IPC stream: .*utf-8"),
    ],
)
def test_hostile_streams_get_a_422_and_never_reach_compute(mixed: Registry, attack: str, message: str) -> None:
    """Before full validation, the first of these crashed the process (a segfault in
    pyarrow's UTF-8 kernels) and the others gave 500s or crashes."""
    response = post(mixed, _hostile(mixed, attack))
    assert response.status_code == 422, response.text
    assert re.search(message, response.json()["error"]), response.json()
