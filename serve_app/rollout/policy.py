"""The rollout policy: steps, windows and thresholds, and the pure function that decides.

A rollout lives in the promotion ledger, not in any process: `start` records the
candidate, the first step and the policy; every step, pause, decision and override after
it is an entry. `replay` rebuilds the rollout from those entries, so replicas, the
controller and the CLI all read the same state, and a controller that restarts picks up
where the ledger says it was.

`decide` judges one evaluation window's evidence. A failing check rolls back at once, as
soon as there are enough samples to judge it (a bad candidate should not wait for the
window to end while it answers clients); advancing waits for a full window of good
evidence. The last step (100%) is the promotion itself: the alias moves to the candidate.

With `outcomes` set, the candidate is also judged on labelled live traffic
(serve_app/rollout/outcome_check.py): worse than the primary rolls back, and a step
advances only once both versions have enough labelled rows, holding for them at most
`outcomes.wait_s` past its window before taking `outcomes.on_timeout`.

With `require_replay` set, the rollout does not start at all without a recent passing
replay of the candidate in the ledger (serve_app/rollout/replay_check.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nonstop.errors import ConfigError
from nonstop.ledger import LedgerEntry
from nonstop.registry import check_name
from serve_app.rollout.evidence import Evidence, noise_psi
from serve_app.rollout.outcome_check import OutcomeCheck, judge
from serve_app.rollout.replay_check import ReplayRequirement

START, ADVANCE, HOLD, ROLLBACK, PROMOTE = "start", "advance", "hold", "rollback", "promote"
PAUSE, RESUME, ABORT = "pause", "resume", "abort"
MAX_STEPS = 20  # a rollout of more steps than this is a mistake, and its ledger entries would grow with it
Verdict = Literal["advance", "hold", "rollback", "promote"]


class Policy(BaseModel):
    """Defaults suit a model retrained daily: a rollout takes about 40 minutes of traffic
    (four 10-minute windows), long enough for a few thousand requests per step at modest
    traffic, short enough to finish well inside a day."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: tuple[float, ...] = Field(
        default=(0.05, 0.25, 0.5, 1.0), max_length=MAX_STEPS, description="candidate shares; 1.0 means promote"
    )
    shadow: bool = Field(default=False, description="score the candidate on every request first, answering none")
    window_s: float = Field(default=600.0, gt=0, le=86400, description="evaluation window per step")
    min_requests: int = Field(default=200, ge=1, description="candidate requests in a window before advancing")
    min_error_sample: int = Field(default=20, ge=1, description="candidate requests before judging errors")
    max_error_rate_increase: float = Field(default=0.01, ge=0, le=1)
    max_latency_ratio: float = Field(default=2.0, ge=1, description="candidate p50 and p99 over the primary's")
    latency_slack_ms: float = Field(default=20.0, ge=0, description="differences below this never fail")
    min_agreement: float = Field(default=0.9, ge=0, le=1, description="classes: share of rows predicted alike")
    max_mean_abs_diff: float | None = Field(default=None, ge=0, description="numeric outputs; None: not checked")
    max_output_psi: float = Field(default=0.25, ge=0, description="candidate outputs against the primary's")
    max_input_psi: float = Field(default=0.25, ge=0, description="any feature against the candidate's training profile")
    min_compared: int = Field(default=50, ge=1, description="paired rows before judging agreement")
    min_tail_sample: int = Field(default=500, ge=1, description="candidate requests before judging p99 (p50 before)")
    automatic: bool = Field(
        default=True, description="the controller advances and rolls back; false: it only judges, a person moves the rollout"
    )
    outcomes: OutcomeCheck | None = Field(default=None, description="judge the candidate on labelled live traffic; None: not checked")
    require_replay: ReplayRequirement | None = Field(
        default=None, description="start only on a recent passing `nonstop replay` of the candidate; None: not required"
    )

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        if not steps or any(not 0 < s <= 1 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError("steps must be strictly increasing shares in (0, 1], e.g. [0.05, 0.25, 0.5, 1.0]")
        if steps[-1] != 1.0:
            raise ValueError("the last step must be 1.0 (the promotion)")
        return steps

    def drift_rows(self) -> int:
        """Rows before input drift is judged: enough that sampling noise is a quarter of
        the threshold (decile bins)."""
        return max(self.min_error_sample, int(4 * 9 / self.max_input_psi) + 1)


class CanaryConfig(Policy):
    """`canary:` in the deployment's user_config: the candidate (a version, or an alias
    such as `staging` resolved when the block is first applied) and the policy's fields.

    A block starts its rollout once, when it is new or changed (a fingerprint of it goes
    into the ledger's start entry); redeploying it, or a replica restarting with it,
    does nothing more (serve_app/rollout/moves.py `apply_config`)."""

    version: int | None = Field(default=None, ge=1, description="the candidate version; excludes alias")
    alias: str | None = Field(default=None, description="the alias naming the candidate; excludes version")

    @model_validator(mode="after")
    def _one_candidate(self) -> CanaryConfig:
        if (self.version is None) == (self.alias is None):
            raise ValueError("name the candidate with either 'version' or 'alias'")
        if self.alias is not None:
            try:
                check_name("alias", self.alias)
            except ConfigError as exc:  # a ValueError, so pydantic names the field
                raise ValueError(exc.message) from None
        return self

    def policy(self) -> Policy:
        return Policy.model_validate(self.model_dump(exclude={"version", "alias"}))

    def fingerprint(self) -> str:
        """The same block always gives the same fingerprint, whatever its key order."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    def record(self) -> dict[str, Any]:
        """What the ledger's start entry keeps of the block."""
        return {"fingerprint": self.fingerprint(), "canary": self.model_dump(mode="json", exclude_defaults=True)}


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reasons: list[str]

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass
class RolloutState:
    """A rollout as the ledger tells it; `active` while the candidate is neither promoted
    nor rolled back."""

    alias: str
    primary: int | None = None
    candidate: int | None = None
    weight: float = 0.0
    step: int = -1  # index into policy.steps; -1 while shadowing
    policy: Policy | None = None
    paused: bool = False
    active: bool = False
    step_started: datetime | None = None  # the current window's start: a step, or a hold within it
    step_entered: datetime | None = None  # the current step's start (a hold does not move it)
    started: datetime | None = None
    outcome: str | None = None
    from_config: bool = False  # the rollout (current or last) was started by the serve config's canary block
    applied_config: str | None = None  # fingerprint of the last canary block the serve config started
    last_seq: int = 0
    history: list[str] = field(default_factory=list)


def replay(entries: Sequence[LedgerEntry], alias: str, state: RolloutState | None = None) -> RolloutState:
    """Fold entries (in order) into the alias's rollout state; pass `state` to go on from it."""
    state = state or RolloutState(alias=alias)
    for entry in entries:
        state.last_seq = max(state.last_seq, entry.seq)
        if entry.alias != alias:
            continue
        if entry.kind == "alias_move":
            state.primary = entry.version
            if state.active:
                state.outcome = f"{entry.action} to v{entry.version} at {entry.at.isoformat()}"
            state.active, state.candidate, state.weight = False, None, 0.0
            continue
        if entry.action == START and entry.evidence is not None:
            state.policy = Policy.model_validate(entry.evidence.get("policy", {}))
            state.active, state.paused, state.outcome, state.started = True, False, None, entry.at
            state.step = -1 if entry.weight == 0 else 0
            state.step_entered = entry.at
            config = entry.evidence.get("serve_config")
            state.from_config = isinstance(config, dict)
            if isinstance(config, dict):
                state.applied_config = config.get("fingerprint")
        elif entry.action == ADVANCE:
            state.step += 1
            state.step_entered = entry.at
        elif entry.action in (PAUSE, RESUME):
            state.paused = entry.action == PAUSE
        elif entry.action in (ROLLBACK, ABORT):
            state.active = False
            state.outcome = f"{entry.action} at {entry.at.isoformat()}: {entry.reason}"
        if entry.weight is not None:
            state.weight, state.candidate = entry.weight, entry.candidate
            state.step_started = entry.at
        state.history.append(f"#{entry.seq} {entry.action}")
    if not state.active:
        state.candidate, state.weight = None, 0.0
    return state


def decide(
    policy: Policy,
    evidence: Evidence,
    window_done: bool,
    window_requests: int | None = None,
    shadowing: bool = False,
    step_age_s: float = 0.0,
) -> Decision:
    """Judge the evidence so far. `window_done`: the step has run a full window (only then
    advance), with `window_requests` answered by the candidate in it (default: all of
    the evidence's). `step_age_s`: since the step began, holds included (how long the
    outcome check has waited for labels)."""
    failures = _failures(policy, evidence, shadowing)
    if failures:
        return Decision("rollback", failures)
    if not window_done:
        return Decision("hold", ["window still open"])
    waiting = _waiting_for_labels(policy, evidence, step_age_s)
    if waiting is not None:
        return waiting
    candidate = evidence.candidate
    if shadowing:
        if evidence.compared < policy.min_compared:
            return Decision("hold", [f"only {evidence.compared} rows scored in the shadow (need {policy.min_compared})"])
    else:
        if (answered := candidate.requests if window_requests is None else window_requests) < policy.min_requests:
            return Decision("hold", [f"only {answered} candidate requests this window (need {policy.min_requests})"])
        # a step advances only once every check has had its sample: a candidate whose
        # answers were not yet compared with the primary's has not been judged on them
        if evidence.compared < policy.min_compared:
            return Decision("hold", [f"only {evidence.compared} candidate rows compared with the primary (need {policy.min_compared})"])
    return Decision("advance", ["every check passed over a full window"])


def _waiting_for_labels(policy: Policy, evidence: Evidence, step_age_s: float) -> Decision | None:
    """A step whose window is done holds for labels, until `wait_s` past its window."""
    if policy.outcomes is None:
        return None
    _, short = judge(policy.outcomes, evidence.labelled)
    if short is None:
        return None
    if step_age_s < policy.window_s + policy.outcomes.wait_s:
        return Decision("hold", [f"waiting for labelled rows: {short}"])
    verdict: Verdict = "rollback" if policy.outcomes.on_timeout == "rollback" else "advance"
    return Decision(verdict, [f"labels did not arrive within {policy.outcomes.wait_s:g} s of the window: {short}; on_timeout is {verdict}"])


def _failures(policy: Policy, evidence: Evidence, shadowing: bool) -> list[str]:
    primary, candidate = evidence.primary, evidence.candidate
    failures: list[str] = []
    if policy.outcomes is not None and (worse := judge(policy.outcomes, evidence.labelled)[0]) is not None:
        failures.append(worse)
    if candidate.requests >= policy.min_error_sample:
        if candidate.error_rate > primary.error_rate + policy.max_error_rate_increase:
            failures.append(
                f"error rate {candidate.error_rate:.2%} against the primary's {primary.error_rate:.2%}"
            )
        if not shadowing:
            failures += _latency(policy, evidence, tail=candidate.requests >= policy.min_tail_sample)
    if evidence.compared >= policy.min_compared:
        if evidence.agreement is not None and evidence.mean_abs_diff is None and evidence.agreement < policy.min_agreement:
            failures.append(f"agrees with the primary on {evidence.agreement:.1%} of rows (need {policy.min_agreement:.0%})")
        if (
            policy.max_mean_abs_diff is not None
            and evidence.mean_abs_diff is not None
            and evidence.mean_abs_diff > policy.max_mean_abs_diff
        ):
            failures.append(f"mean absolute difference {evidence.mean_abs_diff:.4g} (max {policy.max_mean_abs_diff})")
        if evidence.output_psi is not None and evidence.output_psi > policy.max_output_psi:
            failures.append(f"outputs shifted from the primary's: PSI {evidence.output_psi:.2f} (max {policy.max_output_psi})")
    drifted = candidate.max_drift
    if drifted is not None and candidate.input_rows >= policy.drift_rows():
        name, index = drifted
        noise = noise_psi(candidate.input_rows) + (noise_psi(candidate.profile_rows) if candidate.profile_rows else 0.0)
        if index > policy.max_input_psi and index > 4 * noise:
            failures.append(f"input {name!r} drifted from the candidate's training data: PSI {index:.2f} (max {policy.max_input_psi})")
    return failures


def _latency(policy: Policy, evidence: Evidence, tail: bool) -> list[str]:
    """p50 once errors can be judged; p99 only with enough requests (over a small sample
    it is the single slowest request, however fast the version)."""
    primary, candidate = evidence.primary, evidence.candidate
    failures = []
    checked = [("p50", candidate.p50_ms, primary.p50_ms)] + ([("p99", candidate.p99_ms, primary.p99_ms)] if tail else [])
    for label, mine, theirs in checked:
        if mine is None or theirs is None:
            continue
        if mine > theirs * policy.max_latency_ratio and mine - theirs > policy.latency_slack_ms:
            failures.append(f"{label} latency {mine:.1f} ms against the primary's {theirs:.1f} ms")
    return failures
