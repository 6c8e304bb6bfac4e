"""Against a real local Ray Serve: predict, swap in place, refuse bad versions.

Tests run in file order and share one app; each leaves the production alias on a
version that serves, so the next one starts from a healthy state.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from nonstop.loading import TrustPolicy, load_version
from nonstop_ops.cluster import lifecycle as local
from harness.loadgen import BackgroundLoad
from nonstop.schema import rows_to_matrix
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_stream
from tests.conftest import MODEL, train_into
from harness.rollout import Stack, wait_until
from tests.integration.conftest import LOAD_RATE, swap_bound
from training import demo

pytestmark = pytest.mark.integration
OTHER = "breast_cancer_wide"  # another model, with one more feature
FRESH = "fresh_model"  # a model with nothing published when the replicas start


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


def _app_status(served: Stack) -> str:
    return local.app_status(served.cluster)["applications"]["nonstop"]["status"]


def test_train_promote_swaps_every_replica_in_place_under_load(served: Stack, demo_data: Path) -> None:
    wait_until(lambda: served.settled(), 120, "the app settled")
    before = served.replicas()
    old = served.registry.resolve(MODEL, "production")
    limit = swap_bound(served)
    with BackgroundLoad(served.predict_url, served.sample_body(), concurrency=4, max_seconds=limit + 30, rate=LOAD_RATE) as load:
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
    wait_until(served.settled, 180, "the app RUNNING with all its replicas")  # what "nothing restarted" compares with
    before = served.replicas()
    served.registry.promote(MODEL, bad)
    try:
        wait_until(lambda: served.refusing_everywhere(bad, reason), swap_bound(served), f"every replica refusing v{bad}")
        assert versions_answering(served, client) == {str(old)}
        assert all(r.serves(MODEL, old) for r in served.board().values())
        meta = client.get(f"{served.cluster.http_url}/v1/models/{MODEL}").json()
        assert meta["version"] == str(old) and meta["last_error"]["reason"] == reason
        assert served.replicas() == before, local.app_status(served.cluster)["applications"]["nonstop"]["deployments"]
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
        wait_until(lambda: served.serving_everywhere(current) and served.settled(), swap_bound(served), "back on the alias")


def _answers_by_model(url: str, body: dict, stop: threading.Event, seen: list[tuple[int, str | None]]) -> None:
    """Which model answered each request, from the x-model-name header (the loaded
    version's own manifest), until `stop`."""
    with httpx.Client(timeout=10) as probe:
        while not stop.is_set():
            answer = probe.post(url, json=body)
            seen.append((answer.status_code, answer.headers.get("x-model-name")))


def test_a_change_of_model_by_serve_deploy_serves_only_the_new_model(served: Stack, tmp_path: Path) -> None:
    """The operator points the running app at another model (other features too). Every
    replica switches in place; from the end of the rollout no request for the new name
    fails and the old name is unknown; no answer ever comes from the other model."""
    wider = tmp_path / "wider.csv"
    demo.day_frame(3).assign(extra_feature=1.0).to_csv(wider, index=False)
    other = train_into(served.registry, wider, model=OTHER).manifest
    old_url, new_url = served.predict_url, served.predict_url.replace(f"/{MODEL}:", f"/{OTHER}:")
    new_body = {"instances": other.samples.inputs[:1]}
    before, limit = served.replicas(), swap_bound(served)
    stop, seen = threading.Event(), {MODEL: [], OTHER: []}
    probes = [threading.Thread(target=_answers_by_model, args=(u, b, stop, seen[m])) for m, u, b in ((MODEL, old_url, served.sample_body()), (OTHER, new_url, new_body))]
    try:
        with BackgroundLoad(new_url, new_body, concurrency=2, max_seconds=limit + 60, rate=LOAD_RATE) as new_load, BackgroundLoad(
            old_url, served.sample_body(), concurrency=2, max_seconds=limit + 60, rate=LOAD_RATE
        ) as old_load:
            for probe in probes:
                probe.start()
            served.deploy(model=OTHER)
            wait_until(
                lambda: served.serving_everywhere(other.version, model=OTHER) and _app_status(served) == "RUNNING",
                limit,
                f"every replica serving {OTHER} v{other.version}",
            )
            switched = time.time()
            time.sleep(3)
            new_result, old_result = new_load.stop(), old_load.stop()
        stop.set()
        for probe in probes:
            probe.join()
        after_new = [s for s in new_result.samples if s.sent_at > switched]
        after_old = [s for s in old_result.samples if s.sent_at > switched]
        assert len(after_new) > 20 and all(s.status == 200 for s in after_new), [s for s in after_new if s.status != 200][:3]
        assert after_old and {s.status for s in after_old} == {404}
        assert {s.status for s in new_result.samples} <= {200, 404}, {s.status for s in new_result.samples}
        for model, answers in seen.items():
            assert {name for status, name in answers if status == 200} <= {model}, f"{model} answered by another model"
        meta = httpx.get(f"{served.cluster.http_url}/v1/models/{OTHER}", timeout=10).json()
        assert (meta["version"], [f["name"] for f in meta["features"]]) == (str(other.version), other.feature_names)
        assert httpx.get(f"{served.cluster.http_url}/v1/models/{MODEL}", timeout=10).status_code == 404
        assert served.replicas() == before
    finally:
        stop.set()
        served.deploy()
        current = served.registry.resolve(MODEL, "production")
        wait_until(lambda: served.serving_everywhere(current) and served.settled(), limit, f"back on {MODEL}")


def test_replicas_started_on_an_empty_registry_run_not_ready_then_serve_what_appears(served: Stack, demo_data: Path) -> None:
    """Replicas that start with nothing to serve (here: a model with no version at all)
    come up: the app is RUNNING, not DEPLOY_FAILED; predict answers 503 saying why; once
    a version is published and promoted they serve it, without a redeploy."""
    limit = swap_bound(served)
    fresh_url = served.predict_url.replace(f"/{MODEL}:", f"/{FRESH}:")
    old = set(served.replicas())
    try:
        served.deploy(runtime_env={"env_vars": {"NONSTOP_CODE_REVISION": "empty-registry"}}, model=FRESH)
        wait_until(lambda: not (set(served.replicas()) & old) and _app_status(served) == "RUNNING", 180, "replicas restarted")
        started = served.replicas()
        deadline = time.monotonic() + 10  # longer than the bug took to give up (about 10 s)
        while time.monotonic() < deadline:
            assert _app_status(served) == "RUNNING"
            answer = httpx.post(fresh_url, json={"instances": [[1.0] * 30]}, timeout=10)
            assert answer.status_code == 503
            assert answer.json()["error"] == f"model {FRESH!r} has no version loaded yet: model {FRESH!r} has no alias 'production' to follow (yet)"
            time.sleep(1)
        meta = httpx.get(f"{served.cluster.http_url}/v1/models/{FRESH}", timeout=10).json()
        assert (meta["ready"], meta["version"], meta["last_error"]["reason"]) == (False, None, "alias_not_found")
        assert all(not r.ready and r.target == f"{FRESH}@production" for r in served.board().values())

        version = train_into(served.registry, demo_data, model=FRESH).manifest.version
        wait_until(lambda: served.serving_everywhere(version, model=FRESH), limit, f"every replica serving {FRESH} v{version}")
        assert httpx.post(fresh_url, json=served.sample_body(), timeout=10).status_code == 200
        assert served.replicas() == started  # no redeploy, no restart
    finally:
        served.deploy()
        current = served.registry.resolve(MODEL, "production")
        wait_until(lambda: served.serving_everywhere(current) and served.settled(), 180, f"back on {MODEL}")
