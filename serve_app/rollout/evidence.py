"""Live evidence about a version: what it answered, how fast, how it compares, what it saw.

Two halves. `VersionStats` is a small, mergeable tally a replica keeps per version
(counts, a fixed latency histogram, input counts on the version's own profile bins,
paired comparisons with the other version, both versions' outputs on the paired rows):
replicas report deltas and the
rollout controller adds them up, so no raw request ever leaves a replica. The pure
functions below turn tallies into the numbers a policy judges (error rate, latency
percentiles, agreement, mean absolute difference, PSI of outputs and per-feature input
drift against the training profile), with no I/O and no clock, so they are tested on
plain arrays.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from nonstop.profile import CategoryProfile, DataProfile, NumericProfile, bin_counts, psi
from serve_app.rollout.outcome_check import LabelledEvidence

# geometric steps over the latencies a request can take: a percentile read from these
# bins is within one step's ratio of the exact value
LATENCY_EDGES_S: tuple[float, ...] = tuple(float(e) for e in np.geomspace(0.00025, 30.0, 48))


class VersionStats(BaseModel):
    """A tally for one version over some period; `merge` adds another one in."""

    model_config = ConfigDict(extra="forbid")

    requests: int = 0
    errors: int = 0
    rows: int = 0
    latency: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_EDGES_S) + 1))
    inputs: dict[str, list[int]] = Field(default_factory=dict, description="rows per profile bin, missing last")
    input_rows: int = 0
    compared: int = 0
    agreed: int = 0
    abs_diff: float = 0.0
    compared_outputs: dict[str, int] = Field(default_factory=dict, description="this version's outputs on the compared rows")
    their_outputs: dict[str, int] = Field(default_factory=dict, description="the other version's outputs on the same rows")
    _pending: np.ndarray | None = PrivateAttr(default=None)
    _bins: InputBins | None = PrivateAttr(default=None)

    def merge(self, other: VersionStats) -> None:
        other.settle()
        self.requests += other.requests
        self.errors += other.errors
        self.rows += other.rows
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]
        for name, counts in other.inputs.items():
            mine = self.inputs.get(name)
            self.inputs[name] = list(counts) if mine is None else [a + b for a, b in zip(mine, counts, strict=True)]
        self.input_rows += other.input_rows
        self.compared += other.compared
        self.agreed += other.agreed
        self.abs_diff += other.abs_diff
        _add_counts(self.compared_outputs, other.compared_outputs)
        _add_counts(self.their_outputs, other.their_outputs)

    @property
    def empty(self) -> bool:
        return self.requests == 0 and self.compared == 0 and self.input_rows == 0

    # --- recording (a replica calls these) ----------------------------------------------

    def answered(self, latency_s: float, rows: int, ok: bool = True) -> None:
        self.requests += 1
        self.rows += rows if ok else 0
        self.errors += 0 if ok else 1
        self.latency[int(np.searchsorted(LATENCY_EDGES_S, latency_s, side="right"))] += 1

    def saw(self, matrix: np.ndarray, bins: InputBins) -> None:
        """Count a request's rows on the profile's bins: numbers in one vectorized pass
        (tallied in a matrix until `settle`), categories one by one."""
        counts = bins.count(matrix)
        self._pending = counts if self._pending is None else self._pending + counts
        self._bins = bins
        for position, name, baseline in bins.categories:
            self._add_inputs(name, feature_counts(matrix[:, position], baseline))
        self.input_rows += len(matrix)

    def settle(self) -> VersionStats:
        """Fold the vectorized counts into `inputs`; call before reading or sending them."""
        if self._pending is not None and self._bins is not None:
            for name, counts in self._bins.as_lists(self._pending).items():
                self._add_inputs(name, counts)
        self._pending = None
        return self

    def _add_inputs(self, name: str, counts: list[int]) -> None:
        mine = self.inputs.get(name)
        self.inputs[name] = counts if mine is None else [a + b for a, b in zip(mine, counts, strict=True)]

    def paired(self, mine: Sequence[Any], theirs: Sequence[Any], output_edges: Sequence[float] | None = None) -> None:
        """The same rows, predicted by this version and the one it is compared with; both
        sides' outputs are tallied on one set of bins (the primary's, for numbers), so the
        output shift compares the versions on the same inputs, not on the different
        populations that sticky keys send to each."""
        self.compared += len(mine)
        self.agreed += sum(1 for a, b in zip(mine, theirs, strict=True) if a == b)
        if all(_is_number(v) for v in (*mine[:1], *theirs[:1])):
            self.abs_diff += float(np.abs(np.asarray(mine, dtype=float) - np.asarray(theirs, dtype=float)).sum())
        _add_counts(self.compared_outputs, Counter(output_keys(mine, output_edges)))
        _add_counts(self.their_outputs, Counter(output_keys(theirs, output_edges)))


def _add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for key, count in counts.items():
        into[key] = into.get(key, 0) + count


class InputBins:
    """A version's profile compiled for live rows: the numeric features' bin edges as one
    matrix (padded with +inf), so binning a request is a few numpy calls, not one per feature."""

    def __init__(self, profile: DataProfile, names: Sequence[str]) -> None:
        numeric = [(i, n, b) for i, n in enumerate(names) if isinstance(b := profile.features.get(n), NumericProfile)]
        self.categories = [(i, n, b) for i, n in enumerate(names) if isinstance(b := profile.features.get(n), CategoryProfile)]
        self._names = [n for _, n, _ in numeric]
        self._positions = [i for i, _, _ in numeric]
        self._lengths = [len(b.edges) for _, _, b in numeric]
        self._width = max(self._lengths, default=0)
        self._edges = np.full((len(numeric), self._width), np.inf)
        for row, (_, _, baseline) in enumerate(numeric):
            self._edges[row, : len(baseline.edges)] = baseline.edges

    def count(self, matrix: np.ndarray) -> np.ndarray:
        """(features, width + 2) counts: bin i as `bin_counts` numbers them, missing last."""
        columns = np.asarray(matrix[:, self._positions], dtype=np.float64)
        index = (columns[:, :, None] >= self._edges[None, :, :]).sum(axis=2)
        index[np.isnan(columns)] = self._width + 1
        span = self._width + 2
        flat = index + np.arange(len(self._names))[None, :] * span
        return np.bincount(flat.ravel(), minlength=len(self._names) * span).reshape(len(self._names), span)

    def as_lists(self, counts: np.ndarray) -> dict[str, list[int]]:
        return {
            name: [*counts[row, : length + 1].tolist(), int(counts[row, self._width + 1])]
            for row, (name, length) in enumerate(zip(self._names, self._lengths, strict=True))
        }


# --- pure statistics ----------------------------------------------------------------------


def error_rate(errors: int, requests: int) -> float:
    return errors / requests if requests else 0.0


def latency_percentile(counts: Sequence[int], q: float, edges: Sequence[float] = LATENCY_EDGES_S) -> float | None:
    """The upper edge of the bucket holding the q-th quantile, in seconds (None if no data)."""
    total = sum(counts)
    if total == 0:
        return None
    rank = math.ceil(q * total)
    running = 0
    for index, count in enumerate(counts):
        running += count
        if running >= rank:
            return edges[index] if index < len(edges) else math.inf
    return math.inf


def agreement_rate(a: Sequence[Any], b: Sequence[Any]) -> float | None:
    """Share of rows where two versions predicted the same class."""
    if len(a) != len(b):
        raise ValueError(f"paired predictions differ in length: {len(a)} and {len(b)}")
    return sum(1 for x, y in zip(a, b, strict=True) if x == y) / len(a) if a else None


def mean_absolute_difference(a: Sequence[float], b: Sequence[float]) -> float | None:
    if len(a) != len(b):
        raise ValueError(f"paired outputs differ in length: {len(a)} and {len(b)}")
    return float(np.mean(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)))) if a else None


def output_keys(predictions: Sequence[Any], edges: Sequence[float] | None = None) -> list[str]:
    """Classes are their own keys; numeric outputs (scores, regression) fall in bins of `edges`."""
    if edges is None:
        return [str(p) for p in predictions]
    bins = np.searchsorted(edges, np.asarray(predictions, dtype=float), side="right")
    return [f"bin{int(b)}" for b in bins]


def output_edges(sample_outputs: Sequence[Any], bins: int = 10) -> list[float] | None:
    """Bins for numeric outputs from a version's own sample outputs; None for classes."""
    if not sample_outputs or not all(isinstance(v, float) for v in sample_outputs):
        return None
    return [float(e) for e in np.unique(np.quantile(np.asarray(sample_outputs), np.linspace(0, 1, bins + 1)[1:-1]))]


