"""Where a local worker node lives: ports and folders of its own, inside its cluster's."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from nonstop.config import Settings
from nonstop_ops.cluster import ClusterError, nodes
from nonstop_ops.cluster.local_cluster import LocalCluster


def test_nodes_get_their_own_agent_port_above_the_heads_and_a_folder_the_cluster_stop_finds() -> None:
    cluster = LocalCluster.isolated(23000, "nst-23000")
    first, second = (nodes.WorkerNode(cluster=cluster, index=i) for i in (1, 2))
    head_ports = {v for k, v in cluster.model_dump().items() if k.endswith("_port")}
    assert first.dashboard_agent_port == 23961 and second.dashboard_agent_port == 23962
    assert not {first.dashboard_agent_port, second.dashboard_agent_port} & head_ports
    # lifecycle.stop ends every process naming the head's Ray folder: the nodes' are inside it
    assert first.temp_dir.startswith(cluster.ray_temp_dir + "/") and first.temp_dir != second.temp_dir


def test_a_node_index_out_of_range_is_refused_by_name() -> None:
    cluster = LocalCluster.isolated(23000, "nst-23000")
    with pytest.raises(ValidationError, match="index"):
        nodes.WorkerNode(cluster=cluster, index=0)
    with pytest.raises(ValidationError, match="index"):
        nodes.WorkerNode(cluster=cluster, index=nodes.MAX_NODES + 1)


def test_a_node_for_a_cluster_never_started_fails_naming_the_node() -> None:
    cluster = LocalCluster.isolated(23500, "nst-23500")  # no token, no GCS: nothing to join
    with pytest.raises(ClusterError, match="node 3 of the cluster on port 23879"):
        nodes.start(nodes.WorkerNode(cluster=cluster, index=3), Settings(registry="/tmp/unused-registry"))


@pytest.mark.parametrize("base", [19500, 32000, 46000])
def test_an_isolated_cluster_among_the_ports_ray_picks_itself_is_refused_naming_the_range(base: int) -> None:
    with pytest.raises(ValueError, match=f"port base {base} .* choose a base from 20000 to 31768"):
        LocalCluster.isolated(base, f"nst-{base}")


def test_isolated_clusters_give_their_replicas_ports_of_their_own() -> None:
    """Serve picks replica ports from fixed ranges without asking the OS, and gRPC binds
    with SO_REUSEPORT: side-by-side clusters on Serve's defaults shared a gRPC port and one
    cluster's requests reached the other's replicas (two test clusters run side by side)."""
    first, second = LocalCluster.isolated(21000, "nst-21000"), LocalCluster.isolated(24000, "nst-24000")
    ranges = []
    for cluster in (first, second):
        env = cluster.environment(Settings(registry="/tmp/unused-registry"))
        http = range(int(env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]), int(env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) + 1)
        grpc = range(int(env["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"]), int(env["RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT"]) + 1)
        own = {v for k, v in cluster.model_dump().items() if k.endswith("_port")}
        assert not own & (set(http) | set(grpc)) and not set(http) & set(grpc)
        assert {p // 1000 for p in (*http, *grpc)} == {cluster.gcs_port // 1000}  # inside its span
        ranges.append(set(http) | set(grpc))
    assert not ranges[0] & ranges[1]
    assert "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT" not in LocalCluster().environment(Settings(registry="/tmp/r"))


def test_a_replica_port_range_backwards_is_refused_naming_it() -> None:
    with pytest.raises(ValidationError, match=r"replica ports \(700, 600\) are not a range"):
        LocalCluster(replica_grpc_ports=(700, 600))


def test_the_metrics_report_interval_is_rays_unless_a_cluster_sets_it() -> None:
    """The suite's cluster exports metrics more often (tests/integration/conftest.py); a
    cluster that does not set it leaves Ray's default, and Ray's floor of a second holds."""
    settings = Settings(registry="/tmp/unused-registry")
    assert "RAY_metrics_report_interval_ms" not in LocalCluster().environment(settings)
    chosen = LocalCluster.isolated(21000, "nst-21000", metrics_report_interval_ms=2000)
    assert chosen.environment(settings)["RAY_metrics_report_interval_ms"] == "2000"
    with pytest.raises(ValidationError, match="metrics_report_interval_ms"):
        LocalCluster(metrics_report_interval_ms=500)
