"""KubeRay's NewCluster switchover with two real Ray clusters, shortened (issue 12).

The serveConfigV2 and the settings that decide the switchover (head in the serve Service,
the worker readiness probe, the preStop drain) come from the built prod overlay; the
operator's and the kubelet's moves are emulated by harness/switchover.py, the
Service by harness/forwarder.py. One chain, two cluster starts, three scenarios:
the first start on an empty registry with the first training run, then a code upgrade
through a NewCluster switch whose new workers answer their probes slowly. The full,
separate scenarios and the unfixed settings: benchmarks/switchover.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from nonstop.registry import Registry
from nonstop_ops.cluster import lifecycle as local
from tests.conftest import MODEL, train_into
from harness.switchover import ServiceSettings, Timing
from harness.switchover_scenarios import Stage, first_start_then_upgrade
from tests.tools.kuberay.manifests import KUBERAY, find_kubectl, load_all, run_kubectl

# Two Ray clusters started one after the other on a 2-core machine shared with the rest.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

SHORT = Timing(rate=10.0, concurrency=4, settle_s=2.0, deletion_delay_s=3.0, ready_timeout_s=240.0)


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        built = load_all(run_kubectl(find_kubectl(), "kustomize", str(KUBERAY / "overlays/prod"), tmp=Path(tmp)))
    (service,) = [o for o in built if o["kind"] == "RayService"]
    return service


def test_first_start_and_a_new_cluster_switch_lose_no_request(
    rayservice: dict[str, Any],
    demo_data: Path,
    trained_once: Path,
    tmp_path: Path,
    side_slots: tuple[local.LocalCluster, local.LocalCluster],
) -> None:
    settings = ServiceSettings.of(rayservice, SHORT.deletion_delay_s)
    body_source = Registry(str(trained_once))
    body = {"instances": body_source.manifest(MODEL, body_source.latest(MODEL)).samples.inputs[:1]}
    registry = Registry(str(tmp_path / "registry"))  # empty: the RayService comes first
    stage = Stage(
        clusters=side_slots,
        serve_config_v2=rayservice["spec"]["serveConfigV2"],
        registry=registry.uri,
        body=body,
        timing=SHORT,
    )

    first, upgrade = first_start_then_upgrade(stage, settings, lambda: train_into(registry, demo_data))

    report = f"upgrade: {upgrade.as_dict()}\nfirst start: {first.as_dict()}"
    # Until every replica holds the first version the Service says it cannot serve yet
    # (503), or, before the first answer only, refuses the connection: KubeRay switches it
    # on the applications' status, which can come before the new cluster's ingress reports
    # healthy, and then it has no ready endpoint until a check passes (docs/kubernetes.md).
    # Nothing else fails: the replicas poll the registry on their own, and the first
    # start ends on answers, every one a success.
    assert first.first_ok_at is not None, report
    assert all(s.error is None and s.status == 503 for s in first.not_refused_by_the_service()), report
    assert all(s.sent_at < first.first_ok_at for s in first.samples if s.error is not None), report
    last_refusal = max((s.sent_at for s in first.samples if not s.ok), default=first.first_ok_at)
    assert first.sent_from(last_refusal).total > 1, report
    # Through the switch, the slow probes and the old cluster's deletion: nothing lost.
    assert upgrade.count.total > 0 and upgrade.count.failed == 0, report
    assert upgrade.count.backwards == 0 and upgrade.count.versions == ("1",), report
    assert set(upgrade.accepted) == {side_slots[0].name, side_slots[1].name}, report
