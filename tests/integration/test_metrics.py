"""After a promotion, Ray's Prometheus endpoint carries the nonstop metrics by version."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import MODEL, train_into
from harness.rollout import Stack, wait_until
from tests.integration.conftest import swap_bound

pytestmark = pytest.mark.integration


def _series(served: Stack, name: str) -> list[tuple[dict[str, str], float]]:
    text = httpx.get(served.cluster.metrics_url, timeout=10).text
    found = []
    for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} ([0-9.e+-]+)$", text, flags=re.MULTILINE):
        found.append((dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value)))
    return found


def test_promotion_shows_up_in_prometheus_by_version_and_replica(served: Stack, demo_data, client) -> None:
    new = train_into(served.registry, demo_data).manifest.version
    wait_until(lambda: served.serving_everywhere(new), swap_bound(served), f"every replica serving v{new}")
    body = served.sample_body()
    for _ in range(20):
        assert client.post(served.predict_url, json=body).status_code == 200
    # probabilities take the batched path, the one nonstop_batch_size counts
    assert client.post(served.predict_url, params={"probabilities": "true"}, json=body).status_code == 200
    client.post(served.predict_url, content=b"not json")
    replicas = set(served.replicas())

    def exported() -> bool:
        serving = {
            labels["replica"]
            for labels, value in _series(served, "ray_nonstop_served_version")
            if labels.get("model") == MODEL and labels.get("version") == str(new) and value == 1
        }
        predicted = [v for labels, v in _series(served, "ray_nonstop_predictions_total") if labels.get("version") == str(new)]
        refused = [labels for labels, _ in _series(served, "ray_nonstop_prediction_errors_total") if labels.get("reason") == "invalid_input"]
        swaps = _series(served, "ray_nonstop_swap_duration_seconds_count")
        batches = _series(served, "ray_nonstop_batch_size_count")
        ready = {labels["replica"] for labels, value in _series(served, "ray_nonstop_ready") if labels.get("model") == MODEL and value == 1}
        if {r.split("#")[-1] for r in ready} < {r.split("#")[-1] for r in replicas}:
            return False
        return {r.split("#")[-1] for r in serving} >= {r.split("#")[-1] for r in replicas} and sum(predicted) >= 20 and bool(refused and swaps and batches)

    wait_until(exported, 60, "metrics for the new version on the Prometheus endpoint")
