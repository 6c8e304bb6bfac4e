"""`require_replay`: a rollout starts only on a recent passing replay of its candidate.

On a real signed registry and ledger: the replay entries are appended as `nonstop
replay` appends them (a `decision/replay` entry holding `ReplayEvidence`), with
comparisons computed by the same `compare` from answer lists. `nonstop rollout start`
runs as a subprocess; the serve config's block through `Rollouts.apply_config`, as the
controller runs it for the replicas.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from nonstop.batch.evidence import REPLAY, ReplayEvidence, compare
from nonstop.errors import ConfigError, LedgerTampered
from nonstop.ledger import EntryDraft, LedgerEntry, entry_hash
from nonstop.manifest import Task
from nonstop.registry import Registry
from serve_app.rollout.moves import CONFIG_ACTOR, Rollouts
from serve_app.rollout.policy import CanaryConfig, Policy
from serve_app.rollout.replay_check import ReplayRequirement, check_replay
from tests.unit.nonstop.test_alias_signing import _nonstop
from tests.unit.nonstop.test_registry import DRAFT
from tests.unit.nonstop.test_signing import KEY, OTHER_KEY

MODEL = "m"
REQUIRED = Policy(require_replay=ReplayRequirement())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def signed(root: Path) -> Registry:
    """v1 serves; v2 and v3 are candidates."""
    registry = Registry(str(root), signing_key=KEY)
    for artifact in (b"one", b"two", b"three"):
        registry.publish(MODEL, artifact, DRAFT)
    registry.promote(MODEL, 1)
    return registry


def _replay(
    registry: Registry, candidate: int, baseline: list[object], answers: list[object], *,
    labels: list[object] | None = None, task: Task = "classification", alias: str = "production",
) -> LedgerEntry:  # fmt: skip
    """A replay's entry, as `nonstop replay` writes it."""
    comparison = compare(baseline, answers, task=task, baseline_name="served", candidate_version=candidate, labels=labels)
    evidence = ReplayEvidence(
        since=datetime.now(UTC) - timedelta(days=1), captured=len(answers), served_versions=[1], scored=len(answers),
        rejected=0, comparison=comparison, out="/tmp/replays",
    )  # fmt: skip
    draft = EntryDraft(
        kind="decision", action=REPLAY, alias=alias, candidate=candidate, actor="test",
        reason=f"replay: {comparison.line()}", evidence={REPLAY: evidence.model_dump(mode="json")},
    )  # fmt: skip
    return registry.ledger(MODEL).append(draft)


def _agreeing(registry: Registry, candidate: int, agreeing: int, rows: int = 200) -> LedgerEntry:
    """A classifier's replay agreeing with production on `agreeing` of `rows`, every row
    labelled with the candidate's answer."""
    answers = [0] * agreeing + [1] * (rows - agreeing)
    return _replay(registry, candidate, [0] * rows, answers, labels=list(answers))


def _starts(registry: Registry) -> list[LedgerEntry]:
    return [e for e in registry.ledger(MODEL).entries() if e.action == "start"]


def test_a_passing_replay_starts_the_rollout_and_the_cli_shows_it(signed: Registry, root: Path, tmp_path: Path) -> None:
    replay = _agreeing(signed, 2, agreeing=195)
    policy = tmp_path / "policy.yaml"
    policy.write_text("steps: [0.1, 1.0]\nrequire_replay:\n  min_agreement: 0.95\n  max_quality_drop: 0.0\n")
    started = _nonstop("rollout", "start", "2", "--model", MODEL, "--policy", str(policy), registry=root, key=KEY.get_secret_value())
    assert started.returncode == 0, started.stderr
    assert f"relied on the replay at ledger entry #{replay.seq} (0.0 h old)" in started.stdout
    assert "v2 vs served on 200 rows: agreement 97.50%; on 200 labelled rows: accuracy 0.9750 -> 1.0000" in started.stdout
    (start,) = _starts(signed)
    assert start.weight == 0.1 and start.evidence is not None
    assert start.evidence["replay"]["seq"] == replay.seq and start.evidence["replay"]["comparison"]["agreement"] == 0.975
    assert Rollouts(signed, MODEL, "production").state().policy == Policy(
        steps=(0.1, 1.0), require_replay=ReplayRequirement(min_agreement=0.95, max_quality_drop=0.0)
    )


