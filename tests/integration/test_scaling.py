"""Replicas that follow the load over several Ray nodes, shortened (issue 24).

The suite's cluster gets two worker nodes of its own (nonstop_ops/cluster/nodes.py:
separate `ray start --address` processes on loopback) and, for this module, an
autoscaling config with delays of seconds instead of the production minutes (the
serve_config.yaml defaults are untouched). Each scenario is harness/scaling.py's, under
bounded load to 127.0.0.1; benchmarks/scaling.py runs them in full and reports the times.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group

from harness.rollout import Stack, wait_until
from harness.scaling import Loss, Ramp, node_loss, ramp, republish, running_on, with_autoscaling
from nonstop.config import Settings
from nonstop_ops.cluster import lifecycle as local
from nonstop_ops.cluster import nodes
from tests.integration.conftest import HEAD_CPUS, LIGHTGBM_TYPES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

FEWEST, MOST = 2, 4
# Serve's autoscaler at test speed: decide on 4 s of metrics, add after 1 s above the
# target, remove after 15 s below it (longer than a replica takes to start on a busy
# machine: a shorter delay stopped replicas still starting whenever the load dipped). The
# target is half a request in flight per replica: one client alone (at most one request
# in flight) never keeps more than FEWEST, the burst of eight asks for more.
FAST = {
    "min_replicas": FEWEST, "initial_replicas": FEWEST, "max_replicas": MOST, "target_ongoing_requests": 0.5,
    "upscale_delay_s": 1, "downscale_delay_s": 15, "look_back_period_s": 4, "metrics_interval_s": 0.5,
}  # fmt: skip
# Each wait's limit is generous: with the suite's other work on the cores (the side clusters
# of tests/conftest.py SIDE_CLUSTERS among it), a replica added on a worker node starts slowly
SHORT_RAMP = Ramp(base=1, burst=8, rows=400, settle_s=3.0, hold_s=4.0, timeout_s=240.0)
KILL_LOAD = 4


@dataclass
class Scaled:
    stack: Stack
    workers: list[nodes.WorkerNode]
    node_ids: list[str]
    settings: Settings


def loader_nodes(stack: Stack) -> Counter[str]:
    from ray.util.state import list_actors

    alive = list_actors(address=stack.cluster.dashboard_url, filters=[("class_name", "=", "ModelLoader"), ("state", "=", "ALIVE")], limit=1000)
    return Counter(a.node_id for a in alive)


def _drain_and_stop(stack: Stack, node: nodes.WorkerNode, node_id: str) -> None:
    """Replicas moved off first, so the suite's later tests find them all running."""
    if nodes.pids(node):
        if node_id in running_on(stack.cluster).values():
            nodes.drain(node, node_id, 60)
            wait_until(lambda: node_id not in running_on(stack.cluster).values(), 180, f"replicas off {node.name}", 0.5)
        nodes.stop(node)


@pytest.fixture(scope="module")
def scaled(served: Stack) -> Iterator[Scaled]:
    original = served.config
    settings = Settings(registry=served.registry.uri, trusted_types=LIGHTGBM_TYPES)
    workers = [nodes.WorkerNode(cluster=served.cluster, index=i, num_cpus=2) for i in (1, 2)]
    node_ids: list[str] = []
    # The suite's head offers one CPU more than its two replicas take (HEAD_CPUS), held here
    # before any worker node joins: the head keeps its two replicas and every replica the
    # load adds goes to a worker node, which is what these scenarios put to the test
    spare = placement_group([{"CPU": HEAD_CPUS - FEWEST}])
    ray.get(spare.ready(), timeout=60)
    try:
        for worker in workers:
            nodes.start(worker, settings)
            node_ids.append(nodes.joined(worker))
        served.config = with_autoscaling(original, **FAST)
        local.deploy(served.cluster, served.config)
        wait_until(served.settled, 180, "the fast autoscaling config applied")
        yield Scaled(served, workers, node_ids, settings)
    finally:
        # back to the fewest replicas at test speed, off the worker nodes, then the suite's config
        served.config = with_autoscaling(original, **{**FAST, "max_replicas": FEWEST})
        local.deploy(served.cluster, served.config)
        wait_until(lambda: len(running_on(served.cluster)) == FEWEST, 180, f"{FEWEST} replicas", 0.5)
        for worker, node_id in zip(workers, node_ids, strict=False):
            _drain_and_stop(served, worker, node_id)
        for worker in workers:
            nodes.stop(worker)
        served.config = original
        local.deploy(served.cluster, original)
        remove_placement_group(spare)


def test_worker_nodes_join_the_cluster_as_nodes_of_their_own(scaled: Scaled) -> None:
    alive = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    assert set(scaled.node_ids) <= set(alive) and len(set(scaled.node_ids)) == len(scaled.workers)
    assert all(alive[i]["Resources"].get("CPU") == 2 for i in scaled.node_ids)
    # each node's processes are its own: what `nodes.kill` ends, and nothing of another node
    families = [set(nodes.pids(w)) for w in scaled.workers]
    assert all(families) and not families[0] & families[1]


