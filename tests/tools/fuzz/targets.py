"""Coverage-guided fuzz targets (atheris, libFuzzer) for every decoder of untrusted bytes.

Run one in its own process: `python -m tests.tools.fuzz.targets TARGET CORPUS_DIR [libFuzzer
flags]`. Each target feeds the bytes to the decoder the service uses and accepts only the
typed refusals a client or a registry reader is meant to get; any other exception is a
finding (it would be a 5xx or a crashed load), and so is a native crash, which libFuzzer
catches in this child process and reports with the input that caused it.

Every STATS_EVERY runs, and at least every STATS_SECONDS, the target writes its counts
(runs, accepted, refused) to the file named by FUZZ_STATS, since libFuzzer ends the
process without running Python's exit hooks.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["serve_app", "nonstop"]):
    from nonstop.errors import InvalidInput, PayloadTooLarge, RegistryError, TamperedAliasError, TamperedManifestError
    from nonstop.manifest import DataFingerprint, FeatureSpec, Manifest, SampleSet
    from nonstop.registry import AliasRecord, parse_alias, parse_manifest
    from serve_app.grpc_v2 import oip_v2_pb2, servicer
    from serve_app.wire import json_buffer, v1_arrow, v1_json, v2_json
    from serve_app.wire.limits import Limits

import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError

from tests.tools.fuzz import artifacts

FEATURES = [
    FeatureSpec(name="x", kind="number", dtype="float64"),
    FeatureSpec(name="y", kind="number", dtype="int64"),
    FeatureSpec(name="colour", kind="category", dtype="string"),
]
NUMERIC = [FeatureSpec(name="x", kind="number", dtype="float64"), FeatureSpec(name="y z", kind="number", dtype="int64")]
LIMITS = Limits(max_instances=256, max_string_length=64)
# The fuzzer's inputs are small (runner.py's -max_len): the buffer paths take them all here
json_buffer.MIN_BYTES = 0
STATS_EVERY = 2000
STATS_SECONDS = 2.0
CLIENT_REFUSALS = (InvalidInput, PayloadTooLarge)  # 422 and 413: the only answers to bad bytes
_counts: Counter[str] = Counter()


def decode_json(data: bytes) -> object:
    return v1_json.body_matrix(data, "application/json", FEATURES, LIMITS)


def decode_json_numeric(data: bytes) -> object:
    """An all-numeric schema, whose bodies of lists simdjson reads as one buffer of doubles
    and others msgspec decodes against the schema: whatever those fast paths accept, the value-by-value check of the same body, read by Python's
    json, must accept as the same matrix (a difference is a finding)."""
    matrix = v1_json.body_matrix(data, "application/json", NUMERIC, LIMITS)
    if v1_json._typed_matrix(data, v1_json._plan(NUMERIC), LIMITS) is not None:
        try:
            checked = v1_json._checked_matrix(v1_json.json_instances(data, LIMITS, fast=False), NUMERIC, LIMITS)
        except CLIENT_REFUSALS as exc:
            raise AssertionError(f"a fast path read {matrix!r} from what the check refuses: {exc}") from exc
        if not np.array_equal(matrix, checked):
            raise AssertionError(f"a fast path read {matrix!r}, the check {checked!r}")
    return matrix


def decode_v2_numeric(data: bytes) -> object:
    """JSON-only V2 bodies for an all-numeric schema: whatever the buffer path reads, the
    JSON path must read as the same request (a difference, or a refusal, is a finding)."""
    decoded = v2_json.decode(data, None, "m", NUMERIC, LIMITS)
    buffered = v2_json._buffered(data, "m", NUMERIC, LIMITS)
    if buffered is not None:
        try:
            plain = v2_json._json_decoded(data, len(data), "m", NUMERIC, LIMITS)
        except CLIENT_REFUSALS as exc:
            raise AssertionError(f"the buffer path read {buffered!r} from what the JSON path refuses: {exc}") from exc
        same = (buffered.request_id, buffered.outputs) == (plain.request_id, plain.outputs)
        if not (same and np.array_equal(buffered.matrix, plain.matrix)):
            raise AssertionError(f"the buffer path read {buffered!r}, the JSON path {plain!r}")
    return decoded


def decode_arrow(data: bytes) -> object:
    return v1_arrow.arrow_matrix(data, FEATURES, LIMITS)


def decode_v2(data: bytes) -> object:
    """The first two bytes choose Inference-Header-Content-Length (0: none, a JSON-only body)."""
    length = int.from_bytes(data[:2], "little")
    return v2_json.decode(data[2:], str(length) if length else None, "m", FEATURES, LIMITS)


def decode_grpc(data: bytes) -> object:
    """A ModelInferRequest as Serve's gRPC server hands it over: parsed by protobuf (whose
    DecodeError gRPC answers itself), then decoded by the V2 rules."""
    request = oip_v2_pb2.ModelInferRequest.FromString(data)
    return servicer.decode(request, FEATURES, LIMITS)


def decode_manifest(data: bytes) -> object:
    return parse_manifest("m", 1, data)


def decode_alias(data: bytes) -> object:
    return parse_alias("m", "production", data)


def native_crash(data: bytes) -> object:
    """The harness's own check: a segfault in the child must be reported as a finding."""
    return ctypes.string_at(0) if data.startswith(b"crash") else None


