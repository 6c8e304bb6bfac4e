"""The FastAPI routes in-process (httpx over ASGI), on a real registry and model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from nonstop import errors
from nonstop.formats.skops_sklearn import SKOPS, TRUSTED_CALLABLES, TRUSTED_TYPES
from nonstop.loading import TrustPolicy, load_version
from nonstop.registry import Registry
from nonstop.schema import rows_to_matrix
from serve_app.edge import ERROR_CODES, http_status
from serve_app.wire.limits import Limits
from tests.conftest import MODEL
from tests.inprocess.serve_app.inprocess import PREDICT, call, train_mixed


def test_predict_matches_the_registry_model_in_both_instance_shapes(served: Registry) -> None:
    manifest = served.manifest(MODEL, 1)
    rows = manifest.samples.inputs[:4]
    names = manifest.feature_names
    expected = load_version(served, MODEL, 1, TrustPolicy()).predict(rows_to_matrix(rows, manifest.features))
    as_lists = call(served, "POST", PREDICT, json={"instances": rows})
    as_objects = call(served, "POST", PREDICT, json={"instances": [dict(zip(names, r, strict=True)) for r in rows]})
    for response in (as_lists, as_objects):
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": expected, "model_version": "1"}
        assert (response.headers["x-model-version"], response.headers["x-model-name"]) == ("1", MODEL)


def test_metadata_describes_the_served_version(served: Registry) -> None:
    body = call(served, "GET", f"/v1/models/{MODEL}").json()
    assert body["ready"] is True and body["version"] == "1"
    assert [f["name"] for f in body["features"]] == served.manifest(MODEL, 1).feature_names
    assert body["last_error"] is None


def _instance(registry: Registry, **changes: Any) -> dict[str, Any]:
    manifest = registry.manifest(MODEL, 1)
    instance = dict(zip(manifest.feature_names, manifest.samples.inputs[0], strict=True))
    instance.update(changes)
    return instance


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 422, "not valid JSON"),
        (b"[1, 2]", 422, '"instances" list'),
        (b'{"instances": []}', 422, '"instances" is empty'),
        (b'{"instances": {}}', 422, '"instances" must be a list'),
        (b'{"instances": [[1, 2]], "extra": 1}', 422, "unknown request field"),
        (b'{"instances": [[1, 2]]}', 422, "expected 30 values"),
        (b'{"instances": ["text"]}', 422, "instance 0: must be an object"),
        ("missing", 422, "instance 0: missing feature\\(s\\) mean_radius"),
        ("unknown", 422, "instance 0: unknown feature\\(s\\) colour"),
        ("string", 422, "feature 'mean_radius': expected a number, got str"),
        ("bool", 422, "feature 'mean_radius': expected a number, got bool"),
        ("nan", 422, "feature 'mean_radius': nan is not a finite number"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_problem(served: Registry, body: Any, status: int, message: str) -> None:
    named = {
        "missing": {k: v for k, v in _instance(served).items() if k != "mean_radius"},
        "unknown": _instance(served, colour=1.0),
        "string": _instance(served, mean_radius="12.5"),
        "bool": _instance(served, mean_radius=True),
        "nan": _instance(served, mean_radius=float("nan")),
    }
    if isinstance(body, str):
        body = json.dumps({"instances": [named[body]]}).encode()
    response = call(served, "POST", PREDICT, content=body)
    assert response.status_code == status
    assert re.search(message, response.json()["error"]), response.json()


def test_routing_refusals_use_the_same_error_shape(served: Registry) -> None:
    unknown = call(served, "GET", "/v1/models/a/b")
    assert unknown.status_code == 404 and unknown.json() == {"error": "Not Found"}
    wrong = call(served, "DELETE", "/v1/models")
    assert wrong.status_code == 405 and wrong.json() == {"error": "Method Not Allowed"}
    assert wrong.headers["allow"] == "GET"


def test_null_is_a_missing_value_imputed_as_in_training(served: Registry) -> None:
    response = call(served, "POST", PREDICT, json={"instances": [_instance(served, mean_radius=None)]})
    assert response.status_code == 200
    assert response.json()["predictions"][0] in (0, 1)


def test_unknown_model_is_404_and_limits_are_413(served: Registry) -> None:
    assert call(served, "POST", "/v1/models/other:predict", json={"instances": [[1]]}).status_code == 404
    assert call(served, "GET", "/v1/models/other").status_code == 404
    small = Limits(max_body_bytes=1024, max_instances=2)
    big = call(served, "POST", PREDICT, limits=small, content=b'{"instances": [' + b"1," * 1000 + b"1]}")
    assert big.status_code == 413 and "exceeds the limit of 1024" in big.json()["error"]
    row = served.manifest(MODEL, 1).samples.inputs[0]
    many = call(served, "POST", PREDICT, limits=Limits(max_instances=2), json={"instances": [row] * 3})
    assert many.status_code == 413 and "3 instances exceed the limit of 2" in many.json()["error"]


def test_a_schema_with_text_and_nullable_columns_trains_loads_and_serves(registry: Registry, tmp_path: Path) -> None:
    """pandas' NA (nullable dtypes) in a mixed number-and-text schema; unseen and missing
    categories at serving time are answered, not a 5xx."""
    manifest = train_mixed(registry, tmp_path)
    assert {f.name: f.kind for f in manifest.features}["colour"] == "category"
    assert SKOPS.types_in(registry.read_artifact(MODEL, 1)) <= TRUSTED_TYPES | TRUSTED_CALLABLES

    base = dict(zip(manifest.feature_names, manifest.samples.inputs[0], strict=True))
    variants = [base, {**base, "colour": "purple"}, {**base, "colour": None}, {**base, "visits": None, "mean_radius": None}]
    response = call(registry, "POST", PREDICT, json={"instances": variants})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 4 and set(response.json()["predictions"]) <= {0, 1}
    wrong = call(registry, "POST", PREDICT, json={"instances": [{**base, "colour": 3}]})
    assert wrong.status_code == 422 and "feature 'colour': expected a string, got int" in wrong.json()["error"]


def test_one_table_maps_errors_to_statuses_and_errors_carry_none() -> None:
    """Subclasses take their family's status; anything unlisted is a 500."""
    assert not any(hasattr(t, "status_code") for t in vars(errors).values() if isinstance(t, type))
    assert http_status(errors.ArtifactIntegrityError(MODEL, 1, "x")) == ERROR_CODES[errors.ModelLoadError].http == 503
    assert http_status(errors.TamperedAliasError("x")) == 500
    assert http_status(errors.UnknownModel("x")) == 404


def test_an_empty_registry_answers_503_naming_why_and_metadata_says_not_ready(registry: Registry) -> None:
    predict = call(registry, "POST", PREDICT, json={"instances": [[1.0] * 30]})
    assert predict.status_code == 503
    assert predict.json() == {
        "error": f"model {MODEL!r} has no version loaded yet: model {MODEL!r} has no alias 'production' to follow (yet)"
    }
    metadata = call(registry, "GET", f"/v1/models/{MODEL}").json()
    assert (metadata["ready"], metadata["version"], metadata["target"]) == (False, None, f"{MODEL}@production")
    assert metadata["last_error"]["reason"] == "alias_not_found"
    assert call(registry, "GET", "/v1/models").json() == {"models": [MODEL]}

