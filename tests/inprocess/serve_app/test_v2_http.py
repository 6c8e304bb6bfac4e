"""The V2 routes in-process (httpx over ASGI), and tritonclient over real loopback HTTP,
on a real registry and model: the same predictions as the estimator, V2's shapes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from nonstop.loading import TrustPolicy, load_version
from nonstop.registry import Registry
from nonstop.schema import rows_to_matrix
from serve_app.config import ModelTarget
from serve_app.replica.dataplane import DataPlane
from serve_app.replica.holder import ModelHolder
from serve_app.rest.api import create_api
from serve_app.wire.limits import Limits
from tests.conftest import MODEL
from tests.loopback import serve_in_thread
from tests.inprocess.serve_app.inprocess import call, train_mixed

INFER = f"/v2/models/{MODEL}/infer"


def _expected(registry: Registry, rows: list[list[Any]]) -> list[Any]:
    manifest = registry.manifest(MODEL, 1)
    return load_version(registry, MODEL, 1, TrustPolicy()).predict(rows_to_matrix(rows, manifest.features))


def test_infer_matches_the_estimator_per_feature_and_as_one_matrix(served: Registry) -> None:
    manifest = served.manifest(MODEL, 1)
    rows = manifest.samples.inputs
    per_feature = {
        "id": "r1",
        "inputs": [
            {"name": n, "shape": [len(rows)], "datatype": "FP64", "data": [r[i] for r in rows]}
            for i, n in enumerate(manifest.feature_names)
        ],
    }
    matrix = {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64", "data": rows}]}
    expected = {
        "model_name": MODEL,
        "model_version": "1",
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [len(rows)], "data": _expected(served, rows)}],
    }
    for body, path in [(per_feature, INFER), (matrix, f"/v2/models/{MODEL}/versions/1/infer")]:
        response = call(served, "POST", path, json=body)
        assert response.status_code == 200, response.text
        assert response.json() == expected | ({"id": "r1"} if "id" in body else {})
        assert response.headers["x-model-version"] == "1"


def test_health_metadata_and_readiness_in_the_protocols_shapes(served: Registry) -> None:
    assert call(served, "GET", "/").json() == {"status": "alive"}
    assert call(served, "GET", "/v2/health/live").json() == {"live": True}
    assert call(served, "GET", "/v2/health/ready").json() == {"ready": True}
    assert call(served, "GET", "/v2").json()["extensions"] == ["binary_tensor_data"]
    meta = call(served, "GET", f"/v2/models/{MODEL}").json()
    assert meta["versions"] == ["1"]
    assert [i["name"] for i in meta["inputs"]] == served.manifest(MODEL, 1).feature_names
    assert {(i["datatype"], tuple(i["shape"])) for i in meta["inputs"]} == {("FP64", (-1,))}
    assert meta["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]},
    ]
    assert call(served, "GET", f"/v2/models/{MODEL}/versions/1").json() == meta
    assert call(served, "GET", f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    assert call(served, "GET", f"/v2/models/{MODEL}/versions/1/ready").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/v2/models/{MODEL}/versions/2"),
        ("GET", f"/v2/models/{MODEL}/versions/2/ready"),
        ("POST", f"/v2/models/{MODEL}/versions/2/infer"),
        ("GET", f"/v2/models/{MODEL}/versions/latest/ready"),
        ("GET", f"/v2/models/{MODEL}/versions/²"),
        ("GET", "/v2/models/other/ready"),
        ("POST", "/v2/models/other/infer"),
    ],
)
def test_a_version_or_model_not_served_here_is_a_clear_404(served: Registry, method: str, path: str) -> None:
    row = served.manifest(MODEL, 1).samples.inputs[0]
    body = {"inputs": [{"name": "x", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}
    response = call(served, method, path, json=body if method == "POST" else None)
    assert response.status_code == 404
    message = response.json()["error"]
    assert any(m in message for m in ("version 2 is not served here (serving: 1)", "version 'latest' is not served", "version '²' is not served", "unknown model 'other'"))


def test_bad_requests_are_4xx_in_the_protocols_error_shape(served: Registry) -> None:
    row = served.manifest(MODEL, 1).samples.inputs[0]
    ask = {"inputs": [{"name": "x", "shape": [1, len(row)], "datatype": "FP64", "data": row}], "outputs": [{"name": "nope"}]}
    unknown_output = call(served, "POST", INFER, json=ask)
    assert unknown_output.status_code == 422
    assert unknown_output.json()["error"] == f"model '{MODEL}' v1 has no output(s) nope; it has: predict, predict_proba"
    bad = call(served, "POST", INFER, content=b'{"inputs": 3}')
    assert bad.status_code == 422 and set(bad.json()) == {"error"}
    big = call(served, "POST", INFER, limits=Limits(max_body_bytes=1024), content=b" " * 2048)
    assert big.status_code == 413 and "exceeds the limit of 1024" in big.json()["error"]


def test_text_features_are_bytes_inputs(registry: Registry, tmp_path: Any) -> None:
    manifest = train_mixed(registry, tmp_path)
    meta = call(registry, "GET", f"/v2/models/{MODEL}").json()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["colour"] == "BYTES"
    rows = manifest.samples.inputs[:3]
    body = {
        "inputs": [
            {"name": f.name, "shape": [3], "datatype": "BYTES" if f.kind == "category" else "FP64", "data": [r[i] for r in rows]}
            for i, f in enumerate(manifest.features)
        ]
    }
    response = call(registry, "POST", INFER, json=body)
    assert response.status_code == 200, response.text
    v1 = call(registry, "POST", f"/v1/models/{MODEL}:predict", json={"instances": rows})
    assert response.json()["outputs"][0]["data"] == v1.json()["predictions"]


@pytest.fixture
def triton_url(served: Registry) -> Iterator[str]:
    holder = ModelHolder(served, TrustPolicy())
    asyncio.run(holder.configure(ModelTarget(model=MODEL, version=1)))
    with serve_in_thread(create_api(DataPlane(holder), Limits())) as url:
        yield url.removeprefix("http://")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_talks_to_the_app_over_loopback(served: Registry, triton_url: str, binary: bool) -> None:
    manifest = served.manifest(MODEL, 1)
    rows = manifest.samples.inputs
    client = triton.InferenceServerClient(triton_url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert [i["name"] for i in meta["inputs"]] == manifest.feature_names
    inputs = []
    for i, name in enumerate(manifest.feature_names):
        tensor = triton.InferInput(name, [len(rows)], "FP64")
        tensor.set_data_from_numpy(np.array([r[i] for r in rows], dtype=np.float64), binary_data=binary)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput("predict", binary_data=binary)]
    result = client.infer(MODEL, inputs, outputs=outputs, model_version="1", request_id="t-1")
    assert result.as_numpy("predict").tolist() == _expected(served, rows)
    response = result.get_response()
    assert response["model_version"] == "1" and response["id"] == "t-1"
    with pytest.raises(InferenceServerException, match="not served here"):
        client.infer(MODEL, inputs, model_version="9")
    client.close()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_class_probabilities_when_asked_for_from_the_same_version(served: Registry, binary: bool) -> None:
    rows = served.manifest(MODEL, 1).samples.inputs[:3]
    expected = load_version(served, MODEL, 1, TrustPolicy()).predict_proba(rows_to_matrix(rows, served.manifest(MODEL, 1).features))
    body = {
        "inputs": [{"name": "x", "shape": [3, len(rows[0])], "datatype": "FP64", "data": rows}],
        "outputs": [{"name": "predict_proba", "parameters": {"binary_data": binary}}, {"name": "predict"}],
    }
    response = call(served, "POST", INFER, json=body)
    assert response.status_code == 200, response.text
    length = int(response.headers.get("inference-header-content-length", len(response.content)))
    proba, predict = json.loads(response.content[:length])["outputs"]
    assert (proba["name"], proba["datatype"], proba["shape"]) == ("predict_proba", "FP64", [3, 2])
    values = np.frombuffer(response.content[length:], "<f8").tolist() if binary else proba["data"]
    assert np.allclose(np.reshape(values, (3, 2)), expected) and predict["data"] == _expected(served, rows)


def test_the_binary_response_body_is_what_the_extension_says(served: Registry) -> None:
    rows = served.manifest(MODEL, 1).samples.inputs[:2]
    matrix = np.asarray(rows, dtype="<f8")
    header = json.dumps(
        {
            "inputs": [{"name": "x", "shape": list(matrix.shape), "datatype": "FP64", "parameters": {"binary_data_size": matrix.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    response = call(
        served, "POST", INFER, content=header + matrix.tobytes(), headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    described = json.loads(response.content[:length])["outputs"][0]
    assert described["parameters"] == {"binary_data_size": 16}
    assert np.frombuffer(response.content[length:], "<i8").tolist() == _expected(served, rows)
