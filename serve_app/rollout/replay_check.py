"""The rollout policy's optional precondition: a passing replay before the first step.

A canary learns from live traffic by giving the candidate some of it. A candidate that
would plainly disagree with production on yesterday's traffic, or do worse on its labels,
should not answer anyone to show it. `nonstop replay` (nonstop/batch/replay.py) measures
exactly that offline and records it as a signed `decision/replay` entry; with
`Policy.require_replay` set, a rollout starts only when the ledger holds such a replay of
the candidate against the alias it would take over, recent enough and passing the
thresholds here. The newest replay decides: an older passing one does not outweigh a
later failure.

The entries judged are the verified ledger's (nonstop/ledger.py `verified`), as for every
move of a rollout: a replay entry that was edited, forged or left unsigned makes the
ledger fail to verify, so nothing starts on it. Pure functions: no I/O, the clock is
passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nonstop.batch.evidence import REPLAY, Comparison, ReplayEvidence
from nonstop.ledger import LedgerEntry
from nonstop.registry import PRODUCTION

ACCURACY, RMSE = "accuracy", "rmse"  # the labelled quality judged: a classifier's, a regression's


class ReplayRequirement(BaseModel):
    """`require_replay:` in a rollout policy (or a serve config's canary block)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_age_h: float = Field(default=24.0, gt=0, le=90 * 24, description="hours from the replay's entry to the start, at most")
    min_rows: int = Field(default=100, ge=1, description="captured rows both the candidate and production answered")
    min_agreement: float | None = Field(
        default=0.95, ge=0, le=1, description="classes: share of rows the candidate predicted as production answered; None: not checked"
    )
    max_mean_abs_diff: float | None = Field(default=None, ge=0, description="numbers: mean |candidate - production|; None: not checked")
    max_quality_drop: float | None = Field(
        default=None, ge=0,
        description="on the labelled rows: accuracy points below production's, or a share of production's RMSE above it; None: not checked",
    )  # fmt: skip
    min_labelled: int = Field(default=100, ge=1, description="labelled rows before quality is judged (with max_quality_drop)")


class ReplayRelied(BaseModel):
    """The replay a rollout starts on: kept in its start entry, shown by `nonstop rollout start`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=1, description="the replay's ledger entry")
    at: datetime
    age_h: float = Field(ge=0, description="hours from the replay to the check")
    comparison: Comparison

    def line(self) -> str:
        return f"relied on the replay at ledger entry #{self.seq} ({self.age_h:.1f} h old): {self.comparison.line()}"


@dataclass(frozen=True)
class ReplayCheck:
    replay: ReplayRelied | None  # the newest readable replay of the candidate, passing or not
    failure: str | None  # why the rollout may not start; None: it may


def check_replay(
    requirement: ReplayRequirement, entries: Sequence[LedgerEntry], *, model: str, candidate: int, alias: str, now: datetime
) -> ReplayCheck:
    """Judge the newest replay of `candidate` against `alias` among the verified `entries`."""
    run = f"run `nonstop replay {candidate} --model {model}" + ("`" if alias == PRODUCTION else f" --alias {alias}`")
    found = [e for e in entries if (e.kind, e.action, e.alias, e.candidate) == ("decision", REPLAY, alias, candidate)]
    if not found:
        against = "" if alias == PRODUCTION else f" against {alias}"
        return ReplayCheck(None, f"no replay of v{candidate}{against} in the ledger; {run}")
    newest = found[-1]
    try:
        evidence = ReplayEvidence.model_validate((newest.evidence or {}).get(REPLAY))
    except ValidationError:
        return ReplayCheck(None, f"the replay of v{candidate} at ledger entry #{newest.seq} holds no readable evidence; {run}")
    age_h = max(0.0, (now - newest.at).total_seconds() / 3600)
    relied = ReplayRelied(seq=newest.seq, at=newest.at, age_h=age_h, comparison=evidence.comparison)
    if age_h > requirement.max_age_h:
        old = f"the newest replay of v{candidate} (ledger entry #{newest.seq}) is {age_h:.1f} h old"
        return ReplayCheck(relied, f"{old} (max {requirement.max_age_h:g} h); {run} again")
    failures = _failures(requirement, evidence.comparison)
    return ReplayCheck(relied, "; ".join(f"replay of v{candidate} {f}" for f in failures) if failures else None)


def _failures(requirement: ReplayRequirement, comparison: Comparison) -> list[str]:
    if comparison.rows < requirement.min_rows:
        return [f"compared {comparison.rows} rows (need {requirement.min_rows})"]
    failures = []
    agreement, diff = comparison.agreement, comparison.mean_abs_diff
    if requirement.min_agreement is not None and diff is None and agreement is not None and agreement < requirement.min_agreement:
        failures.append(f"agreed on {agreement:.1%} (need {requirement.min_agreement * 100:g}%)")
    if requirement.max_mean_abs_diff is not None and diff is not None and diff > requirement.max_mean_abs_diff:
        failures.append(f"differed from production by {diff:.4g} on average (max {requirement.max_mean_abs_diff:g})")
    if requirement.max_quality_drop is not None:
        failures += _quality(requirement.max_quality_drop, requirement.min_labelled, comparison)
    return failures


def _quality(drop: float, min_labelled: int, comparison: Comparison) -> list[str]:
    """Accuracy may fall by `drop` points; RMSE may grow by a share `drop` of production's."""
    if comparison.labelled < min_labelled:
        return [f"had {comparison.labelled} labelled rows (need {min_labelled} to judge quality)"]
    ours, theirs = comparison.candidate_metrics, comparison.baseline_metrics
    if ACCURACY in ours and ACCURACY in theirs:
        if ours[ACCURACY] < theirs[ACCURACY] - drop:
            return [f"scored accuracy {ours[ACCURACY]:.4f} against production's {theirs[ACCURACY]:.4f} (at most {drop:g} lower)"]
        return []
    if RMSE in ours and RMSE in theirs:
        if ours[RMSE] > theirs[RMSE] * (1 + drop):
            return [f"scored RMSE {ours[RMSE]:.4g} against production's {theirs[RMSE]:.4g} (at most {drop:.0%} higher)"]
        return []
    return ["has no labelled accuracy or RMSE to judge quality on"]
