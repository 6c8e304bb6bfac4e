"""Schemathesis against the app's OpenAPI schema, over real HTTP on loopback.

The real FastAPI app, served by uvicorn on 127.0.0.1 with a real data plane and model
holder on a real registry (no Ray): generated requests, valid and invalid by the schema,
must never get a 5xx, and every answer must conform to the schema (status, content type,
headers, body). Hypothesis runs derandomized, so a run is repeatable and bounded.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from nonstop.loading import TrustPolicy
from nonstop.registry import Registry
from serve_app.config import ModelTarget
from serve_app.replica.dataplane import DataPlane
from serve_app.replica.holder import ModelHolder
from serve_app.rest.api import create_api
from serve_app.wire.limits import Limits
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_stream
from tests.conftest import MODEL
from tests.loopback import serve_in_thread

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
EXAMPLES = 120


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, trained_once: Path) -> Registry:
    root = tmp_path_factory.mktemp("fuzz") / "registry"
    shutil.copytree(trained_once, root)
    return Registry(str(root))


@pytest.fixture(scope="module")
def base_url(registry: Registry) -> Iterator[str]:
    """uvicorn in a thread on a free loopback port, stopped when the module is done."""
    holder = ModelHolder(registry, TrustPolicy())
    asyncio.run(holder.configure(ModelTarget(model=MODEL, version=1)))  # pinned: no poller to outlive the loop
    api = create_api(DataPlane(holder), Limits(max_instances=64))
    with serve_in_thread(api) as url:
        yield url


@pytest.fixture(scope="module")
def schema(base_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=schemathesis.Config())


def _fuzz(strategy: object, base_url: str) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=10)

    run()


@pytest.mark.parametrize("model", [MODEL, None], ids=["served-model", "any-model"])
def test_every_operation_answers_valid_requests_within_its_schema(
    schema: schemathesis.BaseSchema, base_url: str, model: str | None
) -> None:
    for result in schema.get_all_operations():
        operation = result.ok()
        pinned = {"model": model} if model and "{model}" in operation.path else None
        _fuzz(operation.as_strategy(generation_mode=GenerationMode.POSITIVE, path_parameters=pinned), base_url)


def test_invalid_predict_bodies_get_a_4xx_within_the_schema(schema: schemathesis.BaseSchema, base_url: str) -> None:
    """The body is the one part of any operation a schema can make invalid (a path
    segment is any string); with the served model's name, it reaches the data plane."""
    operation = schema["/v1/models/{model}:predict"]["POST"]
    _fuzz(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE, path_parameters={"model": MODEL}), base_url)


ANY_VALUE = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()  # NaN and infinities included: json.dumps writes them as literals
    | st.text(max_size=300)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=1)
)


def test_one_hostile_value_in_a_good_row_never_gets_a_5xx(base_url: str, registry: Registry) -> None:
    """The schema cannot say the model wants 30 numbers, so generated bodies rarely get
    past the width check. These rows are the manifest's samples with one value replaced
    by anything JSON can hold, so each reaches the per-value checks and the estimator."""
    manifest = registry.manifest(MODEL, 1)
    names, sample = manifest.feature_names, manifest.samples.inputs[0]

    def hostile(position: int, value: object, as_object: bool) -> object:
        row = [*sample[:position], value, *sample[position + 1 :]]
        return dict(zip(names, row, strict=True)) if as_object else row

    instance = st.builds(hostile, st.integers(0, len(names) - 1), ANY_VALUE, st.booleans())

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(instances=st.lists(instance, min_size=1, max_size=3))
    def run(instances: list[object]) -> None:
        response = httpx.post(f"{base_url}/v1/models/{MODEL}:predict", content=json.dumps({"instances": instances}), timeout=10)
        assert response.status_code in (200, 422), response.text
        assert set(response.json()) == ({"predictions", "model_version"} if response.status_code == 200 else {"error"})

    run()


def test_a_good_prediction_conforms_too(schema: schemathesis.BaseSchema, base_url: str, registry: Registry) -> None:
    """Generated bodies almost never hold 30 valid features; this one does, for the 200."""
    operation = schema["/v1/models/{model}:predict"]["POST"]
    case = operation.Case(
        path_parameters={"model": MODEL},
        body={"instances": registry.manifest(MODEL, 1).samples.inputs},
        media_type="application/json",
    )
    assert case.call_and_validate(base_url=base_url, checks=CHECKS).status_code == 200


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("shape", ["object", "list"])
def test_nan_and_infinity_literals_are_refused_naming_the_feature(
    base_url: str, registry: Registry, literal: str, shape: str
) -> None:
    """Python's json reads these non-standard literals; the API refuses them, as documented."""
    manifest = registry.manifest(MODEL, 1)
    row = [json.dumps(v) for v in manifest.samples.inputs[0]]
    row[2] = literal
    names = manifest.feature_names
    instance = "{" + ", ".join(f'"{n}": {v}' for n, v in zip(names, row, strict=True)) + "}" if shape == "object" else f"[{', '.join(row)}]"
    response = httpx.post(f"{base_url}/v1/models/{MODEL}:predict", content=f'{{"instances": [{instance}]}}', timeout=10)
    assert response.status_code == 422
    assert f"instance 0, feature {names[2]!r}: {float(literal)} is not a finite number" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 100_000, "request body is nested too deeply"),
        (b'{"instances": [[' + b"9" * 5000 + b"]]}", "request body is not valid JSON: Exceeds the limit"),
    ],
    ids=["deep-nesting", "5000-digit-integer"],
)
def test_json_that_breaks_the_parser_is_a_422_not_a_crash(base_url: str, body: bytes, message: str) -> None:
    response = httpx.post(f"{base_url}/v1/models/{MODEL}:predict", content=body, timeout=10)
    assert response.status_code == 422 and message in response.json()["error"], response.text


def test_corrupted_arrow_streams_get_a_4xx_never_a_crash(base_url: str, registry: Registry) -> None:
    """A valid stream of the served features, then bytes flipped, cut or inserted where
    Hypothesis chooses: the decoder must refuse cleanly, and the server stay up."""
    manifest = registry.manifest(MODEL, 1)
    table = pa.table({n: [row[i] for row in manifest.samples.inputs] for i, n in enumerate(manifest.feature_names)})
    valid = arrow_stream(table)

    def corrupt(cuts: list[tuple[int, int, bytes]]) -> bytes:
        body = bytearray(valid)
        for position, length, junk in cuts:
            at = position % len(body)
            body[at : at + length] = junk
        return bytes(body)

    edits = st.lists(st.tuples(st.integers(0, len(valid)), st.integers(0, 8), st.binary(max_size=8)), min_size=1, max_size=4)

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=edits.map(corrupt) | st.binary(max_size=512))
    def run(body: bytes) -> None:
        response = httpx.post(
            f"{base_url}/v1/models/{MODEL}:predict", content=body, headers={"content-type": ARROW_STREAM}, timeout=10
        )
        assert response.status_code in (200, 413, 422), response.text
        assert set(response.json()) == ({"predictions", "model_version"} if response.status_code == 200 else {"error"})

    run()
    assert httpx.post(f"{base_url}/v1/models/{MODEL}:predict", content=valid, headers={"content-type": ARROW_STREAM}).status_code == 200
