"""Serve's autoscaler and the RayCluster's worker group agree, in every kustomization.

Each Serve replica gets a worker pod of its own (max_replicas_per_node: 1), so the worker
group bounds are the replica bounds: where the Ray autoscaler runs, it may add exactly as
many workers as Serve may want replicas; everywhere, the count KubeRay starts with (and
goes back to on an in-place update, docs/kubernetes.md) is Serve's floor.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from nonstop.errors import ConfigError
from nonstop_ops import kube
from nonstop_ops.cluster.serve_config import MIN_REPLICAS, deployment_config, load_serve_config, replica_bounds
from tests.tools.kuberay.manifests import Build


def bounds_disagree(service: dict[str, Any]) -> list[str]:
    """What in a built RayService contradicts its own serveConfigV2's autoscaling bounds."""
    fewest, most = replica_bounds(yaml.safe_load(service["spec"]["serveConfigV2"]))
    cluster = service["spec"]["rayClusterConfig"]
    problems = []
    for group in cluster["workerGroupSpecs"]:
        name = group["groupName"]
        if not group.get("replicas") == group.get("minReplicas") == fewest:
            problems.append(f"{name}: replicas {group.get('replicas')}, minReplicas {group.get('minReplicas')}, Serve min {fewest}")
        if cluster.get("enableInTreeAutoscaling") and group.get("maxReplicas") != most:
            problems.append(f"{name}: maxReplicas {group.get('maxReplicas')}, Serve max {most}")
    return problems


def test_the_serve_config_autoscales_from_the_floor() -> None:
    config = load_serve_config()
    autoscaling = deployment_config(config)["autoscaling_config"]
    assert "num_replicas" not in deployment_config(config), "num_replicas pins the count: autoscaling_config would be refused"
    fewest, most = replica_bounds(config)
    assert fewest == autoscaling["initial_replicas"] >= MIN_REPLICAS
    assert most > fewest


def test_worker_bounds_follow_the_serve_autoscaling_config(builds: dict[str, Build]) -> None:
    for name, build in builds.items():
        for service in build.of_kind("RayService"):
            assert not bounds_disagree(service), f"{name}: {bounds_disagree(service)}"
    assert builds["overlays/prod"].one("RayService")["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"]


def test_a_worker_group_that_disagrees_is_found(builds: dict[str, Build]) -> None:
    service = yaml.safe_load(yaml.safe_dump(builds["overlays/prod"].one("RayService")))
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = 4
    assert bounds_disagree(service) == ["serve: maxReplicas 4, Serve max 6"]


@pytest.mark.parametrize("autoscaling", [{"min_replicas": 1, "max_replicas": 6}, {"min_replicas": 3, "max_replicas": 2}])
def test_the_renderer_refuses_fewer_than_two_replicas(autoscaling: dict[str, int]) -> None:
    config = load_serve_config()
    deployment_config(config)["autoscaling_config"] = autoscaling
    with pytest.raises(ConfigError, match="replicas"):
        kube.render(config)
