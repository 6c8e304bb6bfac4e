"""Replicas that come and go under load, shared by the integration tests (short) and
benchmarks/scaling.py (full): a load ramp that makes Serve's autoscaler add replicas and
take them away again, a model swap while it adds them, and a worker node lost (killed,
or drained and stopped) while replicas run on it.

Each scenario records every request (harness/loadgen.py), and a watcher records Serve's
replicas a few times a second: how many run, on which node, and, for each replica the
first time it is seen running, the version the status board says it serves. Serve routes
a request only to a running replica, and a replica runs only once it has loaded its
version (serve_app/app.py `reconfigure`), so that first sighting is what its first
answer carried.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.loadgen import BackgroundLoad, Sample
from harness.rollout import Stack, wait_until
from nonstop.manifest import ManifestDraft
from nonstop_ops.cluster import lifecycle as local
from nonstop_ops.cluster import nodes
from nonstop_ops.cluster.serve_config import deployment_config

RUNNING = "RUNNING"


def with_autoscaling(config: dict[str, Any], **autoscaling: Any) -> dict[str, Any]:
    """`config` with its ModelServer's autoscaling_config fields replaced by these."""
    changed = copy.deepcopy(config)
    deployment_config(changed)["autoscaling_config"].update(autoscaling)
    return changed


def replicas(cluster: local.LocalCluster) -> list[dict[str, Any]]:
    """Serve's ModelServer replicas, whatever their state, each with its node."""
    app = local.app_status(cluster)["applications"].get("nonstop", {})
    return [r for d in app.get("deployments", {}).values() for r in d.get("replicas", [])]


def running_on(cluster: local.LocalCluster) -> dict[str, str]:
    """replica id -> node id of the RUNNING replicas."""
    return {r["replica_id"]: r["node_id"] for r in replicas(cluster) if r["state"] == RUNNING}


def republish(stack: Stack) -> int:
    """The production version published again as a new version: a swap with no training."""
    registry, model = stack.registry, stack.model
    current = registry.resolve(model, "production")
    if current is None:
        raise RuntimeError("no production version to publish again")
    manifest = registry.manifest(model, current)
    draft = ManifestDraft(**manifest.model_dump(include=set(ManifestDraft.model_fields)))
    return registry.publish(model, registry.read_artifact(model, current), draft).version


@dataclass
class Sighting:
    """A replica the first time it was seen running."""

    replica_id: str
    node_id: str
    seen_at: float
    version: int | None  # the board's primary version then; None if it had not reported yet


@dataclass
class Point:
    at: float
    running: int
    starting: int
    by_node: dict[str, int]


class ReplicaWatch:
    """Serve's replicas every `poll_s` seconds in a thread, and each new one's version."""

    def __init__(self, stack: Stack, poll_s: float = 0.5) -> None:
        self.stack = stack
        self.poll_s = poll_s
        self.timeline: list[Point] = []
        self.sightings: dict[str, Sighting] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replica-watch", daemon=True)

    def __enter__(self) -> ReplicaWatch:
        self._look()  # the replicas there before the scenario: known before any load
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._look()
            except Exception:  # a dashboard call that timed out on a busy machine: the next look
                continue

    def _look(self) -> None:
        seen = replicas(self.stack.cluster)
        now = time.time()
        running = {r["replica_id"]: r["node_id"] for r in seen if r["state"] == RUNNING}
        by_node: dict[str, int] = {}
        for node in running.values():
            by_node[node] = by_node.get(node, 0) + 1
        starting = sum(1 for r in seen if r["state"] in ("STARTING", "PENDING_MIGRATION", "UPDATING"))
        self.timeline.append(Point(now, len(running), starting, by_node))
        fresh = [rid for rid in running if rid not in self.sightings or self.sightings[rid].version is None]
        if fresh:
            board = self.stack.board()
            for rid in fresh:
                status = board.get(rid)
                version = status.primary.version if status is not None and status.primary is not None else None
                first = self.sightings.get(rid)
                self.sightings[rid] = Sighting(rid, running[rid], first.seen_at if first else now, version)

    @property
    def peak(self) -> int:
        return max((p.running for p in self.timeline), default=0)


