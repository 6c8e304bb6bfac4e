"""Against a real local Ray Serve: predict, swap in place, refuse bad versions.

Tests run in file order and share one app; each leaves the production alias on a
version that serves, so the next one starts from a healthy state.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from nonstop.loading import TrustPolicy, load_version
from tests.harness.loadgen import BackgroundLoad
from nonstop.schema import rows_to_matrix
from serve_app.arrow_input import ARROW_STREAM, arrow_stream
from tests.conftest import MODEL, train_into
from tests.harness.rollout import Stack, wait_until
from tests.integration.conftest import swap_bound
from training import demo

pytestmark = pytest.mark.integration


def versions_answering(served: Stack, client: httpx.Client, count: int = 20) -> set[str]:
    """Versions that answered `count` predictions; any non-200 fails the test."""
    body = {"instances": served.registry.manifest(MODEL, 1).samples.inputs[:1]}
    answers = [client.post(served.predict_url, json=body) for _ in range(count)]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:3]
    return {a.headers["x-model-version"] for a in answers}


def test_predict_returns_the_registry_models_answers(served: Stack, client: httpx.Client) -> None:
    version = served.registry.resolve(MODEL, "production")
    manifest = served.registry.manifest(MODEL, version)
    rows = manifest.samples.inputs
    expected = load_version(served.registry, MODEL, version, TrustPolicy()).predict(rows_to_matrix(rows, manifest.features))
    response = client.post(served.predict_url, json={"instances": rows})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": expected, "model_version": str(version)}
    bad = client.post(served.predict_url, content=b"not json")
    assert bad.status_code == 422 and "not valid JSON" in bad.json()["error"]

    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(manifest.feature_names)})
    arrow = client.post(served.predict_url, content=arrow_stream(table), headers={"content-type": ARROW_STREAM})
    assert arrow.status_code == 200, arrow.text
    assert arrow.json() == response.json() and arrow.headers["x-model-version"] == str(version)


def test_train_promote_swaps_every_replica_in_place_under_load(served: Stack, demo_data: Path) -> None:
    before = served.replicas()
    old = served.registry.resolve(MODEL, "production")
    limit = swap_bound(served)
    with BackgroundLoad(served.predict_url, served.sample_body(), concurrency=4, max_seconds=limit + 30) as load:
        command = [sys.executable, "-m", "nonstop_ops", "train", "--data", str(demo_data), "--model", MODEL, "--promote", "--registry", served.registry.uri]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        new = served.registry.resolve(MODEL, "production")
        assert new == served.registry.latest(MODEL) and new != old, done.stdout
        wait_until(lambda: served.serving_everywhere(new), limit, f"every replica serving v{new}")
        result = load.stop()
    assert result.failed == [], result.failed[:5]
    assert len(result.samples) > 50
    assert result.versions() <= {str(old), str(new)}
    assert served.replicas() == before  # same replica ids, actors and pids: nothing restarted


@pytest.mark.parametrize("damage", ["corrupt_artifact", "schema_change"])
def test_a_bad_version_is_refused_and_the_old_one_keeps_serving(
    served: Stack, client: httpx.Client, demo_data: Path, tmp_path: Path, damage: str
) -> None:
    old = served.registry.resolve(MODEL, "production")
    if damage == "corrupt_artifact":
        bad = train_into(served.registry, demo_data, promote=False).manifest.version
        artifact = Path(served.registry.uri) / MODEL / "versions" / str(bad) / "model.skops"
        artifact.write_bytes(artifact.read_bytes()[::-1])
        reason = "integrity"
    else:
        wider = tmp_path / "wider.csv"
        demo.day_frame(2).assign(extra_feature=1.0).to_csv(wider, index=False)
        bad = train_into(served.registry, wider, promote=False).manifest.version
        reason = "schema_mismatch"
    before = served.replicas()
    served.registry.promote(MODEL, bad)
    try:
        wait_until(lambda: served.refusing_everywhere(bad, reason), swap_bound(served), f"every replica refusing v{bad}")
        assert versions_answering(served, client) == {str(old)}
        assert all(r["version"] == old for r in served.board().values())
        meta = client.get(f"{served.cluster.http_url}/v1/models/{MODEL}").json()
        assert meta["version"] == str(old) and meta["last_error"]["reason"] == reason
        assert served.replicas() == before
    finally:
        served.registry.rollback(MODEL)


def test_pinning_a_version_by_serve_deploy_applies_in_place(served: Stack, client: httpx.Client) -> None:
    before = served.replicas()
    served.deploy(version=1, alias=None)
    try:
        wait_until(lambda: served.serving_everywhere(1), swap_bound(served), "every replica pinned to v1")
        assert versions_answering(served, client) == {"1"}
        assert served.replicas() == before
    finally:
        served.deploy()
        current = served.registry.resolve(MODEL, "production")
        wait_until(lambda: served.serving_everywhere(current), swap_bound(served), "back on the alias")
