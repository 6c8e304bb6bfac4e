"""The serve config's `canary:` block: validated naming the field, applied once per change.

`Rollouts.apply_config` is what the controller actor runs for every replica that was
configured with a block (serve_app/app.py); here it is called as the replicas would
call it, on a real registry and ledger. The same rules run through the real stack in
tests/integration/test_canary_config.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from nonstop.errors import ConfigError, NonstopError, validation_problems
from nonstop.registry import Registry
from nonstop_ops.cluster.serve_config import check_user_config, deployment_config, load_serve_config
from nonstop_ops.kube import render
from serve_app.config import ModelTarget
from serve_app.rollout.controller import Controller
from serve_app.rollout.moves import CONFIG_ACTOR, Rollouts
from serve_app.rollout.policy import CanaryConfig, Policy
from tests.conftest import MODEL, copy_into, train_into


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory: pytest.TempPathFactory, trained_once: Path, demo_data: Path) -> Path:
    """v1 in production, v2 and v3 published beside it: trained once for the module."""
    registry = copy_into(Registry(str(tmp_path_factory.mktemp("versions") / "registry")), trained_once)
    train_into(registry, demo_data, promote=False)
    train_into(registry, demo_data, promote=False)
    return Path(registry.uri)


@pytest.fixture
def versions(registry: Registry, three_versions: Path) -> tuple[int, int, int]:
    """This test's own copy of `three_versions`."""
    copy_into(registry, three_versions)
    return 1, 2, 3


