"""Every kind of upgrade under continuous load, shortened: zero failed requests (a–e),
convergence within a bound derived from the configuration, and a bound on kill -9 (f)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.rollout import REFUSALS, SCENARIOS, RolloutCheck, RolloutResult, Stack
from tests.conftest import train_into
from tests.integration.conftest import swap_bound

pytestmark = pytest.mark.integration
CONCURRENCY = 4
SETTLE_S = 5.0  # before and after each trigger: about 3,000 requests a scenario here
MIN_REQUESTS = 2_000  # "several thousand", with room for a slower machine
RESTART_BOUND_S = 180.0


@pytest.fixture(scope="module")
def rollout(served: Stack, demo_data: Path) -> RolloutResult:
    def train(data: Path, promote: bool) -> int:
        return train_into(served.registry, data, promote=promote).manifest.version

    check = RolloutCheck(served, demo_data, settle_s=SETTLE_S, timeout_s=RESTART_BOUND_S, train=train, concurrency=CONCURRENCY)
    return check.run(SCENARIOS)


def _report(result: RolloutResult, name: str):
    return next(r for r in result.reports if r.name == name)


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n != "kill"])
def test_no_request_fails_during_an_upgrade(rollout: RolloutResult, name: str) -> None:
    report = _report(rollout, name)
    assert report.sent >= MIN_REQUESTS, report
    assert report.failed == 0, (report.failed, [s for s in rollout.samples if not s.ok][:5])
    assert report.before.requests and report.during.requests + report.after.requests


@pytest.mark.parametrize("name", ["alias", "pin", "rollback"])
def test_swaps_converge_within_poll_plus_load_plus_slack(rollout: RolloutResult, served: Stack, name: str) -> None:
    report = _report(rollout, name)
    assert report.converged_s is not None, report
    assert report.converged_s <= swap_bound(served)
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
    assert report.done_at - report.trigger_at <= RESTART_BOUND_S


def test_kill_9_loses_at_most_the_requests_in_flight_and_recovers(rollout: RolloutResult) -> None:
    report = _report(rollout, "kill")
    assert report.failed <= CONCURRENCY
    assert report.done_at - report.trigger_at <= RESTART_BOUND_S
    assert report.after.requests > 0 and report.after.failed == 0
