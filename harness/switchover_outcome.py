"""What the clients of a switchover scenario saw: requests counted (failed, refused, gone
backwards in version) and the whole run's report, events included, that a test prints
when it fails and benchmarks/switchover.py writes to docs/results/switchover.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.loadgen import Sample
from harness.switchover import Event, RayServiceSim

FAILURES_SHOWN = 20
REFUSAL_SLACK_S = 0.05  # the client's and the forwarder's clocks read a moment apart


@dataclass(frozen=True)
class Count:
    """What the clients saw."""

    total: int
    ok: int
    failed: int
    refused: int  # connection refused or reset: no endpoint, or a pod gone
    backwards: int  # a success answered by an older version than one already answered
    versions: tuple[str, ...]

    @classmethod
    def of(cls, samples: list[Sample]) -> Count:
        failed = [s for s in samples if not s.ok]
        return cls(
            total=len(samples),
            ok=len(samples) - len(failed),
            failed=len(failed),
            refused=sum(1 for s in failed if s.error is not None),
            backwards=went_backwards(samples),
            versions=tuple(sorted({s.version for s in samples if s.ok and s.version})),
        )


def went_backwards(samples: list[Sample]) -> int:
    """Successes answered by a lower version than one some earlier request was already
    answered with (by the time this one was sent)."""
    answered = sorted((s.sent_at + s.latency_s, int(s.version)) for s in samples if s.ok and s.version)
    count, best, index = 0, -1, 0
    for sample in sorted((s for s in samples if s.ok and s.version), key=lambda s: s.sent_at):
        while index < len(answered) and answered[index][0] <= sample.sent_at:
            best = max(best, answered[index][1])
            index += 1
        count += int(sample.version) < best  # type: ignore[arg-type]
    return count


@dataclass
class Outcome:
    scenario: str
    count: Count
    first_ok_at: float | None
    after_first_ok: Count  # requests sent once a first success was answered
    events: list[Event]
    accepted: dict[str, int]
    refusals: list[float]  # when the Service refused a connection: no ready endpoint
    accepted_by_endpoint: dict[str, int]
    samples: list[Sample] = field(repr=False)

    def not_refused_by_the_service(self) -> list[Sample]:
        """The failed requests that no refusal of the Service explains (one refusal for
        each, made while the request was out): a 5xx, or a connection a pod cut."""
        left = sorted(self.refusals)
        unexplained = []
        for sample in sorted((s for s in self.samples if not s.ok), key=lambda s: s.sent_at):
            end = sample.sent_at + sample.latency_s + REFUSAL_SLACK_S
            match = next((t for t in left if sample.sent_at - REFUSAL_SLACK_S <= t <= end), None)
            if sample.error is not None and match is not None:
                left.remove(match)
            else:
                unexplained.append(sample)
        return unexplained

    def sent_from(self, start: float) -> Count:
        """What the requests sent from `start` on (time.time()) saw."""
        return Count.of([s for s in self.samples if s.sent_at >= start])

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "count": self.count.__dict__,
            "after_first_ok": self.after_first_ok.__dict__,
            "connections_per_cluster": self.accepted,
            "connections_per_endpoint": self.accepted_by_endpoint,
            "connections_refused": len(self.refusals),
            "failures": [
                (round(f.sent_at - self.events[0].at, 2), f.status, (f.error or "")[:120])
                for f in self.samples if not f.ok
            ][:FAILURES_SHOWN],
            "events": [(round(e.at - self.events[0].at, 2), e.what) for e in self.events],
        }


def outcome(scenario: str, samples: list[Sample], sim: RayServiceSim) -> Outcome:
    oks = sorted(s.sent_at + s.latency_s for s in samples if s.ok)
    first = oks[0] if oks else None
    later = [s for s in samples if first is not None and s.sent_at >= first]
    return Outcome(
        scenario, Count.of(samples), first, Count.of(later), list(sim.events),
        dict(sim.forwarder.accepted), list(sim.forwarder.refusals), dict(sim.forwarder.accepted_by_endpoint), samples,
    )  # fmt: skip
