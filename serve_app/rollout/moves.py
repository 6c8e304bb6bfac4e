"""Every move of a rollout, written to the promotion ledger: by the controller or a person.

The controller (automatic decisions), `nonstop rollout` (manual overrides) and the serve
config's `canary:` block (`apply_config`, run by the controller for the replicas) go
through these same functions, so a rollout reads the same in the ledger whoever moved it,
and a move is refused with the same message whoever asks for one that makes no sense.

The serve config and the CLI: the latest change wins. A canary block acts when it is new
or changed: it starts its rollout (aborting one under way, whoever started it), recorded
as "canary set by serve config" with the block and its fingerprint. After that the
rollout is the ledger's like any other: the controller judges it, `nonstop rollout`
pauses, advances or aborts it, and the same block redeployed (or a replica restarting
with it) changes nothing, so an abort by hand stands. Removing the block aborts the
rollout it started, never one started by hand.

A policy with `require_replay` starts only on a recent passing replay of the candidate
(serve_app/rollout/replay_check.py), read from the verified ledger like every move: `start`
refuses without one, naming what is missing or failed; a canary block is refused the same
way, recorded as a `decision/hold` by the serve config (once per block and reason), and
the rollout under way, if any, is left alone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nonstop.errors import ConfigError
from nonstop.ledger import EntryDraft, Kind, LedgerEntry
from nonstop.registry import Registry
from serve_app.rollout.policy import (
    ABORT, ADVANCE, HOLD, PAUSE, RESUME, ROLLBACK, START, CanaryConfig, Policy, RolloutState, replay,
)  # fmt: skip
from serve_app.rollout.replay_check import ReplayCheck, check_replay

CONTROLLER_ACTOR = "rollout controller"
CONFIG_ACTOR = "serve config"


class Rollouts:
    """The rollouts of one alias of one model."""

    def __init__(self, registry: Registry, model: str, alias: str) -> None:
        self.registry = registry
        self.model = model
        self.alias = alias
        self._ledger = registry.ledger(model)

    def state(self) -> RolloutState:
        """The rollout as the verified ledger tells it; `LedgerTampered` if it does not
        verify, so no move is made on an entry nobody vouches for."""
        return replay(self._ledger.verified(), self.alias)

    def start(self, candidate: int, policy: Policy, actor: str, reason: str = "") -> LedgerEntry:
        state = self.state()
        if state.active:
            raise ConfigError(f"a rollout of v{state.candidate} to {self.model}@{self.alias} is under way; abort it first")
        primary = self._check_candidate(candidate)
        check = self._replay_check(candidate, policy)
        if check is not None and check.failure is not None:
            raise ConfigError(f"v{candidate} not rolled out: {check.failure}")
        return self._start(candidate, primary, policy, actor, reason, relied=check)

    def apply_config(self, canary: CanaryConfig | None) -> str | None:
        """The serve config's canary block (None: the config has none), applied once per
        change (module doc). Returns what was done; raises (ConfigError, VersionNotFound)
        for a block naming a candidate that cannot be rolled out, or one whose required
        replay is missing or failing (recorded as a hold), leaving any rollout under way
        alone."""
        state = self.state()
        if canary is None:
            if state.active and state.from_config:
                return self.rollback(CONFIG_ACTOR, "the canary block was removed from the serve config", kind="override")
            return None
        if canary.fingerprint() == state.applied_config:
            return None
        candidate = canary.version if canary.version is not None else self.registry.resolve(self.model, canary.alias or "")
        if candidate is None:
            raise ConfigError(f"user_config canary.alias: {self.model}@{canary.alias} points at nothing")
        primary = self._check_candidate(candidate)
        policy = canary.policy()
        check = self._replay_check(candidate, policy)
        if check is not None and check.failure is not None:
            raise ConfigError(self._hold_block(canary, candidate, check))
        if state.active:
            self.rollback(CONFIG_ACTOR, f"superseded by the serve config's canary of v{candidate}", kind="override")
        entry = self._start(candidate, primary, policy, CONFIG_ACTOR, config=canary.record(), relied=check)
        return entry.reason

    def _check_candidate(self, candidate: int) -> int:
        """The primary it would replace; refuses a candidate that cannot be rolled out."""
        primary = self.registry.resolve(self.model, self.alias)
        if primary is None:
            raise ConfigError(f"{self.model}@{self.alias} points at nothing: promote a first version instead")
        if candidate == primary:
            raise ConfigError(f"v{candidate} already is {self.model}@{self.alias}")
        self.registry.manifest(self.model, candidate)  # must exist, and be signed with a key
        return primary

    def _replay_check(self, candidate: int, policy: Policy) -> ReplayCheck | None:
        """The replay the policy requires, judged on the verified ledger; None: none required."""
        if policy.require_replay is None:
            return None
        entries = self._ledger.verified()
        now = datetime.now(UTC)
        return check_replay(policy.require_replay, entries, model=self.model, candidate=candidate, alias=self.alias, now=now)

    def _hold_block(self, canary: CanaryConfig, candidate: int, check: ReplayCheck) -> str:
        """Record a canary block held for its replay (once per block and reason: every
        replica hands the block in) and say why."""
        reason = f"canary of v{candidate} set by serve config not started: {check.failure}"
        config = canary.record()
        last = next((e for e in reversed(self._ledger.verified()) if e.alias == self.alias), None)
        if last is None or (last.action, last.reason, (last.evidence or {}).get("serve_config")) != (HOLD, reason, config):
            evidence = {"serve_config": config, "replay": check.replay.model_dump(mode="json") if check.replay else None}
            self._append("decision", HOLD, CONFIG_ACTOR, reason, candidate=candidate, evidence=evidence)
        return reason

    def _start(
        self, candidate: int, primary: int, policy: Policy, actor: str, reason: str = "",
        config: dict[str, Any] | None = None, relied: ReplayCheck | None = None,
    ) -> LedgerEntry:  # fmt: skip
        weight = 0.0 if policy.shadow else policy.steps[0]
        first = "shadow scoring" if policy.shadow else f"{weight:.0%} of requests"
        how = "" if policy.automatic else ", moved by hand only"
        default = f"{'canary set by serve config' if config else 'start'}: v{candidate} against v{primary}, {first}{how}"
        evidence: dict[str, Any] = {"policy": policy.model_dump(mode="json")}
        if config is not None:
            evidence["serve_config"] = config
        if relied is not None and relied.replay is not None:  # the replay the start relied on
            evidence["replay"] = relied.replay.model_dump(mode="json")
        return self._append(
            "canary_step", START, actor, reason or default, candidate=candidate, weight=weight, evidence=evidence
        )  # fmt: skip

    def advance(self, actor: str, reason: str, evidence: dict[str, Any] | None = None, kind: Kind = "decision") -> str:
        """To the next step, or, from the last step below 100%, promote: the alias moves."""
        state = self._active()
        candidate, steps = state.candidate or 0, state.policy.steps if state.policy else (1.0,)
        following = state.step + 1
        if steps[following] >= 1.0:
            self._append(kind, "promote", actor, reason, candidate=candidate, evidence=evidence)
            self.registry.promote(self.model, candidate, self.alias, actor=actor, reason=reason)  # appends first
            return f"promoted v{candidate} to {self.model}@{self.alias}"
        weight = steps[following]
        self._append(kind, ADVANCE, actor, reason, candidate=candidate, weight=weight, evidence=evidence)
        return f"v{candidate} now answers {weight:.0%} of requests"

    def hold(self, actor: str, reason: str, evidence: dict[str, Any] | None = None) -> None:
        """Not enough evidence yet: the step runs one more window (its clock restarts)."""
        state = self._active()
        self._append("decision", HOLD, actor, reason, candidate=state.candidate, weight=state.weight, evidence=evidence)

    def rollback(self, actor: str, reason: str, evidence: dict[str, Any] | None = None, kind: Kind = "decision") -> str:
        state = self._active()
        action = ROLLBACK if kind == "decision" else ABORT
        self._append(kind, action, actor, reason, candidate=state.candidate, weight=0.0, evidence=evidence)
        return f"v{state.candidate} no longer answers; {self.model}@{self.alias} stays v{state.primary}"

    def pause(self, actor: str, reason: str = "") -> None:
        state = self._active()
        if state.paused:
            raise ConfigError("the rollout is already paused")
        self._append("override", PAUSE, actor, reason or "paused by hand", candidate=state.candidate)

    def resume(self, actor: str, reason: str = "") -> None:
        state = self._active()
        if not state.paused:
            raise ConfigError("the rollout is not paused")
        self._append("override", RESUME, actor, reason or "resumed by hand", candidate=state.candidate)

    def _active(self) -> RolloutState:
        state = self.state()
        if not state.active or state.policy is None or state.candidate is None:
            raise ConfigError(f"no rollout under way for {self.model}@{self.alias}" + (f" (last: {state.outcome})" if state.outcome else ""))
        return state

    def _append(self, kind: Kind, action: str, actor: str, reason: str, **fields: Any) -> LedgerEntry:
        return self._ledger.append(EntryDraft(kind=kind, action=action, alias=self.alias, actor=actor, reason=reason, **fields))
