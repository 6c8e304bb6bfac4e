"""A numpy-only prediction path for linear pipelines, used only where it provably agrees.

scikit-learn spends about a millisecond of Python per `predict` call on validation and
metadata routing, which dominates a one-row request; the arithmetic of an imputer, a
scaler and a linear model is a few vector operations. `compile_predictor` recognises
exactly those fitted steps and returns their arithmetic; anything else returns None and
keeps scikit-learn's own `predict`. The loader checks the result against the estimator
before serving with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

Transform = Callable[[np.ndarray], np.ndarray]
FastPredict = Callable[[np.ndarray], np.ndarray]


def _imputer(step: SimpleImputer) -> Transform | None:
    statistics = np.asarray(step.statistics_, dtype=np.float64)
    exact = isinstance(step.missing_values, float) and np.isnan(step.missing_values)
    if not exact or step.add_indicator or np.isnan(statistics).any():
        return None
    return lambda x: np.where(np.isnan(x), statistics, x)


def _scaler(step: StandardScaler) -> Transform:
    mean = step.mean_ if step.with_mean else None
    scale = step.scale_ if step.with_std else None
    return lambda x: (x if mean is None else x - mean) / (1.0 if scale is None else scale)


def _final(step: Any) -> FastPredict | None:
    if type(step) is LogisticRegression:
        coef, intercept, classes = step.coef_, step.intercept_, step.classes_
        if coef.shape[0] == 1:
            return lambda x: classes[((x @ coef[0]) + intercept[0] > 0).astype(int)]
        return lambda x: classes[np.argmax(x @ coef.T + intercept, axis=1)]
    if type(step) in (LinearRegression, Ridge):
        coef, intercept = step.coef_, step.intercept_
        return lambda x: x @ coef.T + intercept
    return None


def _steps(estimator: Any) -> list[Any]:
    if type(estimator) is not Pipeline:
        return [estimator]
    flat: list[Any] = []
    for _, step in estimator.steps:
        flat.extend(_steps(step))
    return flat


def compile_predictor(estimator: Any) -> FastPredict | None:
    steps = _steps(estimator)
    final = _final(steps[-1])
    if final is None:
        return None
    transforms: list[Transform] = []
    for step in steps[:-1]:
        if type(step) is StandardScaler:
            transforms.append(_scaler(step))
            continue
        imputer = _imputer(step) if type(step) is SimpleImputer else None
        if imputer is None:
            return None
        transforms.append(imputer)

    def predict(matrix: np.ndarray) -> np.ndarray:
        for transform in transforms:
            matrix = transform(matrix)
        return final(matrix)

    return predict


def agrees(fast: FastPredict, estimator: Any, matrix: np.ndarray, inputs: Any = None) -> bool:
    """Same answers as scikit-learn on these rows (exact for labels, close for values);
    `inputs`: the same rows as the estimator takes them (a named frame, if it was fitted
    on one), else the matrix."""
    ours, theirs = fast(matrix), estimator.predict(matrix if inputs is None else inputs)
    if ours.shape != theirs.shape:
        return False
    if np.issubdtype(theirs.dtype, np.floating):
        return bool(np.allclose(ours, theirs, rtol=1e-9, atol=1e-12))
    return bool((ours == theirs).all())
