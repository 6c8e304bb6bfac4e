"""A serving pod deleted under load (a node drain, a scale-down), shortened (issue 24).

Two real local Ray clusters play two serving pods of one RayCluster behind the serve
Service (harness/forwarder.py), each with its own HAProxy; one is deleted the way the
kubelet deletes a pod, with the preStop hook and grace period of the built prod overlay,
while its endpoint's removal reaches kube-proxy 2 s later (harness/switchover.py
`delete_pod`). The old hook (soft-stop first) against the new one, in full:
`python -m benchmarks.switchover --scenario pod_deletion [--old-prestop]`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from nonstop.registry import Registry
from nonstop_ops.cluster import lifecycle as local
from tests.conftest import MODEL
from harness.switchover import ServiceSettings, Timing
from harness.switchover_scenarios import Stage, pod_deletion
from tests.tools.kuberay.manifests import KUBERAY, find_kubectl, load_all, run_kubectl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

SHORT = Timing(rate=20.0, concurrency=4, settle_s=3.0, ready_timeout_s=240.0)


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        built = load_all(run_kubectl(find_kubectl(), "kustomize", str(KUBERAY / "overlays/prod"), tmp=Path(tmp)))
    (service,) = [o for o in built if o["kind"] == "RayService"]
    return service


def test_a_pod_deleted_under_load_loses_no_request(
    rayservice: dict[str, Any], trained: Registry, side_slots: tuple[local.LocalCluster, local.LocalCluster]
) -> None:
    settings = ServiceSettings.of(rayservice, deletion_delay_s=0.0)
    registry = trained  # its own copy: the served app writes captures into it
    body = {"instances": registry.manifest(MODEL, registry.latest(MODEL)).samples.inputs[:1]}
    stage = Stage(
        clusters=side_slots,
        serve_config_v2=rayservice["spec"]["serveConfigV2"],
        registry=registry.uri,
        body=body,
        timing=SHORT,
    )

    result = pod_deletion(stage, settings)

    report = str(result.as_dict())
    assert settings.prestop is not None and settings.prestop.wait_s > 0, "the hook waits for the removal first"
    # Load reached both pods; HAProxy stopped listening only once the deleted pod was out
    # of the Service, and nothing failed.
    assert set(result.accepted_by_endpoint) == {side_slots[0].name, side_slots[1].name}, report
    events = [e.what for e in result.events]
    assert f"{side_slots[1].name}: HAProxy soft-stopped" in events, report
    out = events.index(f"{side_slots[1].name} out of the Service")
    assert out < events.index(f"{side_slots[1].name}: HAProxy soft-stopped"), report
    assert result.count.total > 0 and result.count.failed == 0, report