def distribution_psi(expected: dict[str, int], actual: dict[str, int]) -> float | None:
    """PSI between two tallies over the same keys (say, the classes each version predicted)."""
    total_e, total_a = sum(expected.values()), sum(actual.values())
    if not total_e or not total_a:
        return None
    keys = sorted(set(expected) | set(actual))
    return psi([expected.get(k, 0) / total_e for k in keys], [actual.get(k, 0) / total_a for k in keys])


def feature_counts(column: np.ndarray, baseline: NumericProfile | CategoryProfile) -> list[int]:
    """Counts of one feature's live values on its profile's bins, missing values last."""
    if isinstance(baseline, NumericProfile):
        values = np.asarray(column, dtype=np.float64)
        present = values[~np.isnan(values)]
        return [*(int(c) for c in bin_counts(present, baseline.edges)), int(len(values) - len(present))]
    categories = list(baseline.frequencies)
    counts = [0] * (len(categories) + 2)
    index = {c: i for i, c in enumerate(categories)}
    for value in column:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            counts[-1] += 1
        else:
            counts[index.get(str(value), len(categories))] += 1
    return counts


def feature_drift(profile: DataProfile, inputs: dict[str, list[int]], rows: int) -> dict[str, float]:
    """PSI of each feature's live values against the training profile, most drifted first."""
    drift: dict[str, float] = {}
    if rows == 0:
        return drift
    for name, counts in inputs.items():
        baseline = profile.features.get(name)
        if isinstance(baseline, NumericProfile):
            expected = [*baseline.fractions, baseline.missing]
        elif isinstance(baseline, CategoryProfile):
            expected = [*baseline.frequencies.values(), baseline.other, baseline.missing]
        else:
            continue
        if len(expected) != len(counts):
            continue  # tallied against another profile: not comparable
        drift[name] = psi(expected, [c / rows for c in counts])
    return dict(sorted(drift.items(), key=lambda item: item[1], reverse=True))


