"""Training data read in two passes into the one matrix the fit needs, and checked on the way.

Reading a folder of partitions into pandas and concatenating held every partition's
frame, the concatenated frame, the matrix the estimator was fitted on, its training and
holdout slices and the copies the preprocessing made: about seven times the matrix at
the peak (docs/results/train_memory.md). Here:

1. `scan` reads each part's schema and label column only. The columns, their kinds and
   the labels are checked across parts (a part that disagrees is named), and the rows
   are split into training and holdout on the labels alone.
2. `fill` reads the parts again a batch at a time and writes each row straight into its
   place in one matrix, training rows first and holdout rows after them, in the order
   the split gave; the checks that need every value (nulls, infinities, text in a
   number column, repeated rows) are accumulated per batch.

What is held: the matrix (float64, or objects when a feature is a category), the
labels, an 8-byte hash per row, and one batch of raw rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from nonstop.errors import DataValidationError
from nonstop.manifest import DataFingerprint, FeatureSpec, Task
from nonstop.schema import frame_to_matrix, matrix_dtype, matrix_to_frame
from training.data import (
    check_columns_match,
    check_infinite,
    check_labels,
    check_numeric_text,
    check_repeated,
    count_infinite,
    first_bad_value,
)
from training.sources import Part, Source


@dataclass(frozen=True)
class Scanned:
    parts: list[Part]
    rows: list[int]  # per part
    columns: list[str]  # the first part's order
    label: str
    labels: pd.Series  # every row's, in reading order
    kinds: dict[str, tuple[str, str]]  # feature -> (kind, dtype)

    @property
    def features(self) -> list[FeatureSpec]:
        return [
            FeatureSpec(name=c, kind=self.kinds[c][0], dtype=self.kinds[c][1])  # type: ignore[arg-type]
            for c in self.columns if c != self.label
        ]  # fmt: skip


def scan(parts: list[Part], label: str) -> Scanned:
    if not parts:
        raise DataValidationError("no partitions to read (is the --since window empty?)")
    first_name, first_columns = "", []
    kinds: dict[str, tuple[str, str, str]] = {}
    labels, rows = [], []
    for part in parts:
        found = part.scan(label)
        if not rows:
            first_name, first_columns = part.name, found.columns
        else:
            check_columns_match(part.name, found.columns, first_name, first_columns)
        for name, (kind, dtype) in found.kinds.items():
            seen = kinds.setdefault(name, (kind, dtype, part.name))
            if seen[0] != kind:
                raise DataValidationError(
                    f"{part.name}: column {name!r} holds {kind} values (dtype {dtype}) but {seen[2]} holds "
                    f"{seen[0]} values (dtype {seen[1]}): every partition must give a column the same type"
                )
            if seen[1] != dtype:  # int64 here, float64 there: read as float64, as concatenation would
                kinds[name] = (kind, "float64" if kind == "number" else seen[1], seen[2])
        rows.append(found.rows)
        if found.labels is not None:
            labels.append(found.labels.reset_index(drop=True))
    if sum(rows) == 0:
        raise DataValidationError("the data has no rows")
    if label not in first_columns:
        raise DataValidationError(f"label column {label!r} is missing (columns: {', '.join(first_columns)})")
    empty = [c for c in first_columns if c != label and c not in kinds]
    if empty:
        raise DataValidationError(f"column {empty[0]!r} is entirely null")
    if not [c for c in first_columns if c != label]:
        raise DataValidationError(f"no feature columns besides the label {label!r}")
    joined = pd.concat(labels, ignore_index=True) if len(labels) > 1 else labels[0]
    return Scanned(parts, rows, first_columns, label, joined.rename(label), {k: v[:2] for k, v in kinds.items()})


def check_scanned_labels(scanned: Scanned, *, task: Task, min_rows: int) -> None:
    check_labels(scanned.labels, scanned.label, min_rows=min_rows, task=task)


@dataclass(frozen=True)
class Split:
    """Where each row read goes: `destination[i]` is the matrix row of the i-th row read."""

    destination: np.ndarray
    train_rows: int


def split(labels: pd.Series, *, task: Task, holdout_fraction: float, seed: int) -> Split:
    """The same rows as splitting the concatenated frame would choose, in the same order."""
    index = np.arange(len(labels))
    stratify = labels.to_numpy() if task == "classification" else None
    train, holdout = train_test_split(index, test_size=holdout_fraction, random_state=seed, stratify=stratify)
    destination = np.empty(len(labels), dtype=np.int64)
    destination[train] = np.arange(len(train))
    destination[holdout] = len(train) + np.arange(len(holdout))
    return Split(destination, len(train))


@dataclass(frozen=True)
class Materialized:
    """The matrix the fit needs: training rows first, then the holdout rows."""

    matrix: np.ndarray
    labels: np.ndarray
    train_rows: int
    features: list[FeatureSpec]
    fingerprint: DataFingerprint

    @property
    def train(self) -> np.ndarray:
        return self.matrix[: self.train_rows]

    @property
    def holdout(self) -> np.ndarray:
        return self.matrix[self.train_rows :]

    def frame(self) -> pd.DataFrame:
        """The features as a frame over the matrix itself (no copy), for the data profile."""
        return pd.DataFrame(self.matrix, columns=[f.name for f in self.features], copy=False)

    def holdout_frame(self, label: str) -> pd.DataFrame:
        """A float matrix's holdout rows as a frame over the matrix itself (no copy)."""
        names = [f.name for f in self.features]
        if self.matrix.dtype == np.float64:
            frame = pd.DataFrame(self.holdout, columns=names, copy=False)
        else:
            frame = matrix_to_frame(self.holdout, self.features)
        frame[label] = self.labels[self.train_rows :]
        return frame


