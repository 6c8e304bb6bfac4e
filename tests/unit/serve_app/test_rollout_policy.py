"""Evidence statistics, the policy's decisions and the controller's moves, on real models.

The controller here is the plain `Controller` (the Ray actor only wraps it), fed with
tallies of real predictions by real versions trained on the demo data; its clock is
passed in, so a 10-minute window takes no time.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nonstop.capture import CaptureConfig, Served, filesystem, records_table, root_of, write_records
from nonstop.errors import ConfigError
from nonstop.loading import LoadedModel, TrustPolicy, load_version
from nonstop.outcomes import Outcome, check, store
from nonstop.profile import read_profile
from nonstop.registry import Registry
from nonstop.schema import frame_to_matrix
from serve_app.rollout.controller import Controller
from serve_app.rollout.evidence import (
    Evidence,
    InputBins,
    VersionStats,
    agreement_rate,
    distribution_psi,
    error_rate,
    latency_percentile,
    mean_absolute_difference,
    output_edges,
    output_keys,
    summarize,
)
from serve_app.rollout.moves import Rollouts
from serve_app.rollout.outcome_check import OutcomeCheck
from serve_app.rollout.policy import Policy, decide
from tests.conftest import MODEL, copy_into, train_into
from training import demo
from training.job import TrainOptions, train

POLICY = Policy(window_s=60, min_requests=50, min_compared=50)


def test_pure_statistics() -> None:
    assert error_rate(3, 100) == 0.03 and error_rate(0, 0) == 0.0
    assert agreement_rate([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    assert agreement_rate([], []) is None
    assert mean_absolute_difference([1.0, 2.0], [1.5, 1.0]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="length"):
        agreement_rate([1], [1, 2])
    assert distribution_psi({"0": 50, "1": 50}, {"0": 50, "1": 50}) == pytest.approx(0.0)
    assert distribution_psi({"0": 50, "1": 50}, {"1": 100}) > 2  # collapsed to one class
    stats = VersionStats()
    for latency in [0.001] * 98 + [0.5, 0.5]:
        stats.answered(latency, rows=1)
    p50, p99 = latency_percentile(stats.latency, 0.5), latency_percentile(stats.latency, 0.99)
    assert p50 is not None and 0.001 <= p50 < 0.0013
    assert p99 is not None and 0.5 <= p99 < 0.65
    assert latency_percentile(VersionStats().latency, 0.5) is None


def test_tallies_merge_like_one_tally() -> None:
    one, two, both = VersionStats(), VersionStats(), VersionStats()
    for index, stats in enumerate((one, two)):
        stats.answered(0.01 * (index + 1), rows=2)
        stats.paired([index, 1], [0, 1])
    both.merge(one)
    both.merge(two)
    assert (both.requests, both.rows, both.compared, both.agreed) == (2, 4, 4, 3)
    assert both.compared_outputs == {"0": 1, "1": 3}
    assert both.their_outputs == {"0": 2, "1": 2}
    assert sum(both.latency) == 2


def test_paired_numeric_outputs_fall_on_one_set_of_bins() -> None:
    """Both sides of a pair are binned on the edges given (the primary's), so a shift is
    read on one scale, not on each version's own deciles."""
    stats = VersionStats()
    stats.paired([0.05, 0.5, 0.95], [0.06, 0.45, 0.5], output_edges=[0.1, 0.6])
    assert stats.compared_outputs == {"bin0": 1, "bin1": 1, "bin2": 1}
    assert stats.their_outputs == {"bin0": 1, "bin1": 2}
    assert stats.abs_diff == pytest.approx(0.01 + 0.05 + 0.45)


def test_a_regressor_whose_outputs_moved_up_is_rolled_back_for_the_shift() -> None:
    """Binned on each version's own deciles, outputs moved up by a constant land in the same
    bins as before; on the primary's bins they do not."""
    rng = np.random.default_rng(3)
    theirs = rng.normal(100.0, 10.0, 400)
    mine = theirs + 15.0
    edges = output_edges([float(v) for v in rng.normal(100.0, 10.0, 200)])
    own_edges = output_edges([float(v) for v in rng.normal(115.0, 10.0, 200)])
    candidate, primary = VersionStats(), VersionStats()
    for stats, outputs in ((candidate, mine), (primary, theirs)):
        for _ in outputs:
            stats.answered(0.002, rows=1)
    candidate.paired(mine.tolist(), theirs.tolist(), edges)
    each_on_its_own = distribution_psi(Counter(output_keys(theirs.tolist(), edges)), Counter(output_keys(mine.tolist(), own_edges)))
    assert each_on_its_own is not None and each_on_its_own < 0.25  # the shift would have gone unseen
    evidence = summarize((1, primary, None), (2, candidate, None), numeric_outputs=True)
    assert evidence.output_psi is not None and evidence.output_psi > 1.0
    decision = decide(POLICY, evidence, window_done=True)
    assert decision.verdict == "rollback" and "outputs shifted from the primary's" in decision.reason, decision.reason


# --- the policy and the controller on real versions ------------------------------------------


def _model(registry: Registry, version: int) -> LoadedModel:
    return load_version(registry, MODEL, version, TrustPolicy())


def _tally(
    registry: Registry, answering: LoadedModel, other: LoadedModel, frame: pd.DataFrame, latency_s: float
) -> VersionStats:
    """What replicas would report for `answering` over these rows, one row per request."""
    profile = read_profile(registry, MODEL, answering.version)
    assert profile is not None
    matrix = frame_to_matrix(frame, answering.manifest.features)
    mine, theirs = answering.predict(matrix), other.predict(matrix)
    stats = VersionStats()
    for _ in range(len(matrix)):
        stats.answered(latency_s, rows=1)
    stats.saw(matrix, InputBins(profile, answering.manifest.feature_names))
    stats.settle()
    stats.paired(mine, theirs)
    return stats


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory: pytest.TempPathFactory, trained_once: Path, demo_data: Path) -> Path:
    """v1 in production, v2 a good retrain, v3 trained on shuffled labels: once for the module."""
    tmp_path = tmp_path_factory.mktemp("versions")
    registry = copy_into(Registry(str(tmp_path / "registry")), trained_once)
    train_into(registry, demo_data, promote=False)
    shuffled = tmp_path / "shuffled.parquet"
    frame = pd.concat([demo.day_frame(i) for i in range(3)], ignore_index=True)
    frame["target"] = np.random.default_rng(7).permutation(frame["target"].to_numpy())
    frame.to_parquet(shuffled, index=False)
    train(TrainOptions(data=str(shuffled), model=MODEL), registry)
    return Path(registry.uri)