@pytest.mark.parametrize(
    ("canary", "named"),
    [
        ({"version": 2, "stepz": [0.5, 1.0]}, "canary.stepz: Extra inputs are not permitted"),
        ({"version": 2, "steps": [0.5, 0.25, 1.0]}, "canary.steps: steps must be strictly increasing"),
        ({"version": 2, "steps": [0.1, 0.5]}, "canary.steps: the last step must be 1.0"),
        ({"version": 0}, "canary.version: Input should be greater than or equal to 1"),
        ({"steps": [0.5, 1.0]}, "canary: name the candidate with either 'version' or 'alias'"),
        ({"version": 2, "alias": "staging"}, "canary: name the candidate with either 'version' or 'alias'"),
        ({"alias": "no such/alias"}, "canary: invalid alias name"),
        ({"version": 2, "window_s": -1}, "canary.window_s: Input should be greater than 0"),
        ({"version": 2, "automatic": "sometimes"}, "canary.automatic: Input should be a valid boolean"),
    ],
)
def test_a_bad_canary_block_is_refused_naming_the_field(canary: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ModelTarget.model_validate({"model": MODEL, "canary": canary})
    assert named in validation_problems(refused.value)


def test_a_pinned_version_runs_no_canary() -> None:
    with pytest.raises(ValidationError, match="pinned 'version' serves that version only"):
        ModelTarget.model_validate({"model": MODEL, "version": 1, "canary": {"version": 2}})


def test_the_deploy_commands_refuse_a_bad_block_before_sending_anything() -> None:
    """`nonstop up`/the harness deploy and `nonstop kube-render` check what a replica would."""
    config = load_serve_config()
    deployment_config(config)["user_config"]["canary"] = {"version": 2, "steps": [0.3, 0.2, 1.0]}
    with pytest.raises(ConfigError, match=r"user_config refused: canary\.steps: steps must be strictly increasing"):
        check_user_config(config)
    with pytest.raises(ConfigError, match=r"canary\.steps"):
        render(config)
    good = {"version": 2, "steps": [0.3, 1.0], "window_s": 30}
    deployment_config(config)["user_config"]["canary"] = good
    check_user_config(config)
    # on KubeRay the block reaches the replicas as it is, in the generated serveConfigV2
    assert deployment_config(yaml.safe_load(render(config)))["user_config"]["canary"] == good


def test_a_block_starts_its_rollout_once_whoever_carries_it(registry: Registry, versions: tuple[int, int, int]) -> None:
    primary, candidate, _ = versions
    block = CanaryConfig(version=candidate, steps=(0.2, 1.0), window_s=30)
    rollouts = Rollouts(registry, MODEL, "production")
    done = rollouts.apply_config(block)
    assert done == f"canary set by serve config: v{candidate} against v{primary}, 20% of requests"
    # the second replica, a replica restarted, the same file deployed again: nothing more
    same = CanaryConfig.model_validate({"window_s": 30, "steps": [0.2, 1.0], "version": candidate})
    assert rollouts.apply_config(same) is None and rollouts.apply_config(block) is None
    starts = [e for e in registry.ledger(MODEL).entries() if e.action == "start"]
    assert len(starts) == 1
    start = starts[0]
    assert (start.actor, start.candidate, start.weight) == (CONFIG_ACTOR, candidate, 0.2)
    assert start.evidence is not None and start.evidence["serve_config"] == {
        "fingerprint": block.fingerprint(), "canary": {"version": candidate, "steps": [0.2, 1.0], "window_s": 30.0},
    }  # fmt: skip
    state = rollouts.state()
    assert state.active and state.from_config and state.policy == block.policy()


def test_an_abort_by_hand_stands_until_the_block_changes(registry: Registry, versions: tuple[int, int, int]) -> None:
    _, candidate, other = versions
    rollouts = Rollouts(registry, MODEL, "production")
    block = CanaryConfig(version=candidate)
    rollouts.apply_config(block)
    rollouts.rollback("alice", "not today", kind="override")
    assert rollouts.apply_config(block) is None and not rollouts.state().active
    changed = CanaryConfig(version=other, steps=(0.5, 1.0))
    assert rollouts.apply_config(changed) is not None
    assert (rollouts.state().candidate, rollouts.state().weight) == (other, 0.5)


def test_a_changed_block_supersedes_the_rollout_under_way(registry: Registry, versions: tuple[int, int, int]) -> None:
    _, candidate, other = versions
    rollouts = Rollouts(registry, MODEL, "production")
    rollouts.start(candidate, Policy(), actor="alice")
    rollouts.apply_config(CanaryConfig(version=other))
    entries = registry.ledger(MODEL).entries()
    assert [(e.action, e.actor) for e in entries[-3:]] == [("start", "alice"), ("abort", CONFIG_ACTOR), ("start", CONFIG_ACTOR)]
    assert f"superseded by the serve config's canary of v{other}" in entries[-2].reason
    assert rollouts.state().candidate == other


def test_removing_the_block_aborts_its_rollout_never_one_started_by_hand(
    registry: Registry, versions: tuple[int, int, int]
) -> None:
    _, candidate, _ = versions
    rollouts = Rollouts(registry, MODEL, "production")
    rollouts.start(candidate, Policy(), actor="alice")
    assert rollouts.apply_config(None) is None and rollouts.state().active
    rollouts.rollback("alice", "done", kind="override")
    rollouts.apply_config(CanaryConfig(version=candidate))
    assert rollouts.apply_config(None) is not None
    last = registry.ledger(MODEL).entries()[-1]
    assert (last.action, last.actor, last.reason) == ("abort", CONFIG_ACTOR, "the canary block was removed from the serve config")


def test_a_block_naming_what_cannot_be_rolled_out_is_refused_and_changes_nothing(
    registry: Registry, versions: tuple[int, int, int]
) -> None:
    primary, candidate, _ = versions
    rollouts = Rollouts(registry, MODEL, "production")
    rollouts.apply_config(CanaryConfig(version=candidate))
    before = len(registry.ledger(MODEL).entries())
    with pytest.raises(NonstopError, match="has no version 99"):
        rollouts.apply_config(CanaryConfig(version=99))
    with pytest.raises(ConfigError, match="staging points at nothing"):
        rollouts.apply_config(CanaryConfig(alias="staging"))
    with pytest.raises(ConfigError, match="already is"):
        rollouts.apply_config(CanaryConfig(version=primary))
    assert len(registry.ledger(MODEL).entries()) == before and rollouts.state().candidate == candidate


def test_a_candidate_named_by_alias_is_resolved_when_applied(registry: Registry, versions: tuple[int, int, int]) -> None:
    _, candidate, other = versions
    registry.promote(MODEL, candidate, "staging")
    rollouts = Rollouts(registry, MODEL, "production")
    block = CanaryConfig(alias="staging")
    rollouts.apply_config(block)
    assert rollouts.state().candidate == candidate
    registry.promote(MODEL, other, "staging")  # the staging alias moves on: the same block does not follow it
    assert rollouts.apply_config(block) is None and rollouts.state().candidate == candidate


def test_a_manual_block_is_judged_but_never_moved_by_the_controller(registry: Registry, versions: tuple[int, int, int]) -> None:
    _, candidate, _ = versions
    rollouts = Rollouts(registry, MODEL, "production")
    rollouts.apply_config(CanaryConfig(version=candidate, automatic=False, window_s=1))
    assert rollouts.state().policy is not None and not rollouts.state().policy.automatic
    control = Controller(registry, MODEL, "production")
    assert control.tick(datetime.now(UTC) + timedelta(hours=1)) is None
    assert rollouts.state().weight == 0.05 and registry.ledger(MODEL).entries()[-1].action == "start"
    assert rollouts.advance("alice", "looks fine", kind="override") == f"v{candidate} now answers 25% of requests"