@dataclass
class _Tally:
    """Per-feature counts that need every value, accumulated batch by batch."""

    features: list[FeatureSpec]
    nulls: dict[str, int] = field(default_factory=dict)
    infinite: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)
    example: dict[str, object] = field(default_factory=dict)

    def add(self, batch: pd.DataFrame) -> None:
        for spec in self.features:
            series = batch[spec.name]
            self.nulls[spec.name] = self.nulls.get(spec.name, 0) + int(series.isna().sum())
            if spec.kind == "number":
                self.infinite[spec.name] = self.infinite.get(spec.name, 0) + count_infinite(series)
                continue
            present, numbers = int(series.notna().sum()), int(pd.to_numeric(series, errors="coerce").notna().sum())
            self.present[spec.name] = self.present.get(spec.name, 0) + present
            self.numbers[spec.name] = self.numbers.get(spec.name, 0) + numbers
            if numbers < present and spec.name not in self.example:
                self.example[spec.name] = first_bad_value(series)

    def check(self, rows: int, hashes: np.ndarray) -> None:
        for spec in self.features:
            if self.nulls[spec.name] == rows:
                raise DataValidationError(f"column {spec.name!r} is entirely null")
        check_repeated(int(pd.Series(hashes).duplicated().sum()), rows)
        for spec in self.features:
            if spec.kind == "number":
                check_infinite(spec.name, self.infinite[spec.name])
            else:
                check_numeric_text(spec.name, self.numbers[spec.name], self.present[spec.name], lambda n=spec.name: self.example[n])


def fill(scanned: Scanned, where: Split, source: Source) -> Materialized:
    features = scanned.features
    rows = len(scanned.labels)
    matrix = np.empty((rows, len(features)), dtype=matrix_dtype(features))
    hashes = np.empty(rows, dtype=np.uint64)
    labels = scanned.labels.to_numpy()
    tally = _Tally(features)
    unify = {f.name: f.dtype for f in features if f.kind == "number"}
    offset = 0
    for part, expected in zip(scanned.parts, scanned.rows, strict=True):
        start = offset
        for batch in part.batches(scanned.columns, scanned.label):
            end = offset + len(batch)
            if end > start + expected:
                break
            batch = _unified(batch, unify, scanned.label, labels[offset:end])
            # the row hashes pandas gives the concatenated frame, computed a batch at a time
            hashes[offset:end] = pd.util.hash_pandas_object(batch, index=False).to_numpy()
            tally.add(batch)
            matrix[where.destination[offset:end]] = frame_to_matrix(batch, features)
            offset = end
        if offset - start != expected:
            raise DataValidationError(f"{part.name}: changed while it was read ({expected} rows, then {offset - start})")
    tally.check(rows, hashes)
    ordered = np.empty_like(labels)
    ordered[where.destination] = labels
    digest = hashlib.sha256(hashes.tobytes())
    digest.update(",".join(scanned.columns).encode())
    fingerprint = DataFingerprint(rows=rows, sha256=digest.hexdigest(), source=source.description)
    return Materialized(matrix, ordered, where.train_rows, features, fingerprint)


def _unified(batch: pd.DataFrame, dtypes: dict[str, str], label: str, labels: np.ndarray) -> pd.DataFrame:
    """Number columns typed as across all parts, and the labels as the scan read them."""
    cast = {name: dtype for name, dtype in dtypes.items() if str(batch[name].dtype) != dtype}
    batch = batch.astype(cast) if cast else batch
    return batch.assign(**{label: labels})
