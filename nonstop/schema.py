"""One conversion from rows in schema order to the matrix the estimator was fitted on.

Training and serving both go through here, so a served row is encoded exactly as the
training rows were: float64 when every feature is a number, object otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from nonstop.manifest import FeatureSpec


def matrix_dtype(features: Sequence[FeatureSpec]) -> type:
    return np.float64 if all(f.kind == "number" for f in features) else object


def rows_to_matrix(rows: Sequence[Sequence[Any]], features: Sequence[FeatureSpec]) -> np.ndarray:
    return _nan_for_missing(np.asarray(rows, dtype=matrix_dtype(features)).reshape(len(rows), len(features)))


def columns_to_matrix(columns: Sequence[np.ndarray], features: Sequence[FeatureSpec]) -> np.ndarray:
    """One array per feature, in schema order (binary requests arrive by column)."""
    if matrix_dtype(features) is np.float64:
        return np.column_stack(columns)
    matrix = np.empty((len(columns[0]), len(columns)), dtype=object)
    for position, column in enumerate(columns):
        matrix[:, position] = column
    return _nan_for_missing(matrix)


def frame_to_matrix(frame: pd.DataFrame, features: Sequence[FeatureSpec]) -> np.ndarray:
    columns = [f.name for f in features]
    return _nan_for_missing(frame[columns].to_numpy(dtype=matrix_dtype(features)))


def matrix_to_frame(matrix: np.ndarray, features: Sequence[FeatureSpec]) -> pd.DataFrame:
    """The matrix as the frame an estimator fitted on a DataFrame expects: named columns,
    numbers as float64, a category column as pandas' category dtype where training saw
    one (LightGBM maps those back to its own categories), else as objects."""
    columns: dict[str, Any] = {}
    for position, spec in enumerate(features):
        column = matrix[:, position]
        if spec.kind == "number":
            columns[spec.name] = column.astype(np.float64)
        elif spec.dtype == "category":
            columns[spec.name] = pd.Categorical(column)
        else:
            columns[spec.name] = column.astype(object)
    return pd.DataFrame(columns, copy=False)


def _nan_for_missing(matrix: np.ndarray) -> np.ndarray:
    """JSON null (None) and pandas' NA become NaN, the one missing value the imputers
    recognise: NA breaks them outright, and a None category would be encoded as unknown
    instead of imputed."""
    if matrix.dtype == object:
        matrix[pd.isna(matrix)] = np.nan
    return matrix


def to_python(values: Any) -> list[Any]:
    """numpy scalars to plain JSON-able Python values."""
    return [v.item() if hasattr(v, "item") else v for v in values]
