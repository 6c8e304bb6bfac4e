"""A per-feature profile of the training data, and how far new data has shifted from one.

A version keeps no copy of its training rows, so the only way a later run can tell how
its data moved is a profile stored at training time. Numeric features keep their moments
and a decile histogram; categorical ones keep their most frequent categories. A later
run bins its own rows on the parent's edges (or categories), which makes the population
stability index exact on the parent's side without ever needing the parent's rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nonstop.manifest import FeatureKind, FeatureSpec
from nonstop.profile import (  # noqa: F401  (PROFILE_NAME, read_profile: the format's home is the core)
    PROFILE_NAME,
    CategoryProfile,
    DataProfile,
    NumericProfile,
    bin_counts,
    psi,
    read_profile,
)

TOP_CATEGORIES = 20
MODERATE_PSI = 0.1
MAJOR_PSI = 0.25
_DECILES = np.linspace(0.1, 0.9, 9)
_QUANTILES = {"p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}


@dataclass(frozen=True)
class FeatureShift:
    """PSI for every kind; the standardized mean difference only where a mean exists."""

    feature: str
    kind: FeatureKind
    psi: float
    smd: float | None
    parent_mean: float | None
    mean: float | None

    @property
    def level(self) -> str:
        if self.psi >= MAJOR_PSI:
            return "major"
        return "moderate" if self.psi >= MODERATE_PSI else "stable"


@dataclass(frozen=True)
class ShiftReport:
    """`shifts` is sorted most shifted first; `unmatched` had no baseline of its kind."""

    parent_version: int
    parent_rows: int
    rows: int
    shifts: list[FeatureShift]
    unmatched: list[str]

    @property
    def noise_psi(self) -> float:
        """The PSI two samples of the same data show on average at these sizes (decile bins
        give nine degrees of freedom): with a few hundred rows it is not far from MODERATE_PSI."""
        return len(_DECILES) * (1 / self.rows + 1 / self.parent_rows)


def profile_frame(frame: pd.DataFrame, features: Sequence[FeatureSpec]) -> DataProfile:
    return DataProfile(
        rows=len(frame),
        features={f.name: _profile_feature(frame[f.name], f.kind) for f in features},
    )


def shift_from(
    parent: DataProfile, parent_version: int, frame: pd.DataFrame, features: Sequence[FeatureSpec]
) -> ShiftReport:
    """Shift of `frame`'s features from the parent's profile, binned on the parent's bins."""
    shifts: list[FeatureShift] = []
    unmatched: list[str] = []
    for spec in features:
        baseline = parent.features.get(spec.name)
        if isinstance(baseline, NumericProfile) and spec.kind == "number":
            shifts.append(_numeric_shift(spec.name, baseline, frame[spec.name]))
        elif isinstance(baseline, CategoryProfile) and spec.kind == "category":
            shifted = _category_fractions(frame[spec.name], list(baseline.frequencies))
            index = psi([*baseline.frequencies.values(), baseline.other, baseline.missing], shifted)
            shifts.append(FeatureShift(spec.name, "category", index, None, None, None))
        else:
            unmatched.append(spec.name)
    shifts.sort(key=lambda s: s.psi, reverse=True)
    return ShiftReport(parent_version, parent.rows, len(frame), shifts, unmatched)


def _profile_feature(series: pd.Series, kind: FeatureKind) -> NumericProfile | CategoryProfile:
    missing = float(series.isna().mean())
    if kind == "category":
        counts = series.dropna().astype(str).value_counts()
        top = [str(c) for c in counts.index[:TOP_CATEGORIES]]
        *shares, other, _ = _category_fractions(series, top)
        return CategoryProfile(missing=missing, frequencies=dict(zip(top, shares, strict=True)), other=other)
    values = _present(series)
    edges = [float(e) for e in np.unique(np.quantile(values, _DECILES))]
    return NumericProfile(
        missing=missing,
        mean=float(values.mean()),
        std=float(values.std()),
        min=float(values.min()),
        max=float(values.max()),
        quantiles={name: float(np.quantile(values, q)) for name, q in _QUANTILES.items()},
        edges=edges,
        fractions=_bin_fractions(values, edges, len(series)),
    )


def _numeric_shift(name: str, baseline: NumericProfile, series: pd.Series) -> FeatureShift:
    values = _present(series)
    shifted = [*_bin_fractions(values, baseline.edges, len(series)), float(series.isna().mean())]
    mean = float(values.mean())
    pooled = math.sqrt((baseline.std**2 + float(values.std()) ** 2) / 2)
    moved = mean - baseline.mean
    smd = moved / pooled if pooled > 0 else math.copysign(math.inf, moved) if moved else 0.0
    index = psi([*baseline.fractions, baseline.missing], shifted)
    return FeatureShift(name, "number", index, smd, baseline.mean, mean)


def _present(series: pd.Series) -> np.ndarray:
    return series.dropna().to_numpy(dtype=np.float64)


def _bin_fractions(values: np.ndarray, edges: list[float], rows: int) -> list[float]:
    counts = bin_counts(values, edges)
    return [float(c) / rows for c in counts]


def _category_fractions(series: pd.Series, categories: list[str]) -> list[float]:
    """Shares of `categories`, then of everything else, then of missing values."""
    present = series.dropna().astype(str)
    known = present.isin(categories)
    rows = len(series)
    counts = present[known].value_counts()
    shares = [float(counts.get(c, 0)) / rows for c in categories]
    return [*shares, float((~known).sum()) / rows, float(series.isna().mean())]