def noise_psi(rows: int, bins: int = 10) -> float:
    """The PSI two samples of the same data show on average (bins - 1 degrees of freedom,
    the training side taken as exact): small samples look drifted, and a policy must not
    judge before this is well below its threshold."""
    return (bins - 1) / rows if rows else math.inf


class VersionEvidence(BaseModel):
    """One version's numbers over an evaluation window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    requests: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None
    input_rows: int
    profile_rows: int | None = Field(default=None, description="rows the training profile was taken from")
    input_drift: dict[str, float] = Field(description="PSI per feature against this version's training profile")

    @property
    def max_drift(self) -> tuple[str, float] | None:
        return next(iter(self.input_drift.items()), None)


class Evidence(BaseModel):
    """What the policy judges, and what the ledger keeps beside each decision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    primary: VersionEvidence
    candidate: VersionEvidence
    compared: int = Field(description="rows both versions predicted")
    agreement: float | None = Field(description="share of compared rows with the same prediction")
    mean_abs_diff: float | None = Field(description="for numeric outputs: mean |candidate - primary|")
    output_psi: float | None = Field(description="PSI of the candidate's outputs against the primary's on the compared rows")
    labelled: LabelledEvidence | None = Field(default=None, description="labelled live rows, when the policy checks outcomes")


def version_evidence(version: int, stats: VersionStats, profile: DataProfile | None) -> VersionEvidence:
    p50, p99 = (latency_percentile(stats.latency, q) for q in (0.5, 0.99))
    return VersionEvidence(
        version=version,
        requests=stats.requests,
        errors=stats.errors,
        error_rate=error_rate(stats.errors, stats.requests),
        p50_ms=None if p50 is None else p50 * 1000,
        p99_ms=None if p99 is None else p99 * 1000,
        input_rows=stats.input_rows,
        profile_rows=profile.rows if profile is not None else None,
        input_drift={} if profile is None else feature_drift(profile, stats.inputs, stats.input_rows),
    )


def summarize(
    primary: tuple[int, VersionStats, DataProfile | None],
    candidate: tuple[int, VersionStats, DataProfile | None],
    numeric_outputs: bool,
) -> Evidence:
    """The candidate's `compared`/`agreed`/`abs_diff` and its paired outputs count its rows
    also scored by the primary."""
    cand = candidate[1]
    return Evidence(
        primary=version_evidence(*primary),
        candidate=version_evidence(*candidate),
        compared=cand.compared,
        agreement=cand.agreed / cand.compared if cand.compared else None,
        mean_abs_diff=cand.abs_diff / cand.compared if cand.compared and numeric_outputs else None,
        output_psi=distribution_psi(cand.their_outputs, cand.compared_outputs),
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
