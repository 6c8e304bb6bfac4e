"""One summary of two sets of answers to the same rows: how often they agree, and how
each does against the labels where labels exist.

`nonstop score --compare N` (a version against another on a dataset) and `nonstop
replay` (a candidate against what production answered on captured traffic) both end in
this summary, so a batch check before a canary and a replay read the same way. A
replay's summary is kept in the ledger (`ReplayEvidence`), where a rollout whose policy
requires a passing replay reads it back (serve_app/rollout/replay_check.py). The
labelled metrics are the live-quality ones (nonstop/quality.py), computed by
sklearn.metrics on the labelled rows only: a row without a label is not a mistake.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nonstop.manifest import Task

REPLAY = "replay"  # a replay's ledger entry: its action (`decision/replay`), and its evidence's key


class Comparison(BaseModel):
    """Baseline (production's answers, or the --compare version) against a candidate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline: str = Field(description="what the candidate is compared with: 'v3', or 'served' for captured answers")
    candidate: int
    rows: int = Field(description="rows both answered")
    agreement: float | None = Field(description="share of rows with the same prediction; None on no rows")
    mean_abs_diff: float | None = Field(description="regression: mean |candidate - baseline|")
    labelled: int = Field(description="rows with a label")
    baseline_metrics: dict[str, float]
    candidate_metrics: dict[str, float]

    def line(self) -> str:
        """One line for a terminal."""
        agree = "n/a" if self.agreement is None else f"{self.agreement:.2%}"
        text = f"v{self.candidate} vs {self.baseline} on {self.rows} rows: agreement {agree}"
        if self.mean_abs_diff is not None:
            text += f", mean |diff| {self.mean_abs_diff:.6g}"
        if self.labelled:
            pairs = ", ".join(
                f"{name} {self.baseline_metrics[name]:.4f} -> {self.candidate_metrics[name]:.4f}"
                for name in sorted(self.candidate_metrics)
            )
            text += f"; on {self.labelled} labelled rows: {pairs}"
        return text


class ReplayEvidence(BaseModel):
    """`evidence["replay"]` of a replay's ledger entry: one schema for the writer (`nonstop
    replay`) and the reader (a rollout that requires a passing replay), so neither guesses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    since: datetime = Field(description="the window's start: traffic captured at or after this")
    captured: int = Field(ge=0)
    served_versions: list[int]
    scored: int = Field(ge=0)
    rejected: int = Field(ge=0)
    comparison: Comparison
    out: str = Field(description="where the scored rows were written")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def compare(
    baseline: Sequence[Any],
    candidate: Sequence[Any],
    *,
    task: Task,
    baseline_name: str,
    candidate_version: int,
    labels: Sequence[Any] | None = None,
) -> Comparison:
    """The summary of two answer lists of the same rows (and their labels, None or NaN
    where none arrived)."""
    from nonstop.quality import task_metrics  # here, not at import: a rollout reads ReplayEvidence without scikit-learn

    if len(baseline) != len(candidate) or (labels is not None and len(labels) != len(candidate)):
        raise ValueError("baseline, candidate and labels must describe the same rows")
    rows = len(candidate)
    agreement = float(np.mean([a == b for a, b in zip(baseline, candidate, strict=True)])) if rows else None
    mean_abs_diff = None
    if task == "regression" and rows:
        mean_abs_diff = float(np.mean(np.abs(np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float))))
    known = [] if labels is None else [i for i, label in enumerate(labels) if not _missing(label)]
    truth = [labels[i] for i in known] if labels is not None else []
    return Comparison(
        baseline=baseline_name,
        candidate=candidate_version,
        rows=rows,
        agreement=agreement,
        mean_abs_diff=mean_abs_diff,
        labelled=len(known),
        baseline_metrics=task_metrics(truth, [baseline[i] for i in known], task) if known else {},
        candidate_metrics=task_metrics(truth, [candidate[i] for i in known], task) if known else {},
    )