def test_a_load_ramp_scales_replicas_up_and_back_down_failing_nothing(scaled: Scaled) -> None:
    stack = scaled.stack
    current = stack.registry.resolve(stack.model, "production")

    report = ramp(stack, FEWEST, SHORT_RAMP)

    summary = str({k: v for k, v in report.as_dict().items() if k != "timeline"})
    assert report.failed == 0, summary
    assert report.replicas_before == FEWEST and report.peak_replicas > FEWEST and report.replicas_after == FEWEST, summary
    # every replica added answers with the production version from its first request,
    # and every answer in the run carried it
    assert report.new_replicas and all(s.version == current for s in report.new_replicas), summary
    assert report.versions == {str(current): report.requests}, summary
    # they spread over the nodes, as on KubeRay
    assert {s.node_id for s in report.new_replicas} & set(scaled.node_ids), summary


def test_a_model_swap_while_replicas_are_added_fails_nothing(scaled: Scaled) -> None:
    stack = scaled.stack
    old = stack.registry.resolve(stack.model, "production")

    report = ramp(stack, FEWEST, SHORT_RAMP, swap=True)

    summary = str({k: v for k, v in report.as_dict().items() if k != "timeline"})
    new = stack.registry.resolve(stack.model, "production")
    assert new != old
    assert report.failed == 0, summary
    assert set(report.versions) <= {str(old), str(new)} and report.versions.get(str(new)), summary
    assert report.peak_replicas > FEWEST, summary
    # a replica started once every replica had swapped serves the new version at once
    swapped = report.event(f"every replica on v{new}")
    assert all(s.version == new for s in report.new_replicas if s.seen_at > swapped), summary


def _spread(stack: Stack) -> list[str]:
    """MOST replicas, whatever the load: the fixed count fills the head's two CPUs and
    spreads the rest over the worker nodes. The node of each replica."""
    stack.config = with_autoscaling(stack.config, min_replicas=MOST, initial_replicas=MOST)
    local.deploy(stack.cluster, stack.config)
    wait_until(lambda: len(running_on(stack.cluster)) == MOST, 180, f"{MOST} replicas running", 0.5)
    return list(running_on(stack.cluster).values())


def test_a_worker_node_drained_under_load_fails_at_most_the_requests_in_flight(scaled: Scaled) -> None:
    """Ray's DrainNode with a deadline, as KubeRay's autoscaler asks before it deletes a
    worker pod: Serve starts the node's replicas elsewhere before it stops them, and the
    cluster is back at full count off the node. A request in flight as a replica stops can
    still fail (it happened: the client's connection closed with no answer), so the
    bound is the clients' count, as for a kill. The node is started again after (a new Ray
    node) for the next test."""
    stack = scaled.stack
    placed = _spread(stack)
    index = max(range(len(scaled.workers)), key=lambda i: placed.count(scaled.node_ids[i]))
    victim, victim_id = scaled.workers[index], scaled.node_ids[index]

    report = node_loss(stack, victim, victim_id, Loss(concurrency=KILL_LOAD, settle_s=3.0), kill=False)

    summary = str({k: v for k, v in report.as_dict().items() if k != "timeline"})
    assert report.requests > 0 and report.failed <= KILL_LOAD, summary
    assert report.replicas_after == MOST and report.recovered_s is not None, summary
    assert not nodes.pids(victim), summary
    nodes.start(victim, scaled.settings)
    scaled.node_ids[index] = nodes.joined(victim)


def test_a_worker_node_killed_under_load_fails_at_most_the_requests_in_flight(scaled: Scaled) -> None:
    stack = scaled.stack
    placed = _spread(stack)
    # each replica's loader on the replica's own node: a node's loss takes no loader of a
    # replica elsewhere, which could load nothing after (serve_app/replica/loader_actor.py)
    wait_until(lambda: loader_nodes(stack) == Counter(running_on(stack.cluster).values()), 60, "each loader on its replica's node", 0.5)
    victim, victim_id = max(zip(scaled.workers, scaled.node_ids, strict=True), key=lambda w: placed.count(w[1]))

    report = node_loss(stack, victim, victim_id, Loss(concurrency=KILL_LOAD, settle_s=3.0), kill=True)

    summary = str({k: v for k, v in report.as_dict().items() if k != "timeline"})
    assert report.in_flight_at_fault is not None and report.in_flight_at_fault <= KILL_LOAD, summary
    assert report.failed <= report.in_flight_at_fault, summary
    assert report.replicas_after == MOST and report.recovered_s is not None, summary
    assert not nodes.pids(victim), summary
    # every replica that outlived the node still swaps: the next version reaches them all
    new = republish(stack)
    stack.registry.promote(stack.model, new)
    wait_until(lambda: stack.serving_everywhere(new), 120, f"every replica serving v{new} after the node's loss")