@dataclass
class ScalingReport:
    """What the clients and the watcher saw in one scenario."""

    name: str
    started_at: float
    ended_at: float
    requests: int
    failed: int
    versions: dict[str, int]
    events: list[tuple[float, str]]
    replicas_before: int
    peak_replicas: int
    replicas_after: int
    new_replicas: list[Sighting]
    failures: list[str] = field(default_factory=list)
    in_flight_at_fault: int | None = None
    recovered_s: float | None = None
    notes: list[str] = field(default_factory=list)
    timeline: list[Point] = field(default_factory=list)

    def event(self, what: str) -> float:
        return next(at for at, name in self.events if name == what)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _report(name: str, started: float, samples: list[Sample], events: list[tuple[float, str]], watch: ReplicaWatch,
            before: set[str]) -> ScalingReport:  # fmt: skip
    failed = [s for s in samples if not s.ok]
    versions: dict[str, int] = {}
    for s in samples:
        if s.ok:
            versions[str(s.version)] = versions.get(str(s.version), 0) + 1
    return ScalingReport(
        name=name,
        started_at=started,
        ended_at=time.time(),
        requests=len(samples),
        failed=len(failed),
        versions=versions,
        events=events,
        replicas_before=len(before),
        peak_replicas=watch.peak,
        replicas_after=watch.timeline[-1].running if watch.timeline else 0,
        new_replicas=[s for rid, s in watch.sightings.items() if rid not in before],
        failures=[f"{s.sent_at - started:.2f}s: HTTP {s.status} {s.error or ''}"[:300] for s in failed[:20]],
        timeline=watch.timeline,
    )


@dataclass(frozen=True)
class Ramp:
    """A steady `base` load all along, and `burst` more clients for a while on top, each
    request of `rows` instances: Serve's autoscaler counts requests in flight at the
    replicas, and a request of one row spends most of its round trip in the client."""

    base: int = 1
    burst: int = 8
    rows: int = 1
    settle_s: float = 3.0
    hold_s: float = 5.0
    timeout_s: float = 120.0
    poll_s: float = 0.5


def ramp(stack: Stack, fewest: int, shape: Ramp, swap: bool = False) -> ScalingReport:
    """Base load, then the burst until Serve runs more than `fewest` replicas, `hold_s`
    more, then the base alone until it is back to `fewest`. With `swap`, a new version is
    promoted as soon as the first added replica is starting."""
    new = republish(stack) if swap else None
    body = {"instances": stack.sample_body()["instances"] * shape.rows}
    events: list[tuple[float, str]] = []
    started = time.time()
    with ReplicaWatch(stack, shape.poll_s) as watch:
        before = set(running_on(stack.cluster))
        with BackgroundLoad(stack.predict_url, body, concurrency=shape.base, max_seconds=3600) as base:
            time.sleep(shape.settle_s)
            burst = BackgroundLoad(stack.predict_url, body, concurrency=shape.burst, max_seconds=3600)
            burst.__enter__()
            events.append((time.time(), "burst starts"))
            try:
                if new is not None:
                    _wait(stack, lambda: any(r["replica_id"] not in before for r in replicas(stack.cluster)), shape,
                          "a replica added")  # fmt: skip
                    stack.registry.promote(stack.model, new)
                    events.append((time.time(), f"promote v{new}"))
                _wait(stack, lambda: len(running_on(stack.cluster)) > fewest, shape, "more replicas running")
                events.append((time.time(), "scaled up"))
                if new is not None:
                    _wait(stack, lambda: stack.serving_everywhere(new), shape, f"every replica on v{new}")
                    events.append((time.time(), f"every replica on v{new}"))
                time.sleep(shape.hold_s)
            finally:
                burst_samples = burst.stop().samples
            events.append((time.time(), "burst stops"))
            _wait(stack, lambda: _settled_at(stack, fewest), shape, f"back to {fewest} replicas")
            events.append((time.time(), "scaled down"))
            time.sleep(shape.settle_s)
            samples = sorted(base.stop().samples + burst_samples, key=lambda s: s.sent_at)
    report = _report("swap_while_scaling" if swap else "ramp", started, samples, events, watch, before)
    if new is not None:
        report.notes.append(f"v{new} promoted while replicas were added")
    return report