@pytest.fixture
def versions(registry: Registry, three_versions: Path) -> dict[str, int]:
    """This test's own copy of `three_versions`."""
    copy_into(registry, three_versions)
    return {"primary": 1, "good": 2, "collapsed": 3}


def _live(day: int = 3, rows: int = 400) -> pd.DataFrame:
    return pd.concat([demo.day_frame(day + i) for i in range(math.ceil(rows / demo.ROWS_PER_DAY))]).head(rows)


def test_decide_on_real_versions(registry: Registry, versions: dict[str, int]) -> None:
    primary = _model(registry, versions["primary"])
    live = _live()

    def judge(name: str, frame: pd.DataFrame, latency_s: float = 0.002) -> tuple[str, str]:
        candidate = _model(registry, versions[name])
        evidence = summarize(
            (primary.version, _tally(registry, primary, candidate, frame, 0.002), read_profile(registry, MODEL, primary.version)),
            (candidate.version, _tally(registry, candidate, primary, frame, latency_s), read_profile(registry, MODEL, candidate.version)),
            numeric_outputs=False,
        )  # fmt: skip
        decision = decide(POLICY, evidence, window_done=True)
        return decision.verdict, decision.reason

    assert judge("good", live)[0] == "advance"
    verdict, reason = judge("collapsed", live)
    assert verdict == "rollback" and "agrees with the primary" in reason
    verdict, reason = judge("good", live, latency_s=0.2)
    assert verdict == "rollback" and "latency" in reason
    rescaled = live.copy()
    rescaled["mean_radius"] = rescaled["mean_radius"] * 10  # a client sends another unit
    verdict, reason = judge("good", rescaled)
    assert verdict == "rollback" and "mean_radius" in reason and "drifted" in reason
    few = live.head(20)
    assert judge("good", few)[0] == "hold"


