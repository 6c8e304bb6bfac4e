"""The rollout policy's optional outcome check: candidate against primary on labelled live traffic.

Proxies (agreement, latency, drift) say a candidate behaves like production; only the
labels that arrive later say whether it is right. When a rollout's labels arrive inside
its window, `Policy.outcomes` judges the candidate on them: each version's labelled rows
since the rollout began (nonstop/quality.py `labelled_scores`), compared by a one-sided
test that accounts for the sample size, so a few unlucky rows never roll a good
candidate back:

- a classifier: accuracy, by the two-proportion z-test (pooled);
- a regression: squared errors, by Welch's t-test (unequal variances).

The candidate is *worse* when the test says so at `alpha` and the difference is beyond
`margin`. Nothing is judged before both versions have `min_labelled` labelled rows; a
step that has run its window waits for them (holding) at most `wait_s` more, then takes
`on_timeout`. Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nonstop.labelled_score import LabelledScore


class OutcomeCheck(BaseModel):
    """`outcomes:` in a rollout policy (or a serve config's canary block)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_labelled: int = Field(default=200, ge=2, description="labelled rows of each version before judging")
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="one-sided significance of 'the candidate is worse'")
    margin: float = Field(
        default=0.0, ge=0, description="worsening tolerated: accuracy points (0.01), or a share of the primary's mean squared error"
    )
    wait_s: float = Field(default=3600.0, ge=0, le=7 * 86400, description="after a step's window, how long it holds for labels")
    on_timeout: Literal["advance", "rollback"] = Field(
        default="rollback", description="what a step does when the labels did not arrive in time"
    )


class LabelledEvidence(BaseModel):
    """What the outcome check saw, kept with every decision in the ledger."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    primary: LabelledScore | None
    candidate: LabelledScore | None


@dataclass(frozen=True)
class Comparison:
    statistic: float  # z or t: negative when the candidate does worse
    p_value: float  # one-sided: the chance of a difference this bad were the candidate as good
    worse: bool


def compare(check: OutcomeCheck, primary: LabelledScore, candidate: LabelledScore) -> Comparison:
    """Is the candidate worse than the primary on their labelled rows?"""
    if candidate.score == "accuracy":
        statistic = _two_proportion_z(primary, candidate)
        p_value = 0.5 * math.erfc(-statistic / math.sqrt(2))  # the standard normal's CDF
        beyond_margin = primary.mean - candidate.mean > check.margin
    else:
        from scipy import stats  # here, not at import: the rollout commands and the policy start without scipy

        statistic, df = _welch_t(primary, candidate)
        p_value = float(stats.t.cdf(statistic, df)) if math.isfinite(statistic) else (0.0 if statistic < 0 else 1.0)
        beyond_margin = candidate.mean - primary.mean > check.margin * primary.mean
    return Comparison(statistic, p_value, p_value < check.alpha and beyond_margin)


def _two_proportion_z(primary: LabelledScore, candidate: LabelledScore) -> float:
    """(candidate - primary) accuracy over its pooled standard error."""
    pooled = (primary.mean * primary.rows + candidate.mean * candidate.rows) / (primary.rows + candidate.rows)
    error = math.sqrt(pooled * (1 - pooled) * (1 / primary.rows + 1 / candidate.rows))
    difference = candidate.mean - primary.mean
    return difference / error if error > 0 else _sign(difference)


def _welch_t(primary: LabelledScore, candidate: LabelledScore) -> tuple[float, float]:
    """(primary - candidate) mean squared error over Welch's standard error, and its degrees of freedom."""
    a, b = primary.variance / primary.rows, candidate.variance / candidate.rows
    difference = primary.mean - candidate.mean
    if a + b == 0:
        return _sign(difference), 1.0
    df = (a + b) ** 2 / (a**2 / max(primary.rows - 1, 1) + b**2 / max(candidate.rows - 1, 1))
    return difference / math.sqrt(a + b), df


def _sign(difference: float) -> float:
    """No spread at all: any difference is certain."""
    return -math.inf if difference < 0 else (math.inf if difference > 0 else 0.0)


def judge(check: OutcomeCheck, labelled: LabelledEvidence | None) -> tuple[str | None, str | None]:
    """(a failure, or None) and (why the check cannot pass yet, or None)."""
    primary = labelled.primary if labelled is not None else None
    candidate = labelled.candidate if labelled is not None else None
    have = {"primary": primary.rows if primary else 0, "candidate": candidate.rows if candidate else 0}
    short = [f"{role} {rows}" for role, rows in have.items() if rows < check.min_labelled]
    if short or primary is None or candidate is None:
        return None, f"{', '.join(short)} (need {check.min_labelled} each)"
    found = compare(check, primary, candidate)
    name = "accuracy" if candidate.score == "accuracy" else "mean squared error"
    test = "z" if candidate.score == "accuracy" else "t"
    said = (
        f"labelled {name} {candidate.mean:.4g} (n={candidate.rows}) against the primary's {primary.mean:.4g} "
        f"(n={primary.rows}): {test}={found.statistic:.2f}, p={found.p_value:.2g}"
    )
    return (f"{said} < {check.alpha}", None) if found.worse else (None, None)