def _wait(stack: Stack, condition: Callable[[], bool], shape: Ramp, what: str) -> None:
    """wait_until, and on a timeout what Serve and the replicas said then: a failed run's
    report tells a replica stuck starting from one that never got its version."""
    try:
        wait_until(condition, shape.timeout_s, what, shape.poll_s)
    except TimeoutError as exc:
        seen = [(r["replica_id"], r["state"], r.get("node_id"), r.get("message", "")[:200]) for r in replicas(stack.cluster)]
        raise TimeoutError(f"{exc}; Serve's replicas: {seen}; status board: {str(stack.board())[:3000]}") from None


def _settled_at(stack: Stack, count: int) -> bool:
    seen = replicas(stack.cluster)
    return sum(r["state"] == RUNNING for r in seen) == count and len(seen) == count


@dataclass(frozen=True)
class Loss:
    """Steady load while one node goes: `kill` (SIGKILL) or drained, then stopped."""

    concurrency: int = 4
    settle_s: float = 3.0
    timeout_s: float = 180.0
    drain_deadline_s: float = 60.0
    poll_s: float = 0.5


def node_loss(stack: Stack, node: nodes.WorkerNode, node_id: str, shape: Loss, kill: bool) -> ScalingReport:
    """The node goes under load; back to full capacity is as many replicas running as
    before, none on the node gone, every one serving the production version."""
    version = stack.registry.resolve(stack.model, "production")
    if version is None:
        raise RuntimeError("no production version")
    events: list[tuple[float, str]] = []
    started = time.time()
    with ReplicaWatch(stack, shape.poll_s) as watch:
        placed = running_on(stack.cluster)
        on_node = [rid for rid, nid in placed.items() if nid == node_id]
        if not on_node:
            raise RuntimeError(f"no replica runs on {node.name} ({placed})")
        with BackgroundLoad(stack.predict_url, stack.sample_body(), concurrency=shape.concurrency, max_seconds=3600) as load:
            time.sleep(shape.settle_s)
            if kill:
                fault = time.time()
                killed = nodes.kill(node)
                events.append((fault, f"SIGKILL to {len(killed)} processes of {node.name}"))
            else:
                fault = time.time()
                nodes.drain(node, node_id, shape.drain_deadline_s)
                events.append((fault, f"drain {node.name} (deadline {shape.drain_deadline_s:.0f}s)"))

                def moved() -> bool:
                    now = running_on(stack.cluster)
                    return node_id not in now.values() and len(now) >= len(placed)

                wait_until(moved, shape.timeout_s, "replicas moved off the drained node", shape.poll_s)
                events.append((time.time(), "replicas moved"))
                nodes.stop(node)
                events.append((time.time(), f"{node.name} stopped (SIGTERM)"))

            def full() -> bool:
                now = running_on(stack.cluster)
                return len(now) >= len(placed) and node_id not in now.values() and stack.serving_everywhere(version)

            recovered = wait_until(full, shape.timeout_s, "back to full capacity", shape.poll_s)
            events.append((recovered, "full capacity"))
            time.sleep(shape.settle_s)
            samples = sorted(load.stop().samples, key=lambda s: s.sent_at)
    report = _report("node_kill" if kill else "node_drain", started, samples, events, watch, set(placed))
    report.in_flight_at_fault = sum(1 for s in samples if s.sent_at <= fault < s.sent_at + s.latency_s)
    report.recovered_s = recovered - fault
    report.notes.append(f"{len(on_node)} of {len(placed)} replicas ran on {node.name}")
    return report
