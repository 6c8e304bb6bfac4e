"""Canaries set by the serve config, and rollouts that survive faults, under constant load.

Each rollout here is started the way an operator on KubeRay or with `serve deploy` would:
a deploy of the Serve config with a `canary:` block in user_config (serve_app/rollout/moves.py
`apply_config`). Then faults in the middle of automatic rollouts: the controller actor's
process killed with SIGKILL, one replica killed with SIGKILL. Windows are 4 s here.
"""

from __future__ import annotations

import copy
import os
import signal
import time
from typing import Any

import httpx
import pytest
import yaml
from ray.util.state import list_actors

from nonstop.errors import ConfigError
from nonstop.ledger import LedgerEntry
from nonstop_ops.cluster import lifecycle as local
from nonstop_ops.cluster.serve_client import submit_serve_config
from nonstop_ops.cluster.serve_config import deployment_config
from serve_app.replica.state import Role
from serve_app.rollout.canary import share_of
from serve_app.rollout.controller import controller_name
from serve_app.rollout.moves import CONFIG_ACTOR, Rollouts
from serve_app.rollout.policy import Policy
from tests.conftest import MODEL, train_into
from harness.canary import CanaryLoad, RolloutRun, run_rollout
from harness.loadgen import failed_beyond
from harness.rollout import Stack, wait_until
from tests.integration.conftest import KILL_BURST_S, SLACK_S
from tests.integration.test_canary import FOLLOW_S, SETTLE_S, WINDOW_S, _load, _shuffled
from training.job import TrainOptions, train

pytestmark = pytest.mark.integration
# Input drift is judged in test_canary.py. Here every good candidate is a retrain on the
# same data, and a restarted controller judges a fresh, small sample: at the smallest one
# drift is judged on (145 rows, a few consecutive seconds of one day's data) a retrain was
# once rolled back for PSI 0.26 against 0.25, which is not what these tests are about.
BLOCK: dict[str, Any] = {
    "steps": [0.3, 0.6, 1.0], "window_s": WINDOW_S, "min_requests": 20, "min_error_sample": 15, "min_compared": 40,
    "latency_slack_ms": 25.0, "min_tail_sample": 1000, "max_input_psi": 0.5,
}  # fmt: skip
TIMEOUT_S = 8 * WINDOW_S + SLACK_S + 30


def _by_config(served: Stack, candidate: int, **overrides: Any) -> Any:
    return lambda: served.deploy(canary={**BLOCK, "version": candidate, **overrides})


def _steps(run: RolloutRun) -> list[tuple[str, str, float | None]]:
    """The rollout's moves; a hold (a window that closed short of evidence, as on a busy
    machine) moves nothing and is left out."""
    return [(e.kind, e.action, e.weight) for e in run.entries if e.action != "hold"]


def _answers_follow_the_keys(run: RolloutRun) -> None:
    """Sticky by key at the configured weight: every answer the candidate gave before the
    promotion was decided went to a key hashing below the highest share it reached. An
    answer counts by when it came back: a request sent just before the decision may be
    answered after the replicas followed it, by the candidate as the new primary."""
    highest = max(e.weight or 0.0 for e in run.entries if e.kind != "alias_move")
    promoted = next((e.at.timestamp() for e in run.entries if e.action == "promote"), float("inf"))
    by_candidate = [a for a in run.answers if a.version == run.candidate and a.sent_at + a.latency_s < promoted]
    astray = [
        (a.key, round(share_of(a.key, run.candidate), 3), round(a.sent_at + a.latency_s - promoted, 3))
        for a in by_candidate
        if share_of(a.key, run.candidate) >= highest
    ]
    assert by_candidate and not astray, (f"{len(by_candidate)} candidate answers; (key, share, seconds from the promotion to the answer):", astray[:10])