def test_output_shift_compares_the_versions_on_the_rows_both_predicted(registry: Registry, versions: dict[str, int]) -> None:
    """Sticky keys send each version its own population: a good retrain whose keys bring
    mostly one class is not a shifted candidate, and a collapsed one still is, with the
    agreement check off."""
    primary, good, collapsed = (_model(registry, versions[name]) for name in ("primary", "good", "collapsed"))
    live = _live(rows=800)
    said = np.asarray(primary.predict(frame_to_matrix(live, primary.manifest.features)))
    classes = sorted(set(said.tolist()))
    mostly_one = pd.concat([live[said == classes[0]], live[said != classes[0]].head(10)])
    the_rest = live[said != classes[0]]

    def judge(candidate: LoadedModel, policy: Policy) -> tuple[Evidence, str, str]:
        profile = read_profile(registry, MODEL, candidate.version)
        assert profile is not None
        answered = _tally(registry, candidate, primary, mostly_one, 0.002)
        # a replica tallies every request's inputs for both versions, whichever answered
        answered.saw(frame_to_matrix(the_rest, candidate.manifest.features), InputBins(profile, candidate.manifest.feature_names))
        evidence = summarize(
            (primary.version, _tally(registry, primary, candidate, the_rest, 0.002), read_profile(registry, MODEL, primary.version)),
            (candidate.version, answered.settle(), profile),
            numeric_outputs=False,
        )  # fmt: skip
        decision = decide(policy, evidence, window_done=True)
        return evidence, decision.verdict, decision.reason

    answered_by_each = distribution_psi(
        Counter(output_keys(primary.predict(frame_to_matrix(the_rest, primary.manifest.features)))),
        Counter(output_keys(good.predict(frame_to_matrix(mostly_one, good.manifest.features)))),
    )
    assert answered_by_each is not None and answered_by_each > 1.0  # what comparing the populations would have judged
    evidence, verdict, reason = judge(good, POLICY)
    assert evidence.output_psi is not None and evidence.output_psi < 0.05
    assert verdict == "advance", reason
    evidence, verdict, reason = judge(collapsed, POLICY.model_copy(update={"min_agreement": 0.0}))
    assert verdict == "rollback" and "outputs shifted from the primary's" in reason, reason


def test_controller_promotes_a_good_candidate_through_every_step(registry: Registry, versions: dict[str, int]) -> None:
    rollouts = Rollouts(registry, MODEL, "production")
    rollouts.start(versions["good"], POLICY, actor="test")
    with pytest.raises(ConfigError, match="under way"):
        rollouts.start(versions["collapsed"], POLICY, actor="test")
    control = Controller(registry, MODEL, "production")
    primary, candidate = _model(registry, versions["primary"]), _model(registry, versions["good"])
    moments = []
    for expected in (0.25, 0.5):
        clock = datetime.now(UTC)
        control.refresh()
        control.report({primary.version: _tally(registry, primary, candidate, _live(), 0.002).model_dump(),
                        candidate.version: _tally(registry, candidate, primary, _live(), 0.002).model_dump()})  # fmt: skip
        assert control.tick(clock) is None  # the window is still open
        assert control.tick(clock + timedelta(seconds=61)) == f"v{candidate.version} now answers {expected:.0%} of requests"
        moments.append(datetime.now(UTC))
    control.report({primary.version: _tally(registry, primary, candidate, _live(), 0.002).model_dump(),
                    candidate.version: _tally(registry, candidate, primary, _live(), 0.002).model_dump()})  # fmt: skip
    assert control.tick(datetime.now(UTC) + timedelta(seconds=61)) == f"promoted v{candidate.version} to {MODEL}@production"
    assert registry.resolve(MODEL, "production") == candidate.version
    ledger = registry.ledger(MODEL)
    assert ledger.verify().ok
    actions = [(e.kind, e.action) for e in ledger.entries()]
    assert actions[-5:] == [
        ("canary_step", "start"), ("decision", "advance"), ("decision", "advance"),
        ("decision", "promote"), ("alias_move", "promote"),
    ]  # fmt: skip
    decision = ledger.entries()[-2]
    assert decision.actor == "rollout controller" and decision.evidence is not None
    assert decision.evidence["candidate"]["requests"] == 1200  # the whole rollout: three windows of 400
    served = ledger.serving_at(moments[0], "production")
    assert (served.version, served.candidate, served.weight) == (primary.version, candidate.version, 0.25)
    assert not Rollouts(registry, MODEL, "production").state().active


