"""What a client saw around an upgrade, computed from the load driver's samples.

Every figure comes from requests as sent and answered: throughput, latency and failures
before, during and after a trigger, how long until every answer carried the new version,
and for how long two versions answered side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from harness.loadgen import Sample


@dataclass(frozen=True)
class Event:
    """A trigger on the timeline: what was done, when, and what should answer after it."""

    scenario: str
    action: str
    at: float
    expect_version: str | None = None


@dataclass(frozen=True)
class Phase:
    requests: int
    failed: int
    throughput_rps: float
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class ScenarioReport:
    name: str
    title: str
    trigger_at: float
    done_at: float
    sent: int
    failed: int
    before: Phase
    during: Phase
    after: Phase
    converged_s: float | None
    two_versions_s: float | None
    versions: list[str]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def phase(samples: Sequence[Sample], start: float, end: float) -> Phase:
    inside = [s for s in samples if start <= s.sent_at < end]
    latencies = np.array([s.latency_s for s in inside if s.ok]) * 1000.0
    span = max(end - start, 1e-9)
    return Phase(
        requests=len(inside),
        failed=sum(1 for s in inside if not s.ok),
        throughput_rps=sum(1 for s in inside if s.ok) / span,
        p50_ms=float(np.percentile(latencies, 50)) if len(latencies) else None,
        p99_ms=float(np.percentile(latencies, 99)) if len(latencies) else None,
    )


def converged_after(samples: Sequence[Sample], start: float, end: float, version: str) -> float | None:
    """Seconds from `start` until every later answer in the window carried `version`."""
    inside = sorted((s for s in samples if start <= s.sent_at < end), key=lambda s: s.sent_at)
    if not inside or inside[-1].version != version:
        return None
    last_other = max((s.sent_at for s in inside if s.version != version), default=start)
    return max(last_other - start, 0.0)


def two_versions_window(samples: Sequence[Sample], start: float, end: float) -> float | None:
    """How long answers from the old and the new version interleaved (None: they never did)."""
    inside = sorted((s for s in samples if start <= s.sent_at < end and s.version), key=lambda s: s.sent_at)
    if not inside:
        return None
    first_version = inside[0].version
    newer = [s.sent_at for s in inside if s.version != first_version]
    if not newer:
        return None
    last_old = max(s.sent_at for s in inside if s.version == first_version)
    return max(last_old - newer[0], 0.0)


def report(
    name: str,
    title: str,
    samples: Sequence[Sample],
    trigger_at: float,
    done_at: float,
    window_end: float,
    settle_s: float,
    expect_version: str | None,
) -> ScenarioReport:
    """Before: `settle_s` up to the trigger; during: trigger to done; after: done to window end."""
    scoped = [s for s in samples if trigger_at - settle_s <= s.sent_at < window_end]
    return ScenarioReport(
        name=name,
        title=title,
        trigger_at=trigger_at,
        done_at=done_at,
        sent=len(scoped),
        failed=sum(1 for s in scoped if not s.ok),
        before=phase(samples, trigger_at - settle_s, trigger_at),
        during=phase(samples, trigger_at, max(done_at, trigger_at + 1e-3)),
        after=phase(samples, done_at, window_end),
        converged_s=converged_after(samples, trigger_at, window_end, expect_version) if expect_version else None,
        two_versions_s=two_versions_window(samples, trigger_at, window_end),
        versions=sorted({s.version for s in scoped if s.version}),
    )
