"""V2 bodies fuzzed over real loopback HTTP (the app, data plane and holder of
test_fuzz.py): invalid requests by the OpenAPI schema, and valid binary requests with
bytes flipped, cut or inserted, must get a 4xx in the protocol's error shape, never a 5xx."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import numpy as np
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from nonstop.registry import Registry
from serve_app.wire.v2_json import HEADER_LENGTH
from tests.conftest import MODEL
from tests.tools.schemathesis.test_fuzz import ANY_VALUE, EXAMPLES, _fuzz, base_url, registry, schema  # noqa: F401  (shared fixtures)

INFER = f"/v2/models/{MODEL}/infer"


def test_invalid_v2_requests_get_a_4xx_within_the_schema(schema: schemathesis.BaseSchema, base_url: str) -> None:  # noqa: F811
    operation = schema["/v2/models/{model}/infer"]["POST"]
    _fuzz(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE, path_parameters={"model": MODEL}), base_url)


def test_a_hostile_value_gets_the_same_answer_over_v1_and_v2(base_url: str, registry: Registry) -> None:  # noqa: F811
    """One set of input rules: the manifest's sample rows with one value replaced by
    anything JSON can hold (NaN and infinities as literals, integers past float64), as
    V1 instances and as one V2 FP64 tensor, get the same status and the same reason."""
    manifest = registry.manifest(MODEL, 1)
    sample, width = manifest.samples.inputs[0], len(manifest.feature_names)

    def hostile(position: int, value: object) -> list[object]:
        return [*sample[:position], value, *sample[position + 1 :]]

    row = st.builds(hostile, st.integers(0, width - 1), ANY_VALUE) | st.just(sample)

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(rows=st.lists(row, min_size=1, max_size=3))
    def run(rows: list[list[object]]) -> None:
        v1 = httpx.post(f"{base_url}/v1/models/{MODEL}:predict", content=json.dumps({"instances": rows}), timeout=10)
        tensor = {"name": "x", "shape": [len(rows), width], "datatype": "FP64", "data": rows}
        v2 = httpx.post(f"{base_url}{INFER}", content=json.dumps({"inputs": [tensor]}), timeout=10)
        assert v1.status_code in (200, 422), v1.text
        assert (v2.status_code, v2.json().get("error")) == (v1.status_code, v1.json().get("error"))

    run()


def test_any_version_segment_gets_a_4xx_or_its_version(base_url: str) -> None:  # noqa: F811
    """A version in the path is read only when canonical: the served version answers as
    `1`, never as `01`, `+1` or ` 1`, and no segment (thousands of digits included) gets a 5xx."""
    segments = st.text(min_size=1, max_size=40).filter(lambda t: t not in (".", "..")) | st.from_regex(r"[+-]?0*[0-9]{1,30}", fullmatch=True) | st.integers(10, 5000).map(lambda n: "1" * n)

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(version=segments)
    def run(version: str) -> None:
        response = httpx.get(f"{base_url}/v2/models/{MODEL}/versions/{quote(version, safe='')}/ready", timeout=10)
        assert response.status_code in (200, 404, 405), response.text
        assert (response.status_code == 200) == (version == "1")

    run()


def test_corrupted_binary_requests_get_a_4xx_never_a_crash(base_url: str, registry: Registry) -> None:  # noqa: F811
    manifest = registry.manifest(MODEL, 1)
    matrix = np.asarray(manifest.samples.inputs, dtype="<f8")
    header = json.dumps(
        {
            "inputs": [
                {"name": n, "shape": [len(matrix)], "datatype": "FP64", "parameters": {"binary_data_size": len(matrix) * 8}}
                for n in manifest.feature_names
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    valid = header + b"".join(np.ascontiguousarray(matrix[:, i]).tobytes() for i in range(matrix.shape[1]))

    def corrupt(cuts: list[tuple[int, int, bytes]]) -> bytes:
        body = bytearray(valid)
        for position, length, junk in cuts:
            at = position % len(body)
            body[at : at + length] = junk
        return bytes(body)

    edits = st.lists(st.tuples(st.integers(0, len(valid)), st.integers(0, 8), st.binary(max_size=8)), min_size=1, max_size=4)
    lengths = st.sampled_from([str(len(header)), "0", "-1", "x", str(len(valid) + 1)]) | st.integers(0, len(valid)).map(str)

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=edits.map(corrupt) | st.binary(max_size=512), length=lengths)
    def run(body: bytes, length: str) -> None:
        response = httpx.post(f"{base_url}{INFER}", content=body, headers={HEADER_LENGTH: length}, timeout=10)
        assert response.status_code in (200, 404, 413, 422), response.text
        if response.status_code != 200:
            assert set(response.json()) == {"error"}

    run()
    good = httpx.post(f"{base_url}{INFER}", content=valid, headers={HEADER_LENGTH: str(len(header))}, timeout=10)
    assert good.status_code == 200 and good.headers[HEADER_LENGTH]
