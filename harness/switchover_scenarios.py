"""The switchover scenarios, shared by the integration tests (short) and
benchmarks/switchover.py (full): a code upgrade through a NewCluster switch, the first
start on an empty registry followed by the first training run, a code upgrade whose
new workers answer their readiness probe slowly, and a serving pod deleted (a node
drain, a scale-down) while the Service still selects its cluster.

Each runs constant-rate load through the forwarder (the serve Service) from the moment
the Service first selects a cluster, and returns what the clients saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from nonstop.config import Settings
from nonstop_ops.cluster import lifecycle as local
from nonstop_ops.cluster import ClusterError
from harness.forwarder import Forwarder
from harness.loadgen import BackgroundLoad
from nonstop_ops.cluster.serve_client import serve_application_statuses, submit_serve_config
from harness.switchover import RECONCILE_PERIOD_S, RayServiceSim, ServiceSettings, Timing, local_serve_config
from harness.switchover_outcome import Outcome, outcome

START_ATTEMPTS = 2
SLOW_PROBE_S = 3.0  # a worker busy enough to answer its probe 3 s late
# How long after a pod's deletion kube-proxy stops sending it new connections: the
# endpoint controller, the API server's watch and every node's kube-proxy in turn; about
# a second on a small idle cluster, more on a large or busy one.
PROPAGATION_S = 2.0
SERVICE = "serve-svc"  # the selector of the pod-deletion scenario: pods of both clusters
MODEL = "breast_cancer"
EVERY_REPLICA_ROUND = 10


@dataclass(frozen=True)
class Stage:
    """Everything a scenario needs: two cluster slots, the app, its registry, a request."""

    clusters: tuple[local.LocalCluster, local.LocalCluster]
    serve_config_v2: str
    registry: str
    body: dict[str, Any]
    timing: Timing


def predict_url(sim: RayServiceSim) -> str:
    return f"{sim.forwarder.url}/v1/models/{MODEL}:predict"


@contextmanager
def running(stage: Stage, settings: ServiceSettings) -> Iterator[RayServiceSim]:
    """Forwarder and operator up, both cluster slots free; everything stopped after."""
    for cluster in stage.clusters:
        local.stop(cluster)  # a previous run's leftovers
    try:
        with Forwarder() as forwarder:
            with RayServiceSim(settings, stage.serve_config_v2, forwarder) as sim:
                yield sim
    finally:
        for cluster in stage.clusters:
            local.stop(cluster)


def boot(stage: Stage, cluster: local.LocalCluster) -> None:
    """The pods come up. A `ray start` that times out on a machine this busy (its GCS
    did not answer in time) is the test machine's trouble, not the switch's: once more."""
    for attempt in range(START_ATTEMPTS):
        try:
            local.start(cluster, Settings(registry=stage.registry))
            break
        except ClusterError:
            local.stop(cluster)
            if attempt == START_ATTEMPTS - 1:
                raise


def start_cluster(stage: Stage, sim: RayServiceSim, cluster: local.LocalCluster, probe_delay_s: float = 0.0) -> None:
    boot(stage, cluster)
    sim.create_pending(cluster, probe_delay_s)


def every_replica_answers(stage: Stage, sim: RayServiceSim) -> bool:
    """The version served by every replica, not only the first to load it: a replica still
    loading answers 503, and every ingress spreads requests sent one after another over the
    replicas (leastconn), so `EVERY_REPLICA_ROUND` answers in a row reach each of them. One
    client for the round, with keep-alive off so that each request opens a connection of its
    own for leastconn to place: `httpx.post` would build a client per request, TLS context
    included, at more CPU than the request."""
    try:
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            return all(client.post(predict_url(sim), json=stage.body).status_code == 200 for _ in range(EVERY_REPLICA_ROUND))
    except httpx.HTTPError:
        return False


def code_upgrade(stage: Stage, settings: ServiceSettings, probe_delay_s: float = 0.0, name: str = "code upgrade") -> Outcome:
    """Active cluster serving; a pending one (the new image) comes up, the Service switches,
    the old one is deleted after the delay. The registry holds a production version."""
    timing = stage.timing
    active, pending = stage.clusters
    with running(stage, settings) as sim:
        start_cluster(stage, sim, active)
        sim.wait(lambda: every_replica_answers(stage, sim), timing.ready_timeout_s, "the first cluster serving through the Service")
        with BackgroundLoad(predict_url(sim), stage.body, concurrency=timing.concurrency, rate=timing.rate,
                            max_seconds=timing.ready_timeout_s * 2 + timing.deletion_delay_s) as load:  # fmt: skip
            time.sleep(timing.settle_s)
            sim.note("apply: new image")
            start_cluster(stage, sim, pending, probe_delay_s)  # the new workers are the busy ones
            sim.wait(lambda: sim.active is pending, timing.ready_timeout_s, "the switch to the new cluster")
            sim.wait(lambda: any(e.what == f"cluster {active.name} stopped" for e in sim.events),
                     timing.deletion_delay_s + settings.termination_s + 60, "the old cluster's deletion")  # fmt: skip
            time.sleep(timing.settle_s)
            samples = load.stop().samples
        return outcome(name, samples, sim)


def first_start(stage: Stage, settings: ServiceSettings, train: Callable[[], None]) -> Outcome:
    """A RayService and its first training applied together on an empty registry: the load
    starts when the Service first exists; `train` is the first training run."""
    timing = stage.timing
    active, _ = stage.clusters
    with running(stage, settings) as sim:
        start_cluster(stage, sim, active)
        sim.wait(lambda: sim.active is active, timing.ready_timeout_s, "the Service's creation")
        with BackgroundLoad(predict_url(sim), stage.body, concurrency=timing.concurrency, rate=timing.rate,
                            max_seconds=timing.ready_timeout_s * 2) as load:  # fmt: skip
            time.sleep(timing.settle_s)
            sim.note("first training run")
            train()
            sim.note("first version promoted")
            sim.wait(lambda: every_replica_answers(stage, sim), timing.ready_timeout_s, "the first version served by every replica")
            time.sleep(timing.settle_s)
            samples = load.stop().samples
        return outcome("first start", samples, sim)


def slow_probe(stage: Stage, settings: ServiceSettings) -> Outcome:
    return code_upgrade(stage, settings, probe_delay_s=SLOW_PROBE_S, name="slow probe")


def first_start_then_upgrade(
    stage: Stage, settings: ServiceSettings, train: Callable[[], None], probe_delay_s: float = SLOW_PROBE_S
) -> tuple[Outcome, Outcome]:
    """The shortened chain the integration test runs, two cluster starts for three
    scenarios: the first start on an empty registry and the first training run, then a
    code upgrade whose new workers answer their probes `probe_delay_s` late. One load
    runs throughout; its samples are split at the apply."""
    timing = stage.timing
    active, pending = stage.clusters
    with running(stage, settings) as sim:
        start_cluster(stage, sim, active)
        sim.wait(lambda: sim.active is active, timing.ready_timeout_s, "the Service's creation")
        with BackgroundLoad(predict_url(sim), stage.body, concurrency=timing.concurrency, rate=timing.rate,
                            max_seconds=timing.ready_timeout_s * 4 + timing.deletion_delay_s) as load:  # fmt: skip
            time.sleep(timing.settle_s)
            sim.note("first training run")
            train()
            sim.note("first version promoted")
            sim.wait(lambda: every_replica_answers(stage, sim), timing.ready_timeout_s, "the first version served by every replica")
            time.sleep(timing.settle_s)
            applied = time.time()
            sim.note("apply: new image")
            start_cluster(stage, sim, pending, probe_delay_s)
            sim.wait(lambda: sim.active is pending, timing.ready_timeout_s, "the switch to the new cluster")
            stopped = f"cluster {active.name} stopped"
            sim.wait(lambda: any(e.what == stopped for e in sim.events),
                     timing.deletion_delay_s + settings.termination_s + 60, "the old cluster's deletion")  # fmt: skip
            time.sleep(timing.settle_s)
            samples = load.stop().samples
        before = [s for s in samples if s.sent_at < applied]
        after = [s for s in samples if s.sent_at >= applied]
        return outcome("first start", before, sim), outcome("upgrade, slow probes", after, sim)


def pod_deletion(
    stage: Stage, settings: ServiceSettings, propagation_s: float = PROPAGATION_S, name: str = "pod deletion"
) -> Outcome:
    """Two serving pods behind the Service (each cluster slot plays one pod with its own
    HAProxy), constant-rate load, then one pod deleted as a node drain or a scale-down
    deletes it: its preStop hook starts at once, and its endpoint leaves the Service
    `propagation_s` later. The other pod serves on. Every request comes on a connection
    of its own (`Connection: close`), as from many short-lived clients or a proxy that
    opens connections as it needs them: the Service keeps sending new connections to the
    deleted pod until its removal propagates, which is what a preStop hook must survive
    (a keep-alive connection is closed by the soft-stop after its answer, and its client
    reconnects through the Service like any other)."""
    timing = stage.timing
    _, leaving = stage.clusters  # the first slot's pod stays
    with running(stage, settings) as sim:
        for cluster in stage.clusters:
            boot(stage, cluster)
            wanted = local_serve_config(stage.serve_config_v2, cluster, sim.poll_interval_s)
            _submit_as_the_operator(cluster, wanted, timing.ready_timeout_s)
        for cluster in stage.clusters:
            sim.wait(lambda c=cluster: _serves(stage, c), timing.ready_timeout_s, f"{cluster.name} serving")
            sim.forwarder.add(cluster.name, SERVICE, cluster.http_port)
            sim.forwarder.set_ready(cluster.name, True)
        sim.forwarder.select(SERVICE)
        with BackgroundLoad(predict_url(sim), stage.body, concurrency=timing.concurrency, rate=timing.rate,
                            max_seconds=timing.ready_timeout_s + settings.termination_s,
                            extra_headers={"connection": "close"}) as load:  # fmt: skip
            time.sleep(timing.settle_s)
            sim.delete_pod(leaving.name, leaving, propagation_s)
            stopped = f"cluster {leaving.name} stopped"
            sim.wait(lambda: any(e.what == stopped for e in sim.events), settings.termination_s + 60, "the pod's end")
            time.sleep(timing.settle_s)
            samples = load.stop().samples
        return outcome(name, samples, sim)


def _submit_as_the_operator(cluster: local.LocalCluster, serve_config_v2: str, timeout_s: float) -> None:
    """The first PUT starts Serve on the cluster, which on a busy 2-core machine can fail
    (the dashboard answers 500 when Serve's proxies are not up within its own limit); the
    operator requeues a failed submit and sends it again on its next reconcile, and so
    does this, until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            submit_serve_config(cluster, serve_config_v2, timeout_s)
            return
        except (ClusterError, httpx.HTTPError):
            if time.monotonic() > deadline:
                raise
            time.sleep(RECONCILE_PERIOD_S)


def _serves(stage: Stage, cluster: local.LocalCluster) -> bool:
    """Every application RUNNING and a predict answered, straight at the cluster's ingress."""
    statuses = serve_application_statuses(cluster)
    if not statuses or any(status != "RUNNING" for status in statuses.values()):
        return False
    try:
        url = f"{cluster.http_url}/v1/models/{MODEL}:predict"
        return httpx.post(url, json=stage.body, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False