@pytest.fixture(scope="module")
def versions(served: Stack, demo_data: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    registry = served.registry
    tmp = tmp_path_factory.mktemp("canary-config")
    made = {"collapsed": train(TrainOptions(data=str(_shuffled(tmp)), model=MODEL), registry).manifest.version}
    for name in ("good", "controller_kill", "replica_kill"):
        made[name] = train_into(registry, demo_data, promote=False).manifest.version
    return made


def _deploy_bad_block(served: Stack) -> list[str]:
    """Deploy a config with a bad canary block as the KubeRay operator does (no check
    before sending); returns the replicas' refusals once every replica refused it."""
    config = copy.deepcopy(served.config)
    deployment_config(config)["user_config"]["canary"] = {"version": 2, "stepz": [0.5, 1.0]}
    config["http_options"] = {"host": "127.0.0.1", "port": served.cluster.http_port}
    submit_serve_config(served.cluster, yaml.safe_dump(config))
    refusals: list[str] = []

    def everywhere() -> bool:
        errors = [r.last_error for r in served.board().values()]
        refusals[:] = [e.message for e in errors if e is not None and e.reason == "invalid_config"]
        return len(refusals) == len(served.replicas()) == 2

    wait_until(everywhere, 120, "every replica refusing the bad user_config")
    return refusals


@pytest.fixture(scope="module")
def bad_config_run(served: Stack) -> tuple[list[Any], str, list[str]]:
    """A deploy with a bad canary block: by `nonstop`'s deploy (refused before sending),
    then as `serve deploy`/the KubeRay operator would send it (the replicas refuse it)."""
    refusals: list[str] = []
    with _load(served) as load:
        wait_until(lambda: len(load.answers) > 50, 60, "load to flow")
        with pytest.raises(ConfigError) as refused:
            served.deploy(canary={"version": 2, "steps": [0.5, 0.2, 1.0]})
        refusals[:] = _deploy_bad_block(served)
        metadata = served.metadata()
        seen = len(load.answers)
        wait_until(lambda: len(load.answers) > seen + 200, 60, "more load on the refused config")
        served.deploy()  # the good config again: the refusal is cleared
        wait_until(lambda: all(r.last_error is None for r in served.board().values()), 120, "the refusal cleared")
    assert metadata["ready"] and metadata["last_error"]["reason"] == "invalid_config"
    return load.answers, str(refused.value), refusals


def test_a_bad_canary_block_is_refused_naming_the_field_and_the_old_config_keeps_serving(
    served: Stack, bad_config_run: tuple[list[Any], str, list[str]]
) -> None:
    answers, deploy_refusal, replica_refusals = bad_config_run
    assert "canary.steps: steps must be strictly increasing" in deploy_refusal
    primary = served.registry.resolve(MODEL, "production")
    assert all("canary.stepz: Extra inputs are not permitted" in m and f"still serving {MODEL}@production" in m for m in replica_refusals)
    assert [a for a in answers if not a.ok] == []
    assert {a.version for a in answers} == {primary}
    assert Rollouts(served.registry, MODEL, "production").state().active is False


@pytest.fixture(scope="module")
def replaced_under_bad_config(served: Stack, bad_config_run: Any) -> tuple[list[Any], str, float]:
    """A replica killed while the bad config is deployed: its replacement has no good
    target to keep, so it refuses to start (Serve says why), and the survivor serves.
    Returns the answers, Serve's message and the time of the kill."""
    with _load(served) as load:
        wait_until(lambda: len(load.answers) > 50, 60, "load to flow")
        _deploy_bad_block(served)
        _, (_, pid) = sorted(served.replicas().items())[0]
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        message: list[str] = []

        def start_refused() -> bool:
            deployment = local.app_status(served.cluster)["applications"]["nonstop"]["deployments"]["ModelServer"]
            message[:] = [deployment.get("message") or ""]
            return "canary.stepz" in message[0]

        wait_until(start_refused, 180, "Serve reporting the replacement's refusal")
        seen = len(load.answers)
        wait_until(lambda: len(load.answers) > seen + 200, 60, "load on the surviving replica")
        served.deploy()
        wait_until(served.settled, 240, "the good config deployed, every replica back")
        wait_until(lambda: all(r.ready and r.last_error is None for r in served.board().values()), 120, "replicas ready")
    return load.answers, message[0], killed_at


def test_a_replacement_replica_refuses_to_start_on_a_bad_config_while_the_survivor_serves(
    served: Stack, replaced_under_bad_config: tuple[list[Any], str, float]
) -> None:
    answers, message, killed_at = replaced_under_bad_config
    assert "user_config refused: canary.stepz: Extra inputs are not permitted" in message
    assert failed_beyond(answers, killed_at, KILL_BURST_S) == []
    assert {a.version for a in answers if a.ok} == {served.registry.resolve(MODEL, "production")}


@pytest.fixture(scope="module")
def followed() -> dict[int, float]:
    """When (time.time()) every replica was seen on the board holding a candidate."""
    return {}


def _until_held(served: Stack, followed: dict[int, float]) -> Any:
    def wait(start: LedgerEntry) -> None:
        def held() -> bool:
            board = served.board()
            return len(board) == 2 and all((h := r.held(Role.CANDIDATE)) is not None and h.version == start.candidate for r in board.values())

        followed[start.candidate or 0] = wait_until(held, TIMEOUT_S, f"every replica holding v{start.candidate}")

    return wait


@pytest.fixture(scope="module")
def config_runs(served: Stack, versions: dict[str, int], bad_config_run: Any, followed: dict[int, float]) -> dict[str, RolloutRun]:
    runs = {}
    for name in ("collapsed", "good"):
        candidate = versions[name]
        runs[name] = run_rollout(
            served.registry, MODEL, candidate, Policy(), _load(served), settle_s=SETTLE_S, timeout_s=TIMEOUT_S,
            trigger=_by_config(served, candidate), during=_until_held(served, followed) if name == "good" else None,
        )  # fmt: skip
    served.deploy()  # the block removed: its rollout ended, so nothing more is written
    return runs


def test_a_canary_block_in_the_serve_config_splits_traffic_sticky_by_key_and_is_promoted(
    served: Stack, config_runs: dict[str, RolloutRun], followed: dict[int, float]
) -> None:
    run = config_runs["good"]
    assert run.failed == [], run.failed[:5]
    start = run.entries[0]
    assert (start.actor, start.weight) == (CONFIG_ACTOR, 0.3) and start.reason.startswith("canary set by serve config")
    assert start.evidence is not None and start.evidence["serve_config"]["canary"]["version"] == run.candidate
    assert _steps(run)[1:] == [
        ("decision", "advance", 0.6), ("decision", "promote", None), ("alias_move", "promote", 0.0),
    ], [(e.action, e.reason) for e in run.entries]  # fmt: skip
    assert served.registry.resolve(MODEL, "production") == run.candidate
    _answers_follow_the_keys(run)
    first_step_end = next(e for e in run.entries if e.action == "advance").at.timestamp()
    settled = followed[run.candidate]  # both replicas seen holding the candidate at the first step
    in_step = [a for a in run.answers if settled < a.sent_at < first_step_end - FOLLOW_S]
    below = {a.key for a in in_step if share_of(a.key, run.candidate) < 0.3}
    assert in_step and {a.key for a in in_step if a.version == run.candidate} == below
    # one start only, though both replicas (and every later deploy) carried the block
    starts = [e for e in served.registry.ledger(MODEL).entries() if e.action == "start" and e.candidate == run.candidate]
    assert len(starts) == 1


def test_a_bad_candidate_set_by_the_serve_config_is_rolled_back_automatically(config_runs: dict[str, RolloutRun]) -> None:
    run = config_runs["collapsed"]
    outcome = run.outcome
    assert (outcome.kind, outcome.action, outcome.actor) == ("decision", "rollback", "rollout controller"), _steps(run)
    assert "agrees with the primary" in outcome.reason
    assert [a for a in run.answers if not a.ok] == []
    _answers_follow_the_keys(run)
    assert "advance" not in [e.action for e in run.entries], _steps(run)  # judged at its first step


# --- faults in the middle of an automatic rollout ---------------------------------------------------


def _controller_pid(served: Stack) -> int | None:
    alive = list_actors(
        address=served.cluster.dashboard_url, filters=[("name", "=", controller_name(MODEL, "production")), ("state", "=", "ALIVE")]
    )
    return alive[0].pid if alive else None


@pytest.fixture(scope="module")
def controller_killed(served: Stack, versions: dict[str, int], config_runs: Any) -> tuple[RolloutRun, list[int], list[float]]:
    pids: list[int] = []
    moments: list[float] = []

    def kill(start: LedgerEntry) -> None:
        """At the second step, so the restarted controller must neither redo nor skip one."""
        ledger = served.registry.ledger(MODEL)
        wait_until(lambda: any(e.action == "advance" for e in ledger.since_seq(start.seq)), TIMEOUT_S, "the first advance")
        pid = _controller_pid(served) or 0
        pids.append(pid)
        moments.append(time.time())
        os.kill(pid, signal.SIGKILL)
        moments.append(wait_until(lambda: _controller_pid(served) not in (None, pid), 60, "the controller restarted"))
        pids.append(_controller_pid(served) or 0)

    candidate = versions["controller_kill"]
    run = run_rollout(
        served.registry, MODEL, candidate, Policy(), _load(served), settle_s=SETTLE_S, timeout_s=TIMEOUT_S,
        trigger=_by_config(served, candidate), during=kill,
    )  # fmt: skip
    served.deploy()
    return run, pids, moments


def test_a_controller_killed_mid_rollout_comes_back_and_carries_on_from_the_ledger(
    served: Stack, controller_killed: tuple[RolloutRun, list[int], list[float]]
) -> None:
    run, (killed, restarted), (killed_at, restarted_at) = controller_killed
    assert killed != restarted
    # the first step was decided by the killed controller, the rest by the restarted one
    moves = [e for e in run.entries if e.action != "hold"]
    assert moves[1].at.timestamp() < killed_at < restarted_at < moves[2].at.timestamp()
    assert _steps(run) == [
        ("canary_step", "start", 0.3), ("decision", "advance", 0.6),
        ("decision", "promote", None), ("alias_move", "promote", 0.0),
    ], [(e.action, e.actor, e.reason) for e in run.entries]  # fmt: skip
    assert run.failed == [], run.failed[:5]
    assert served.registry.resolve(MODEL, "production") == run.candidate
    assert served.registry.ledger(MODEL).verify().ok


@pytest.fixture(scope="module")
def replica_killed(served: Stack, versions: dict[str, int], controller_killed: Any) -> tuple[RolloutRun, float, float, float]:
    """The rollout is paused (by hand, as `nonstop rollout pause` does) while a replica is
    killed and replaced, so the replacement is seen at the step; then resumed. Returns
    the run, the span in which both replicas, the replacement one of them, served the
    paused step, and the time of the kill."""
    rollouts = Rollouts(served.registry, MODEL, "production")
    candidate = versions["replica_kill"]
    load = _load(served)
    moments: list[float] = []

    def kill(_: LedgerEntry) -> None:
        rollouts.pause("integration test", "a replica is about to be killed")
        wait_until(lambda: all(r.held(Role.CANDIDATE) is not None for r in served.board().values()), 60, "the candidate held")
        victim, (_, pid) = sorted(served.replicas().items())[0]
        moments.append(time.time())
        os.kill(pid, signal.SIGKILL)

        def replaced() -> bool:
            fresh = [r for k, r in served.board().items() if k != victim]
            held = [r.held(Role.CANDIDATE) for r in fresh]
            return len(fresh) == 2 and all(h is not None and h.version == candidate for h in held)

        moments.append(wait_until(replaced, 120, "a replacement replica holding the candidate") + FOLLOW_S)
        wait_until(lambda: sum(1 for a in load.answers if a.sent_at > moments[1]) >= 100, 60, "load on the replacement")
        moments.append(time.time())
        rollouts.resume("integration test", "the replica was replaced")

    run = run_rollout(
        served.registry, MODEL, candidate, Policy(), load, settle_s=SETTLE_S, timeout_s=TIMEOUT_S + 120,
        trigger=_by_config(served, candidate), during=kill,
    )  # fmt: skip
    served.deploy()
    killed_at, since, until = moments
    return run, since, until, killed_at


def test_a_replica_killed_mid_rollout_is_replaced_at_the_same_step_and_the_rollout_completes(
    served: Stack, replica_killed: tuple[RolloutRun, float, float, float]
) -> None:
    run, since, until, killed_at = replica_killed
    # with the replacement serving, exactly the keys below the step's share got the candidate:
    # a replica started from a default (no candidate, or another share) would break this
    paused = [a for a in run.answers if since < a.sent_at < until]
    below = {a.key for a in paused if share_of(a.key, run.candidate) < 0.3}
    assert paused and {a.key for a in paused if a.version == run.candidate} == below
    assert [e.action for e in run.entries if e.action in ("pause", "resume")] == ["pause", "resume"]
    assert [(k, a, w) for k, a, w in _steps(run) if a not in ("pause", "resume")] == [
        ("canary_step", "start", 0.3), ("decision", "advance", 0.6),
        ("decision", "promote", None), ("alias_move", "promote", 0.0),
    ], [(e.action, e.actor, e.reason) for e in run.entries]  # fmt: skip
    assert failed_beyond(run.answers, killed_at, KILL_BURST_S) == []
    _answers_follow_the_keys(run)
    assert served.registry.resolve(MODEL, "production") == run.candidate
    wait_until(
        lambda: httpx.get(f"{served.cluster.http_url}/v1/models/{MODEL}", timeout=10).json()["version"] == str(run.candidate),
        60, f"v{run.candidate} served once the replicas follow the promotion",
    )  # fmt: skip
