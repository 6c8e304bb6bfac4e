"""Clients nobody here wrote, against the real stack (HAProxy, Serve, replicas):
tritonclient[http] and KServe's InferenceRESTClient get the estimator's own predictions,
and a swap under tritonclient load fails nothing and answers each request whole from
one version."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio

from nonstop.loading import TrustPolicy, load_version
from nonstop.schema import rows_to_matrix
from tests.conftest import MODEL, train_into
from harness.rollout import Stack
from tests.integration.client_venvs import client_python
from tests.integration.conftest import promote_between_answers
from training import demo

pytestmark = pytest.mark.integration
KSERVE = "kserve==0.21.0"  # pins pandas<3, protobuf<7, psutil<6: its own venv, see kserve_client.py
KSERVE_SCRIPT = Path(__file__).with_name("kserve_client.py")
SWAP_CLIENTS = 4


def _expected(served: Stack, version: int, rows: list[list[Any]]) -> list[Any]:
    manifest = served.registry.manifest(MODEL, version)
    return load_version(served.registry, MODEL, version, TrustPolicy()).predict(rows_to_matrix(rows, manifest.features))


def _inputs(names: list[str], rows: list[list[Any]], binary: bool, module: Any = triton) -> list[Any]:
    matrix = np.asarray(rows, dtype=np.float64)
    inputs = []
    for i, name in enumerate(names):
        tensor = module.InferInput(name, [len(rows)], "FP64")
        tensor.set_data_from_numpy(np.ascontiguousarray(matrix[:, i]), binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_gets_the_estimators_predictions(served: Stack, binary: bool) -> None:
    version = served.registry.resolve(MODEL, "production")
    manifest = served.registry.manifest(MODEL, version)
    rows = manifest.samples.inputs
    client = triton.InferenceServerClient(served.cluster.http_url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
        meta = client.get_model_metadata(MODEL)
        assert meta["versions"] == [str(version)] and [i["name"] for i in meta["inputs"]] == manifest.feature_names
        outputs = [triton.InferRequestedOutput("predict", binary_data=binary)]
        result = client.infer(MODEL, _inputs(manifest.feature_names, rows, binary), outputs=outputs)
        assert result.as_numpy("predict").tolist() == _expected(served, version, rows)
        assert result.get_response()["model_version"] == str(version)
    finally:
        client.close()


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    return client_python(KSERVE, "kserve")


def test_kserve_client_v1_and_v2_gets_the_estimators_predictions(served: Stack, kserve_python: Path) -> None:
    version = served.registry.resolve(MODEL, "production")
    manifest = served.registry.manifest(MODEL, version)
    rows = manifest.samples.inputs
    given = json.dumps({"names": manifest.feature_names, "rows": rows})
    done = subprocess.run(
        [kserve_python, KSERVE_SCRIPT, served.cluster.http_url, MODEL], input=given, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    expected = _expected(served, version, rows)
    assert report["v1_live"] and report["v1_model_ready"] and report["v1_predictions"] == expected
    assert report["v2_live"] and report["v2_ready"] and report["v2_model_ready"]
    for body in ("v2_json", "v2_binary"):
        assert report[body]["predictions"] == expected and report[body]["version"] == str(version), report[body]


def _telling_rows(served: Stack, old: int, new: int) -> list[list[float]]:
    """Rows the two versions answer differently, so each answer shows which one made it."""
    manifest = served.registry.manifest(MODEL, old)
    base = np.asarray(manifest.samples.inputs, dtype=np.float64)
    rng = np.random.default_rng(0)
    candidates = (np.repeat(base, 400, axis=0) * rng.uniform(0.6, 1.4, size=(len(base) * 400, base.shape[1]))).tolist()
    before, after = _expected(served, old, candidates), _expected(served, new, candidates)
    telling = [row for row, a, b in zip(candidates, before, after, strict=True) if a != b][:20]
    assert telling, "the two versions answer every candidate row alike: the check could not tell them apart"
    return telling + candidates[:20]


def test_a_swap_under_tritonclient_load_fails_nothing_and_each_answer_is_one_versions(
    served: Stack, tmp_path: Path
) -> None:
    old = served.registry.resolve(MODEL, "production")
    day = tmp_path / "day.csv"
    demo.day_frame(9).to_csv(day, index=False)
    new = train_into(served.registry, day, promote=False).manifest.version
    names = served.registry.manifest(MODEL, old).feature_names
    rows = _telling_rows(served, old, new)
    expected = {str(old): _expected(served, old, rows), str(new): _expected(served, new, rows)}
    answers: list[tuple[str, list[Any]]] = []
    failures: list[str] = []
    stop = threading.Event()

    async def client(binary: bool) -> None:
        triton_client = triton_aio.InferenceServerClient(served.cluster.http_url.removeprefix("http://"))
        outputs = [triton_aio.InferRequestedOutput("predict", binary_data=binary)]
        try:
            while not stop.is_set():
                try:
                    result = await triton_client.infer(MODEL, _inputs(names, rows, binary, triton_aio), outputs=outputs)
                except Exception as exc:  # every failure is the test's finding, whatever its type
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                answers.append((result.get_response()["model_version"], result.as_numpy("predict").tolist()))
        finally:
            await triton_client.close()

    async def load() -> None:
        await asyncio.gather(*(client(binary=i % 2 == 1) for i in range(SWAP_CLIENTS)))

    driver = threading.Thread(target=asyncio.run, args=(load(),), daemon=True)
    driver.start()
    try:
        promote_between_answers(served, answers, new)
    finally:
        stop.set()
        driver.join(timeout=60)
    assert failures == [], failures[:5]
    assert {version for version, _ in answers} == {str(old), str(new)}
    wrong = [(version, got) for version, got in answers if got != expected[version]]
    assert wrong == [], f"{len(wrong)} of {len(answers)} answers are not their version's predictions"
