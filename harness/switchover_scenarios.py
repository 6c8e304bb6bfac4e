"""The three switchover scenarios, shared by the integration test (short) and
benchmarks/switchover.py (full): a code upgrade through a NewCluster switch, the first
start on an empty registry followed by the first training run, and a code upgrade whose
new workers answer their readiness probe slowly.

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
from harness.switchover import Outcome, RayServiceSim, ServiceSettings, Timing, outcome

START_ATTEMPTS = 2
SLOW_PROBE_S = 3.0  # a worker busy enough to answer its probe 3 s late
MODEL = "breast_cancer"


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


def start_cluster(stage: Stage, sim: RayServiceSim, cluster: local.LocalCluster, probe_delay_s: float = 0.0) -> None:
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
    sim.create_pending(cluster, probe_delay_s)


def answers(stage: Stage, sim: RayServiceSim) -> bool:
    try:
        return httpx.post(predict_url(sim), json=stage.body, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def code_upgrade(stage: Stage, settings: ServiceSettings, probe_delay_s: float = 0.0, name: str = "code upgrade") -> Outcome:
    """Active cluster serving; a pending one (the new image) comes up, the Service switches,
    the old one is deleted after the delay. The registry holds a production version."""
    timing = stage.timing
    active, pending = stage.clusters
    with running(stage, settings) as sim:
        start_cluster(stage, sim, active)
        sim.wait(lambda: answers(stage, sim), timing.ready_timeout_s, "the first cluster serving through the Service")
        with BackgroundLoad(predict_url(sim), stage.body, concurrency=timing.concurrency, rate=timing.rate,
                            max_seconds=timing.ready_timeout_s * 2 + timing.deletion_delay_s) as load:  # fmt: skip
            time.sleep(timing.settle_s)
            sim.note("apply: new image")
            start_cluster(stage, sim, pending, probe_delay_s)  # the new workers are the busy ones
            sim.wait(lambda: sim.active is pending, timing.ready_timeout_s, "the switch to the new cluster")
            sim.wait(lambda: any(e.what == f"cluster {active.haproxy_dir.rsplit('/', 1)[-1]} stopped" for e in sim.events),
                     timing.deletion_delay_s + (settings.drain_s or 0) + 60, "the old cluster's deletion")  # fmt: skip
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
            sim.wait(lambda: answers(stage, sim), timing.ready_timeout_s, "the first version served")
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
            sim.wait(lambda: answers(stage, sim), timing.ready_timeout_s, "the first version served")
            time.sleep(timing.settle_s)
            applied = time.time()
            sim.note("apply: new image")
            start_cluster(stage, sim, pending, probe_delay_s)
            sim.wait(lambda: sim.active is pending, timing.ready_timeout_s, "the switch to the new cluster")
            stopped = f"cluster {active.haproxy_dir.rsplit('/', 1)[-1]} stopped"
            sim.wait(lambda: any(e.what == stopped for e in sim.events),
                     timing.deletion_delay_s + (settings.drain_s or 0) + 60, "the old cluster's deletion")  # fmt: skip
            time.sleep(timing.settle_s)
            samples = load.stop().samples
        before = [s for s in samples if s.sent_at < applied]
        after = [s for s in samples if s.sent_at >= applied]
        return outcome("first start", before, sim), outcome("upgrade, slow probes", after, sim)
