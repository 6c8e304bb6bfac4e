"""Every kind of upgrade under continuous load, shortened: zero failed requests (a–e),
every replica converging on the expected version, and kill -9 (f) losing only the
burst of requests at the kill. Each scenario waits for its outcome with a generous limit
(`RESTART_BOUND_S`); how fast they converge is measured by benchmarks/rollout.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.loadgen import failed_beyond
from harness.rollout import REFUSALS, SCENARIOS, RolloutCheck, RolloutResult, Stack
from tests.conftest import train_into
from tests.integration.conftest import KILL_BURST_S, LOAD_RATE

pytestmark = pytest.mark.integration
CONCURRENCY = 4
SETTLE_S = 2.0  # load before and after each trigger
RESTART_BOUND_S = 180.0  # the longest a scenario waits for its outcome before failing


@pytest.fixture(scope="module")
def rollout(served: Stack, demo_data: Path) -> RolloutResult:
    def train(data: Path, promote: bool) -> int:
        return train_into(served.registry, data, promote=promote).manifest.version

    check = RolloutCheck(served, demo_data, settle_s=SETTLE_S, timeout_s=RESTART_BOUND_S, train=train, concurrency=CONCURRENCY, rate=LOAD_RATE)
    return check.run(SCENARIOS)


def _report(result: RolloutResult, name: str):
    return next(r for r in result.reports if r.name == name)


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n != "kill"])
def test_no_request_fails_during_an_upgrade(rollout: RolloutResult, name: str) -> None:
    report = _report(rollout, name)
    assert report.failed == 0, (report.failed, [s for s in rollout.samples if not s.ok][:5])
    assert report.before.requests and report.during.requests + report.after.requests


@pytest.mark.parametrize("name", ["alias", "pin", "rollback"])
def test_swaps_converge_on_every_replica(rollout: RolloutResult, name: str) -> None:
    report = _report(rollout, name)
    assert report.converged_s is not None, report
    assert len(report.versions) == 2  # old before, new after


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_refused_versions_never_answer(rollout: RolloutResult, name: str) -> None:
    report = _report(rollout, name)
    expected = next(e.expect_version for e in rollout.events if e.scenario == name)
    assert report.versions == [expected]
    assert REFUSALS[name] in report.notes[0]


def test_a_code_update_replaces_replicas_and_keeps_the_version(rollout: RolloutResult) -> None:
    report = _report(rollout, "code_update")
    assert len(report.versions) == 1


def test_kill_9_loses_only_the_requests_at_the_kill_and_recovers(rollout: RolloutResult) -> None:
    report = _report(rollout, "kill")
    scenario = [s for s in rollout.samples if report.trigger_at - SETTLE_S <= s.sent_at < report.done_at]
    assert failed_beyond(scenario, report.trigger_at, KILL_BURST_S) == []
    assert report.after.requests > 0 and report.after.failed == 0
