"""One version's score on its labelled rows: what the rollout policy's outcome check
compares (serve_app/rollout/outcome_check.py) and nonstop/quality.py computes.

A module of its own, with nothing heavier than pydantic, so the rollout commands and the
policy that hold it as evidence start without scikit-learn and pandas.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LabelledScore(BaseModel):
    """One version's labelled rows, as a two-sample test sees them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    score: Literal["accuracy", "squared_error"] = Field(description="per row: right (1) or wrong (0); or (prediction - label)^2")
    rows: int = Field(description="labelled rows")
    mean: float = Field(description="accuracy, or mean squared error")
    variance: float = Field(description="sample variance of the per-row score (0 for one row)")
