"""Each example script publishes a version the running app swaps to under load, and the
app's answers equal the estimator's own, over JSON and Arrow.

The app is re-targeted to the example's model, then the script runs again (a new seed,
as a retraining would) while a load driver keeps asking: every request must succeed.
The test leaves the app on the suite's own model."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from nonstop.config import TRUSTED_TYPES_ENV
from nonstop.formats import format_named
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_stream
from tests.conftest import MODEL
from harness.loadgen import BackgroundLoad
from harness.rollout import Stack, wait_until
from tests.integration.conftest import LIGHTGBM_TYPES, LOAD_RATE, swap_bound

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ROWS = 25


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _instances(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as a client sends them: JSON null for a missing value."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows.astype(object).to_dict("records")]


def _serving(served: Stack, model: str, version: int | None) -> bool:
    return served.serving_everywhere(version or 0, model=model)


@pytest.mark.parametrize("name", ["diabetes_regression", "lightgbm_categorical", "column_transformer"])
def test_an_example_publishes_a_version_the_app_swaps_to_under_load(
    served: Stack, client: httpx.Client, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TRUSTED_TYPES_ENV, ",".join(LIGHTGBM_TYPES))  # the setting the suite's cluster was started with
    example = _module(name)
    model = f"example-{name.replace('_', '-')}"
    registry = served.registry
    limit = swap_bound(served)  # measured on the suite's model, before the app leaves it
    assert example.main(["--registry", registry.uri, "--model", model]) == 0
    url = f"{served.cluster.http_url}/v1/models/{model}:predict"
    served.deploy(model=model, allow_schema_change=True)
    try:
        wait_until(lambda: _serving(served, model, 1), limit, f"every replica serving {model} v1")
        body = {"instances": registry.manifest(model, 1).samples.inputs[:1]}
        with BackgroundLoad(url, body, concurrency=4, max_seconds=limit + 90, rate=LOAD_RATE) as load:
            command = [sys.executable, str(EXAMPLES / f"{name}.py"), "--registry", registry.uri, "--model", model,
                       "--seed", "1", "--tolerance", "1.0"]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
            assert done.returncode == 0, done.stderr
            assert registry.resolve(model, "production") == 2, done.stdout
            wait_until(lambda: _serving(served, model, 2), limit, f"every replica serving {model} v2")
            result = load.stop()
        assert result.failed == [], result.failed[:5]
        assert result.versions() <= {"1", "2"} and len(result.samples) > 20

        manifest = registry.manifest(model, 2)
        estimator = format_named(manifest.format).loads(registry.read_artifact(model, 2), LIGHTGBM_TYPES)
        rows = example.load_data().drop(columns=example.LABEL).head(ROWS)[manifest.feature_names]
        expected = estimator.predict(rows).tolist()
        table = pa.table({c: pa.array(rows[c].astype(object).where(rows[c].notna(), None).tolist()) for c in rows.columns})
        probabilities = manifest.task == "classification"
        params = {"probabilities": "true"} if probabilities else {}
        answer = client.post(url, params=params, json={"instances": _instances(rows)})
        arrow = client.post(url, params=params, content=arrow_stream(table), headers={"content-type": ARROW_STREAM})
        for got in (answer, arrow):
            assert got.status_code == 200, got.text
            assert got.json()["predictions"] == expected and got.headers["x-model-version"] == "2"
        assert arrow.json() == answer.json()
        if probabilities:
            assert answer.json()["classes"] == estimator.classes_.tolist()
            assert answer.json()["probabilities"] == estimator.predict_proba(rows).tolist()
        else:
            assert all(isinstance(p, float) for p in expected)
    finally:
        served.deploy(allow_schema_change=True)  # back to the suite's model, whose features differ
        current = registry.resolve(MODEL, "production")
        wait_until(lambda: _serving(served, MODEL, current), limit, f"back on {MODEL}")
        served.deploy()