def test_controller_rolls_back_a_collapsed_candidate_before_the_window_ends(
    registry: Registry, versions: dict[str, int]
) -> None:
    rollouts = Rollouts(registry, MODEL, "production")
    rollouts.start(versions["collapsed"], POLICY, actor="test")
    control = Controller(registry, MODEL, "production")
    control.refresh()
    primary, candidate = _model(registry, versions["primary"]), _model(registry, versions["collapsed"])
    control.report({primary.version: _tally(registry, primary, candidate, _live(), 0.002).model_dump(),
                    candidate.version: _tally(registry, candidate, primary, _live(), 0.002).model_dump()})  # fmt: skip
    done = control.tick(datetime.now(UTC))
    assert done is not None and "no longer answers" in done
    last = registry.ledger(MODEL).entries()[-1]
    assert (last.kind, last.action, last.weight) == ("decision", "rollback", 0.0)
    assert "agrees with the primary" in last.reason
    assert registry.resolve(MODEL, "production") == primary.version
    state = rollouts.state()
    assert not state.active and state.outcome is not None and state.outcome.startswith("rollback")


def test_manual_overrides(registry: Registry, versions: dict[str, int]) -> None:
    rollouts = Rollouts(registry, MODEL, "production")
    with pytest.raises(ConfigError, match="no rollout under way"):
        rollouts.pause("alice")
    with pytest.raises(ConfigError, match="already is"):
        rollouts.start(versions["primary"], POLICY, actor="alice")
    rollouts.start(versions["good"], POLICY.model_copy(update={"shadow": True}), actor="alice")
    assert (rollouts.state().weight, rollouts.state().candidate) == (0.0, versions["good"])
    rollouts.pause("alice")
    assert rollouts.state().paused
    rollouts.resume("alice")
    assert rollouts.advance("alice", "looks fine", kind="override") == f"v{versions['good']} now answers 5% of requests"
    assert rollouts.rollback("alice", "changed my mind", kind="override").startswith(f"v{versions['good']} no longer")
    entries = registry.ledger(MODEL).entries()
    assert [e.action for e in entries[-5:]] == ["start", "pause", "resume", "advance", "abort"]
    assert all(e.actor == "alice" for e in entries[-5:])
    with pytest.raises(Exception, match="steps"):
        Policy(steps=(0.5, 0.25, 1.0))


def test_a_restarted_controller_carries_on_from_the_ledger(registry: Registry, versions: dict[str, int]) -> None:
    Rollouts(registry, MODEL, "production").start(versions["good"], POLICY, actor="test")
    first = Controller(registry, MODEL, "production")
    primary, candidate = _model(registry, versions["primary"]), _model(registry, versions["good"])
    first.refresh()
    first.report({primary.version: _tally(registry, primary, candidate, _live(), 0.002).model_dump(),
                  candidate.version: _tally(registry, candidate, primary, _live(), 0.002).model_dump()})  # fmt: skip
    assert first.tick(datetime.now(UTC) + timedelta(seconds=61)) is not None
    restarted = Controller(registry, MODEL, "production")  # what Ray builds after the actor died
    state = restarted.refresh()
    assert (state.active, state.step, state.weight, state.candidate) == (True, 1, 0.25, candidate.version)
    assert state.policy == POLICY
    assert restarted.tick(datetime.now(UTC)) is None  # no evidence yet in its window: it waits, it does not reset


def test_vectorized_input_bins_count_as_the_profile_does(registry: Registry, versions: dict[str, int]) -> None:
    from serve_app.rollout.evidence import feature_counts

    profile = read_profile(registry, MODEL, versions["primary"])
    assert profile is not None
    loaded = _model(registry, versions["primary"])
    matrix = frame_to_matrix(_live(rows=50), loaded.manifest.features).copy()
    matrix[3, 0] = np.nan
    stats = VersionStats()
    stats.saw(matrix, InputBins(profile, loaded.manifest.feature_names))
    stats.saw(matrix[:7], InputBins(profile, loaded.manifest.feature_names))
    stats.settle()
    for position, name in enumerate(loaded.manifest.feature_names):
        whole = feature_counts(matrix[:, position], profile.features[name])
        part = feature_counts(matrix[:7, position], profile.features[name])
        assert stats.inputs[name] == [a + b for a, b in zip(whole, part, strict=True)], name
    assert stats.input_rows == 57


# --- the outcome check, on captures and outcomes written as replicas and the route write them ----