def test_without_a_replay_of_the_candidate_the_rollout_does_not_start(signed: Registry, root: Path, tmp_path: Path) -> None:
    _agreeing(signed, 3, agreeing=200)  # another candidate's
    _agreeing(signed, 2, agreeing=200)
    signed.promote(MODEL, 1, "staging")
    rollouts = Rollouts(signed, MODEL, "staging")
    with pytest.raises(ConfigError, match=r"no replay of v2 against staging in the ledger; run `nonstop replay 2 --model m --alias staging`"):
        rollouts.start(2, REQUIRED, actor="test")  # v2's replay was against production's answers
    policy = tmp_path / "policy.yaml"
    policy.write_text("require_replay: {}\n")
    refused = _nonstop("rollout", "start", "3", "--model", MODEL, "--policy", str(policy), "--alias", "staging", registry=root, key=KEY.get_secret_value())
    assert refused.returncode == 2
    assert "no replay of v3 against staging in the ledger; run `nonstop replay 3 --model m --alias staging`" in refused.stderr
    assert not _starts(signed)


def test_the_cli_names_a_missing_replay(signed: Registry, root: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("require_replay: {}\n")
    refused = _nonstop("rollout", "start", "2", "--model", MODEL, "--policy", str(policy), registry=root, key=KEY.get_secret_value())
    assert refused.returncode == 2
    assert "error: v2 not rolled out: no replay of v2 in the ledger; run `nonstop replay 2 --model m`" in refused.stderr
    assert not _starts(signed)


def test_a_stale_replay_is_refused(signed: Registry) -> None:
    replay = _agreeing(signed, 2, agreeing=200)
    entries = signed.ledger(MODEL).verified()
    later = replay.at + timedelta(hours=25)
    check = check_replay(ReplayRequirement(), entries, model=MODEL, candidate=2, alias="production", now=later)
    assert check.failure == (
        f"the newest replay of v2 (ledger entry #{replay.seq}) is 25.0 h old (max 24 h); run `nonstop replay 2 --model m` again"
    )
    assert check.replay is not None and check.replay.age_h == pytest.approx(25.0)
    loose = check_replay(ReplayRequirement(max_age_h=26), entries, model=MODEL, candidate=2, alias="production", now=later)
    assert loose.failure is None
    with pytest.raises(ConfigError, match=r"is 0\.0 h old \(max 1e-09 h\)"):
        Rollouts(signed, MODEL, "production").start(2, Policy(require_replay=ReplayRequirement(max_age_h=1e-9)), actor="test")
    assert not _starts(signed)


@pytest.mark.parametrize(
    ("requirement", "failure"),
    [
        (ReplayRequirement(), "replay of v2 agreed on 81.0% (need 95%)"),
        (ReplayRequirement(min_agreement=0.8, min_rows=201), "replay of v2 compared 200 rows (need 201)"),
        (
            ReplayRequirement(min_agreement=None, max_quality_drop=0.1),
            "replay of v2 scored accuracy 0.8100 against production's 1.0000 (at most 0.1 lower)",
        ),
        (
            ReplayRequirement(min_agreement=None, max_quality_drop=0.5, min_labelled=300),
            "replay of v2 had 200 labelled rows (need 300 to judge quality)",
        ),
    ],
)
def test_a_replay_failing_a_threshold_is_refused_naming_it(signed: Registry, requirement: ReplayRequirement, failure: str) -> None:
    answers = [0] * 162 + [1] * 38  # agrees on 81%, and production answered every label
    _replay(signed, 2, [0] * 200, answers, labels=[0] * 200)
    with pytest.raises(ConfigError) as refused:
        Rollouts(signed, MODEL, "production").start(2, Policy(require_replay=requirement), actor="test")
    assert refused.value.message == f"v2 not rolled out: {failure}"
    assert not _starts(signed)
    passing = ReplayRequirement(min_agreement=0.8, max_quality_drop=0.2)
    assert Rollouts(signed, MODEL, "production").start(2, Policy(require_replay=passing), actor="test").action == "start"


def test_a_regression_is_judged_on_mean_difference_and_rmse_and_the_newest_replay_decides(signed: Registry) -> None:
    labels = [float(i % 7) for i in range(200)]
    production = [y + 0.1 for y in labels]
    requirement = ReplayRequirement(max_mean_abs_diff=0.1, max_quality_drop=0.5)
    rollouts = Rollouts(signed, MODEL, "production")
    _replay(signed, 2, production, [y + 0.12 for y in labels], labels=labels, task="regression")  # would pass
    _replay(signed, 2, production, [y + 0.3 for y in labels], labels=labels, task="regression")
    with pytest.raises(ConfigError) as refused:
        rollouts.start(2, Policy(require_replay=requirement), actor="test")
    assert refused.value.message == (
        "v2 not rolled out: replay of v2 differed from production by 0.2 on average (max 0.1); "
        "replay of v2 scored RMSE 0.3 against production's 0.1 (at most 50% higher)"
    )
    _replay(signed, 2, production, [y + 0.12 for y in labels], labels=labels, task="regression")
    assert rollouts.start(2, Policy(require_replay=requirement), actor="test").action == "start"


@pytest.mark.parametrize("rehash", [False, True], ids=["hash-kept", "hash-recomputed"])
def test_an_edited_replay_entry_is_never_acted_on(signed: Registry, root: Path, rehash: bool) -> None:
    """The failing replay edited to pass: the ledger does not verify, nothing starts."""
    replay = _agreeing(signed, 2, agreeing=162)
    path = root / MODEL / "ledger" / f"{replay.seq:012d}.json"
    entry = LedgerEntry.model_validate_json(path.read_text())
    evidence = entry.evidence or {}
    evidence[REPLAY]["comparison"]["agreement"] = 0.99
    forged = entry.model_copy(update={"evidence": evidence})
    if rehash:
        forged = forged.model_copy(update={"hash": entry_hash(forged.body())})
    path.write_text(forged.model_dump_json())
    rollouts = Rollouts(signed, MODEL, "production")
    with pytest.raises(LedgerTampered):
        rollouts.start(2, REQUIRED, actor="test")
    with pytest.raises(LedgerTampered):  # the check itself reads the verified ledger, whoever calls it
        rollouts._replay_check(2, REQUIRED)
    refused = _nonstop("rollout", "start", "2", "--model", MODEL, registry=root, key=KEY.get_secret_value())
    assert refused.returncode == 2 and "does not verify" in refused.stderr
    assert not _starts(signed) and signed.resolve(MODEL, "production") == 1


@pytest.mark.parametrize("key", [None, OTHER_KEY], ids=["unsigned", "another-key"])
def test_a_replay_entry_appended_without_the_key_is_never_acted_on(signed: Registry, root: Path, key: SecretStr | None) -> None:
    _agreeing(Registry(str(root), signing_key=key), 2, agreeing=200)
    rollouts = Rollouts(signed, MODEL, "production")
    for attempt in (lambda: rollouts.start(2, REQUIRED, actor="test"), lambda: rollouts._replay_check(2, REQUIRED)):
        with pytest.raises(LedgerTampered):
            attempt()
    assert not _starts(signed)


def test_a_canary_block_without_a_passing_replay_is_held_once_and_leaves_the_rollout_under_way(signed: Registry) -> None:
    rollouts = Rollouts(signed, MODEL, "production")
    rollouts.start(3, Policy(), actor="alice")
    block = CanaryConfig(version=2, require_replay=ReplayRequirement())
    held = "canary of v2 set by serve config not started: no replay of v2 in the ledger; run `nonstop replay 2 --model m`"
    for _ in range(3):  # every replica hands the block in
        with pytest.raises(ConfigError) as refused:
            rollouts.apply_config(block)
        assert refused.value.message == held
    holds = [e for e in signed.ledger(MODEL).entries() if e.action == "hold"]
    assert [(e.kind, e.actor, e.candidate, e.weight, e.reason) for e in holds] == [("decision", CONFIG_ACTOR, 2, None, held)]
    assert holds[0].evidence == {"serve_config": block.record(), "replay": None}
    state = rollouts.state()
    assert state.active and state.candidate == 3 and state.weight == 0.05 and not state.from_config

    failing = _agreeing(signed, 2, agreeing=162)
    with pytest.raises(ConfigError, match="agreed on 81.0% "):
        rollouts.apply_config(block)
    last = signed.ledger(MODEL).entries()[-1]
    assert last.action == "hold" and last.evidence is not None and last.evidence["replay"]["seq"] == failing.seq
    assert rollouts.state().candidate == 3

    passing = _agreeing(signed, 2, agreeing=200)
    assert rollouts.apply_config(block) == "canary set by serve config: v2 against v1, 5% of requests"
    start = _starts(signed)[-1]
    assert start.evidence is not None and start.evidence["replay"]["seq"] == passing.seq
    assert rollouts.state().candidate == 2 and rollouts.state().from_config
