"""The data profile a version is published with, and the population stability index.

Training writes it (training/profiles.py builds it from the training frame); serving
reads it to tell how far live inputs moved from what a version was trained on. It lives
in the core because both sides need the format and neither may import the other.
Numeric features keep their moments and a decile histogram; categorical ones keep their
most frequent categories, the long tail pooled in `other`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nonstop.registry import Registry

PROFILE_NAME = "profile.json"
# an empty bin would make the PSI infinite; this floor keeps one empty bin a large, finite term
PSI_FLOOR = 1e-4


class NumericProfile(BaseModel):
    """`fractions[i]` is the share of all rows in bin i: below `edges[0]`, between two
    edges, or from `edges[-1]` up; `missing` holds the rest, so together they sum to 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["number"] = "number"
    missing: float
    mean: float
    std: float
    min: float
    max: float
    quantiles: dict[str, float]
    edges: list[float]
    fractions: list[float]


class CategoryProfile(BaseModel):
    """Shares of the most frequent categories; the long tail is pooled in `other`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["category"] = "category"
    missing: float
    frequencies: dict[str, float]
    other: float


FeatureProfile = Annotated[NumericProfile | CategoryProfile, Field(discriminator="kind")]


class DataProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: int
    features: dict[str, FeatureProfile]


def read_profile(registry: Registry, model: str, version: int) -> DataProfile | None:
    """None when the version predates profiles or its profile is unreadable: a missing
    baseline costs a shift table or a drift check, never a training run or a request."""
    data = registry.read_extra(model, version, PROFILE_NAME)
    if data is None:
        return None
    try:
        return DataProfile.model_validate_json(data)
    except ValidationError:
        return None


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts of present values per bin of `edges` (below the first, between, from the last up)."""
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two distributions over the same bins (shares)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))
