"""OIP v2 over gRPC with Triton's own client (tritonclient[grpc], in its own venv: see
triton_grpc_client.py) against the real stack: HAProxy's gRPC frontend, Serve's replicas
answering by RPC name, with no `application` metadata sent. The estimator's own
predictions; malformed requests refused with INVALID_ARGUMENT / RESOURCE_EXHAUSTED naming
the problem and no replica restarts; a swap under gRPC load fails nothing."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from tests.conftest import MODEL, train_into
from harness.rollout import Stack
from tests.integration.client_venvs import client_python
from tests.integration.conftest import promote_between_answers
from tests.integration.test_v2_clients import _expected, _telling_rows
from training import demo

pytestmark = pytest.mark.integration
TRITON_GRPC = "tritonclient[grpc]==2.73.0"  # pins protobuf<7: its own venv
SCRIPT = Path(__file__).with_name("triton_grpc_client.py")


@pytest.fixture(scope="session")
def triton_grpc_python() -> Path:
    return client_python(TRITON_GRPC, "tritonclient.grpc")


def _address(served: Stack) -> str:
    return f"127.0.0.1:{served.cluster.grpc_port}"


def _check(served: Stack, python: Path, names: list[str], rows: list[list[float]]) -> dict[str, Any]:
    given = json.dumps({"names": names, "rows": rows})
    done = subprocess.run(
        [python, SCRIPT, "check", _address(served), MODEL], input=given, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_the_grpc_port_is_haproxys_on_loopback(served: Stack) -> None:
    """The gRPC listener is Serve's HAProxy (not a Serve proxy), bound to 127.0.0.1 only."""
    listeners = [c for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == served.cluster.grpc_port]
    assert [c.laddr.ip for c in listeners] == ["127.0.0.1"], listeners
    assert psutil.Process(listeners[0].pid).name() == "haproxy"


def test_tritonclient_grpc_gets_the_estimators_predictions_and_clear_refusals(served: Stack, triton_grpc_python: Path) -> None:
    version = served.registry.resolve(MODEL, "production")
    manifest = served.registry.manifest(MODEL, version)
    rows = manifest.samples.inputs
    before = served.replicas()
    report = _check(served, triton_grpc_python, manifest.feature_names, rows)
    expected = _expected(served, version, rows)
    as_fp32 = np.asarray(rows, dtype=np.float32).astype(np.float64).tolist()

    assert report["live"] and report["ready"] and report["model_ready"]
    meta = report["metadata"]
    assert meta["name"] == MODEL and meta["versions"] == [str(version)]
    assert [i["name"] for i in meta["inputs"]] == manifest.feature_names
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
    assert report["server"]["name"] == "nonstop"
    for call in ("fp64_matrix", "per_feature", "versioned", "typed_contents"):
        assert report[call]["values"] == expected and report[call]["version"] == str(version), (call, report[call])
    assert report["fp64_matrix"]["id"] == "m64"
    assert report["fp32_matrix"]["values"] == _expected(served, version, as_fp32)
    probabilities = np.asarray(report["probabilities"]["probabilities"])
    assert report["probabilities"]["values"] == expected and probabilities.shape == (len(rows), 2)
    assert np.allclose(probabilities.sum(axis=1), 1.0)

    refusals = {
        "version_not_held": ("StatusCode.NOT_FOUND", "version 999 is not served here"),
        "model_ready_not_held": ("StatusCode.NOT_FOUND", "version 999 is not served here"),
        "unknown_model": ("StatusCode.NOT_FOUND", "unknown model 'no_such_model'"),
        "wrong_shape": ("StatusCode.INVALID_ARGUMENT", f"must be the [N, {len(rows[0])}] tensor"),
        "wrong_datatype": ("StatusCode.INVALID_ARGUMENT", "send a numeric datatype"),
        "unknown_output": ("StatusCode.INVALID_ARGUMENT", "has no output(s) nope"),
        "raw_wrong_length": ("StatusCode.INVALID_ARGUMENT", f"values take {len(rows) * len(rows[0]) * 8}"),
        "too_many_rows": ("StatusCode.RESOURCE_EXHAUSTED", "instances exceed the limit of 10000"),
        "oversized_message": ("StatusCode.RESOURCE_EXHAUSTED", "larger than max"),
    }
    for call, (status, phrase) in refusals.items():
        assert report[call].get("status") == status and phrase in report[call]["message"], (call, report[call])
    assert served.replicas() == before


def test_a_swap_under_grpc_load_fails_nothing_and_each_answer_is_one_versions(
    served: Stack, triton_grpc_python: Path, tmp_path: Path
) -> None:
    old = served.registry.resolve(MODEL, "production")
    day = tmp_path / "day.csv"
    demo.day_frame(11).to_csv(day, index=False)
    new = train_into(served.registry, day, promote=False).manifest.version
    names = served.registry.manifest(MODEL, old).feature_names
    rows = _telling_rows(served, old, new)
    expected = {str(old): _expected(served, old, rows), str(new): _expected(served, new, rows)}
    stop = tmp_path / "stop"
    answers: list[dict[str, Any]] = []
    driver = subprocess.Popen(
        [triton_grpc_python, SCRIPT, "load", _address(served), MODEL, str(stop)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert driver.stdin is not None and driver.stdout is not None
    driver.stdin.write(json.dumps({"names": names, "rows": rows}))
    driver.stdin.close()
    reader = threading.Thread(target=lambda: answers.extend(json.loads(line) for line in driver.stdout), daemon=True)
    reader.start()
    try:
        promote_between_answers(served, answers, new)
    finally:
        stop.touch()
        try:
            driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            driver.kill()  # the driver this test started, by its own handle
            driver.wait(timeout=10)
        reader.join(timeout=10)
    failures = [a["failure"] for a in answers if "failure" in a]
    assert failures == [], failures[:5]
    assert {a["version"] for a in answers} == {str(old), str(new)}
    wrong = [a for a in answers if a["values"] != expected[a["version"]]]
    assert wrong == [], f"{len(wrong)} of {len(answers)} answers are not their version's predictions"
