"""One batch of rows in, the same rows out scored or refused, each refusal with its reason.

A worker builds one `BatchScorer` (one model load) and calls it on every batch Ray Data
hands it. The rows are checked by the rules serving applies (nonstop/columns.py), row by
row: a bad value refuses its row, never the batch, and never ends the job. Output columns
have fixed types (from the manifest), so every batch writes to the same Parquet schema,
whichever rows it happened to refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from nonstop.columns import number_refusal, number_values, string_refusal, string_values, type_problem
from nonstop.errors import InvalidInput
from nonstop.loading import LoadedModel
from nonstop.schema import columns_to_matrix

VERSION = "version"
PREDICTION = "prediction"
PROBABILITIES = "probabilities"
COMPARE_VERSION = "compare_version"
COMPARE_PREDICTION = "compare_prediction"
AGREES = "agrees"
ABS_DIFF = "abs_diff"
REASON = "reason"
OUTPUT_COLUMNS = (VERSION, PREDICTION, PROBABILITIES, COMPARE_VERSION, COMPARE_PREDICTION, AGREES, ABS_DIFF, REASON)


def prediction_type(model: LoadedModel) -> pa.DataType:
    """The Arrow type of this version's predictions, from its manifest's sample outputs."""
    sample = model.manifest.samples.outputs[0]
    if isinstance(sample, bool):
        return pa.bool_()
    if isinstance(sample, int):
        return pa.int64()
    if isinstance(sample, float):
        return pa.float64()
    return pa.string()


def numeric_outputs(model: LoadedModel) -> bool:
    return model.manifest.task == "regression"


class BatchScorer:
    """The scoring step: `keep` columns carried through, then the outputs and `reason`
    (null on a scored row, the refusal on a refused one)."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        keep: Sequence[str] = (),
        probabilities: bool = False,
        compare: LoadedModel | None = None,
        max_string_length: int,
    ) -> None:
        if probabilities:
            model.require_probabilities()
        self.model, self.compare, self.keep = model, compare, tuple(keep)
        self.probabilities, self.max_string_length = probabilities, max_string_length
        clash = sorted(set(self.keep) & set(OUTPUT_COLUMNS))
        if clash:
            raise InvalidInput(f"--keep column(s) named like an output column: {', '.join(clash)}")

    def __call__(self, table: pa.Table) -> pa.Table:
        reasons = self.refusals(table)
        valid = np.flatnonzero(np.equal(reasons, None))
        every = len(valid) == len(table)  # the common case: no copy of the rows, no list of reasons
        outputs = self._outputs(table if every else table.take(pa.array(valid, type=pa.int64())), valid, len(table))
        columns = {name: table.column(name) for name in self.keep}
        columns.update(outputs)
        columns[REASON] = pa.nulls(len(table), pa.string()) if every else pa.array(reasons.tolist(), type=pa.string())
        return pa.table(columns)

    def refusals(self, table: pa.Table) -> np.ndarray:
        """One reason per row (None: the row is valid), the first problem found in it.
        Columns that are not features are carried or ignored, never refused: a dataset has
        keys and labels beside its features."""
        reasons = np.full(len(table), None, dtype=object)
        unrefused = np.ones(len(table), dtype=bool)

        def refuse(rows: np.ndarray, reason: str) -> None:
            reasons[rows & unrefused] = reason
            unrefused[rows] = False

        names = set(table.column_names)
        missing_keep = [name for name in self.keep if name not in names]
        if missing_keep:
            raise InvalidInput(f"--keep column(s) not in the data: {', '.join(missing_keep)}")
        for spec in self.model.manifest.features:
            problem = (
                f"missing feature column {spec.name}"
                if spec.name not in names
                else type_problem(table.schema.field(spec.name), spec)
            )
            if problem:
                refuse(np.ones(len(table), dtype=bool), problem)
            elif spec.kind == "number":
                values, bad = number_values(table.column(spec.name))
                for row in np.flatnonzero(bad & unrefused):
                    reasons[row] = number_refusal(spec.name, values[row])
                unrefused &= ~bad
            else:
                _, too_long = string_values(table.column(spec.name), self.max_string_length)
                refuse(too_long, string_refusal(spec.name, self.max_string_length))
        return reasons

    def _matrix(self, table: pa.Table) -> np.ndarray:
        features = self.model.manifest.features
        columns = [
            number_values(table.column(f.name))[0]
            if f.kind == "number"
            else string_values(table.column(f.name), self.max_string_length)[0]
            for f in features
        ]
        return columns_to_matrix(columns, features)

    def _outputs(self, valid_rows: pa.Table, valid: np.ndarray, total: int) -> dict[str, pa.Array]:
        model, compare = self.model, self.compare
        matrix = self._matrix(valid_rows) if len(valid) else None
        predictions = model.predict(matrix) if matrix is not None else []
        outputs = {
            VERSION: pa.array(np.full(total, model.version), type=pa.int64()),
            PREDICTION: _spread(predictions, valid, total, prediction_type(model)),
        }
        if self.probabilities:
            proba = model.predict_proba(matrix) if matrix is not None else []
            outputs[PROBABILITIES] = _spread(proba, valid, total, pa.list_(pa.float64()))
        if compare is not None:
            theirs = compare.predict(matrix) if matrix is not None else []
            outputs[COMPARE_VERSION] = pa.array(np.full(total, compare.version), type=pa.int64())
            outputs[COMPARE_PREDICTION] = _spread(theirs, valid, total, prediction_type(compare))
            outputs[AGREES] = _spread([a == b for a, b in zip(predictions, theirs, strict=True)], valid, total, pa.bool_())
            if numeric_outputs(model) and numeric_outputs(compare):
                diffs = np.abs(np.asarray(predictions, dtype=float) - np.asarray(theirs, dtype=float)).tolist()
                outputs[ABS_DIFF] = _spread(diffs, valid, total, pa.float64())
        return outputs


def _spread(values: Sequence[Any], valid: np.ndarray, total: int, kind: pa.DataType) -> pa.Array:
    """Values for the valid rows placed at their positions, null on the refused ones."""
    if len(valid) == total:
        return pa.array(values, type=kind)
    full: list[Any] = [None] * total
    for position, value in zip(valid.tolist(), values, strict=True):
        full[position] = value
    return pa.array(full, type=kind)