TARGETS: dict[str, tuple[Callable[[bytes], object], tuple[type[Exception], ...]]] = {
    "native-crash": (native_crash, ()),
    "json": (decode_json, CLIENT_REFUSALS),
    "json-numeric": (decode_json_numeric, CLIENT_REFUSALS),
    "arrow": (decode_arrow, CLIENT_REFUSALS),
    "v2": (decode_v2, CLIENT_REFUSALS),
    "v2-numeric": (decode_v2_numeric, CLIENT_REFUSALS),
    "grpc": (decode_grpc, (*CLIENT_REFUSALS, DecodeError)),
    "manifest": (decode_manifest, (RegistryError, TamperedManifestError)),
    "alias": (decode_alias, (RegistryError, TamperedAliasError)),
    # trusted artifacts with mutated arrays, loaded and predicted (tests/tools/fuzz/artifacts.py)
    **{f"artifact-{family}": (functools.partial(artifacts.load_and_predict, family), ()) for family in artifacts.FAMILIES},
}


def seeds(target: str) -> list[bytes]:
    """Valid inputs (and near misses) to start the corpus from."""
    if target == "native-crash":
        return [b"crash"]
    if target.startswith("artifact-"):
        artifacts.valid(target.removeprefix("artifact-"))  # built once, before the clock matters
        return [bytes(range(i, i + 64)) for i in range(0, 192, 24)]
    if target == "json":
        return [
            b'{"instances": [{"x": 1.5, "y": 2, "colour": "red"}, {"x": null, "y": -1, "colour": null}]}',
            b'{"instances": [[1.5, 2, "red"], [0, 1e300, "blue"]]}',
            b'{"instances": [[1, 2, "\\u00e9"]], "extra": 1}',
        ]
    if target == "json-numeric":
        return [
            b'{"instances": [{"x": 1.5, "y z": 2}, [0, -1e300], {"y z": 3, "x": null}]}',
            b'{"instances": [[1.5, 2], [0, 123456789012345678901234567890]]}',
            b'{"instances": [[1.5, 2], [0, -1e300], [-0.0, 18446744073709551615]]}',
            b'{"instances": [[1, [2]], [3, 4]]}',
            b'{"instances": [{"x": 1, "y z": 2, "x": 3}], "extra": 1}',
        ]
    if target == "v2-numeric":
        matrix = {"name": "input-0", "shape": [3, 2], "datatype": "FP64", "data": [[1.5, 2], [0, -1e300], [-0.0, 18446744073709551615]]}
        flat = {**matrix, "data": [1.5, 2, 0, -1e300, -0.0, 7]}
        columns = [{"name": "x", "shape": [2, 1], "datatype": "FP64", "data": [[1], [2]]}, {"name": "y z", "shape": [2], "datatype": "FP64", "data": [3, 4.5]}]
        return [
            json.dumps({"id": "a", "inputs": [matrix], "outputs": [{"name": "predict"}]}).encode(),
            json.dumps({"inputs": [flat], "parameters": {"binary_data_output": False}}).encode(),
            json.dumps({"inputs": columns}).encode(),
            b'{"inputs": [{"name": "i[0]", "shape": [2, 2], "datatype": "FP64", "data": [[1, [2]], [3, 4]]}]}',
        ]
    if target == "arrow":
        plain = pa.table({"x": [1.5, None], "y": pa.array([2, 3], pa.int64()), "colour": ["red", None]})
        encoded = pa.table({"x": [1.5, 2.0], "y": pa.array([2, 3], pa.int8()), "colour": pa.array(["a", "b"]).dictionary_encode()})
        large = pa.table({"x": pa.array([1.0], pa.float32()), "y": pa.array([1], pa.uint64()), "colour": pa.array(["z"], pa.large_string())})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, plain.schema) as writer:
            writer.write_table(plain, max_chunksize=1)
        return [v1_arrow.arrow_stream(t) for t in (plain, encoded, large)] + [sink.getvalue().to_pybytes()]
    if target == "v2":
        as_json = {
            "inputs": [
                {"name": "x", "shape": [2], "datatype": "FP64", "data": [1.5, None]},
                {"name": "y", "shape": [2, 1], "datatype": "INT64", "data": [[2], [3]]},
                {"name": "colour", "shape": [2], "datatype": "BYTES", "data": ["red", None]},
            ]
        }
        binary = {
            "inputs": [
                {"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
                {"name": "y", "shape": [2], "datatype": "INT8", "parameters": {"binary_data_size": 2}},
                {"name": "colour", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 13}},
            ],
            "outputs": [{"name": "predict", "parameters": {"binary_data": True}}],
        }
        header = json.dumps(binary).encode()
        tensors = b"\x00\x00\xc0?\x00\x00\x00@" + b"\x02\x03" + b"\x03\x00\x00\x00red\x02\x00\x00\x00\xc3\xa9"
        return [b"\x00\x00" + json.dumps(as_json).encode(), len(header).to_bytes(2, "little") + header + tensors]
    if target == "grpc":
        typed = oip_v2_pb2.ModelInferRequest(model_name="m", id="seed")
        typed.inputs.add(name="x", datatype="FP64", shape=[2]).contents.fp64_contents.extend([1.5, float("nan")])
        typed.inputs.add(name="y", datatype="INT32", shape=[2, 1]).contents.int_contents.extend([2, 3])
        typed.inputs.add(name="colour", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"red", b"\xc3\xa9"])
        typed.outputs.add(name="predict_proba")
        raw = oip_v2_pb2.ModelInferRequest(model_name="m")
        raw.inputs.add(name="x", datatype="FP32", shape=[2])
        raw.inputs.add(name="y", datatype="INT8", shape=[2])
        raw.inputs.add(name="colour", datatype="BYTES", shape=[2])
        raw.raw_input_contents.extend([b"\x00\x00\xc0?\x00\x00\x00@", b"\x02\x03", b"\x03\x00\x00\x00red\x02\x00\x00\x00\xc3\xa9"])
        return [typed.SerializeToString(), raw.SerializeToString()]
    if target == "manifest":
        manifest = Manifest(
            features=FEATURES,
            label="label",
            classes=[0, 1],
            data=DataFingerprint(rows=2, sha256="0" * 64, source="seed"),
            metrics={"accuracy": 1.0},
            libraries={"scikit-learn": "1.5"},
            samples=SampleSet(inputs=[[1.0, 2, "red"]], outputs=[1]),
            model="m",
            version=1,
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
            artifact="model.skops",
            sha256="0" * 64,
        )
        return [manifest.model_dump_json(indent=2).encode()]
    record = AliasRecord(alias="production", version=2, ledger_seq=3, ledger_hash="0" * 64, signature="hmac-sha256:" + "0" * 64)
    return [record.model_dump_json(indent=2).encode()]


def one_input(target: str) -> Callable[[bytes], None]:
    decode, expected = TARGETS[target]
    stats = os.environ.get("FUZZ_STATS")

    written = [time.monotonic()]

    def run(data: bytes) -> None:
        try:
            outcome = decode(data)
            _counts[outcome if target.startswith("artifact-") else "accepted"] += 1  # type: ignore[index]
        except expected as exc:
            _counts[f"refused:{type(exc).__name__}"] += 1
        _counts["runs"] += 1
        if stats and (_counts["runs"] % STATS_EVERY == 0 or time.monotonic() - written[0] >= STATS_SECONDS):
            Path(stats).write_text(json.dumps(_counts))
            written[0] = time.monotonic()

    return run


def main() -> None:
    target, corpus, *flags = sys.argv[1:]
    Path(corpus).mkdir(parents=True, exist_ok=True)
    for index, seed in enumerate(seeds(target)):
        (Path(corpus) / f"seed-{index}").write_bytes(seed)
    atheris.Setup([sys.argv[0], corpus, *flags], one_input(target))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