def _captured_day(registry: Registry, accuracy: dict[int, float], rows: int = 200) -> None:
    """`rows` requests answered by each version, captured, and their labels posted: each
    version right on the given share of them."""
    features = registry.manifest(MODEL, 1).features
    fs, root = filesystem(root_of(registry.uri, CaptureConfig()))
    labels: dict[str, int] = {}
    for version, share in accuracy.items():
        right = int(rows * share)
        served = [
            Served(f"v{version}-{i}", datetime.now(UTC), MODEL, version, "primary" if version == 1 else "candidate", features,
                   np.zeros((1, len(features))), [1 if i < right else 0])
            for i in range(rows)
        ]  # fmt: skip
        write_records(fs, root, records_table(served))
        labels |= {f"v{version}-{i}": 1 for i in range(rows)}
    manifest = registry.manifest(MODEL, 1)
    store(fs, root, MODEL, check([Outcome(request_id=r, label=v) for r, v in labels.items()], manifest))


def _report_window(control: Controller, registry: Registry, candidate: int) -> None:
    primary, loaded = _model(registry, 1), _model(registry, candidate)
    control.report({1: _tally(registry, primary, loaded, _live(), 0.002).model_dump(),
                    candidate: _tally(registry, loaded, primary, _live(), 0.002).model_dump()})  # fmt: skip


OUTCOME_POLICY = POLICY.model_copy(update={"outcomes": OutcomeCheck(min_labelled=100, wait_s=120)})


def test_controller_rolls_back_a_candidate_worse_on_labelled_traffic(
    registry: Registry, versions: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("serve_app.rollout.controller.LABELS_EVERY_S", 0.0)
    Rollouts(registry, MODEL, "production").start(versions["good"], OUTCOME_POLICY, actor="test")
    control = Controller(registry, MODEL, "production")
    control.refresh()
    _report_window(control, registry, versions["good"])
    held = control.tick(datetime.now(UTC) + timedelta(seconds=61))
    assert held is not None and held.startswith("held: waiting for labelled rows: primary 0, candidate 0")
    _captured_day(registry, {1: 0.95, versions["good"]: 0.8})
    done = control.tick(datetime.now(UTC))  # a failing check rolls back at once
    assert done is not None and "no longer answers" in done
    last = registry.ledger(MODEL).entries()[-1]
    assert (last.action, last.weight) == ("rollback", 0.0) and "labelled accuracy 0.8 (n=200)" in last.reason
    assert last.evidence is not None and last.evidence["labelled"]["candidate"]["rows"] == 200
    assert registry.ledger(MODEL).verify().ok and registry.resolve(MODEL, "production") == 1


def test_controller_promotes_a_candidate_as_good_on_labelled_traffic(
    registry: Registry, versions: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("serve_app.rollout.controller.LABELS_EVERY_S", 0.0)
    candidate = versions["good"]
    Rollouts(registry, MODEL, "production").start(candidate, OUTCOME_POLICY, actor="test")
    control = Controller(registry, MODEL, "production")
    _captured_day(registry, {1: 0.9, candidate: 0.93})
    done = []
    for _ in OUTCOME_POLICY.steps[1:]:
        control.refresh()
        _report_window(control, registry, candidate)
        done.append(control.tick(datetime.now(UTC) + timedelta(seconds=61)))
    assert done[-1] == f"promoted v{candidate} to {MODEL}@production"
    decision = registry.ledger(MODEL).entries()[-2]
    assert decision.action == "promote" and decision.evidence is not None
    assert decision.evidence["labelled"]["primary"]["mean"] == pytest.approx(0.9)


def test_a_step_without_labels_takes_the_configured_decision_after_the_wait(registry: Registry, versions: dict[str, int]) -> None:
    Rollouts(registry, MODEL, "production").start(versions["good"], OUTCOME_POLICY, actor="test")
    control = Controller(registry, MODEL, "production")
    control.refresh()
    _report_window(control, registry, versions["good"])
    assert (control.tick(datetime.now(UTC) + timedelta(seconds=61)) or "").startswith("held: waiting for labelled rows")
    done = control.tick(datetime.now(UTC) + timedelta(seconds=181))  # the window and the wait are over
    assert done is not None and "no longer answers" in done
    assert "did not arrive within 120 s" in registry.ledger(MODEL).entries()[-1].reason
