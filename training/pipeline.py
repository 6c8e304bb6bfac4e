"""The built-in estimators, and the user's own through a factory (`--pipeline`)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from nonstop.errors import ConfigError
from nonstop.manifest import FeatureSpec, Task

Estimator = Literal["auto", "logreg", "ridge", "forest"]
FIT_BATCH_ROWS = 65_536
_FOR_TASK: dict[str, tuple[Task, ...]] = {
    "logreg": ("classification",),
    "ridge": ("regression",),
    "forest": ("classification", "regression"),
}


def _model(kind: Estimator, task: Task, seed: int, n_estimators: int) -> Any:
    """logreg / ridge: the cheap defaults. forest: slow to load on purpose when
    n_estimators is large, which is how the rollout report proves a long load costs no
    capacity."""
    if kind == "auto":
        kind = "logreg" if task == "classification" else "ridge"
    if task not in _FOR_TASK[kind]:
        raise ConfigError(f"--estimator {kind} does not do {task} (for {task}: {', '.join(k for k, t in _FOR_TASK.items() if task in t)})")
    if kind == "forest":
        forest = RandomForestClassifier if task == "classification" else RandomForestRegressor
        return forest(n_estimators=n_estimators, random_state=seed, n_jobs=1)
    if kind == "ridge":
        return Ridge()
    return LogisticRegression(max_iter=2000, random_state=seed)


def build_pipeline(
    features: Sequence[FeatureSpec],
    seed: int,
    estimator: Estimator = "auto",
    n_estimators: int = 100,
    task: Task = "classification",
) -> Pipeline:
    """Columns are addressed by position: the built-ins are fitted on plain arrays, the
    input serving's numpy fast path takes."""
    numeric = [i for i, f in enumerate(features) if f.kind == "number"]
    categorical = [i for i, f in enumerate(features) if f.kind == "category"]
    numeric_steps = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    model = _model(estimator, task, seed, n_estimators)
    if not categorical:
        return Pipeline([("prep", numeric_steps), ("clf", model)])
    prep = ColumnTransformer(
        [
            ("num", numeric_steps, numeric),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                categorical,
            ),
        ]
    )
    return Pipeline([("prep", prep), ("clf", model)])


def fit_in_place(estimator: Any, matrix: np.ndarray, labels: np.ndarray) -> bool:
    """Fit a built-in numeric pipeline without copying its matrix, which it overwrites
    (imputed, then scaled); False, and nothing done, for any other estimator.

    A plain fit needs about three times the matrix: the imputer sorts a copy of it to
    find the medians, the scaler subtracts the mean into another and sums a third. Here
    the medians are found a column at a time and the imputer is fitted on them alone
    (the median of one row is that row), the scaler learns its statistics a batch of
    rows at a time (partial_fit), both transform the rows where they lie, and the model
    is fitted on the result. The fitted steps are the objects a plain fit leaves, the
    `copy` settings serving relies on untouched."""
    prep = estimator.named_steps.get("prep") if isinstance(estimator, Pipeline) else None
    steps = dict(prep.steps) if isinstance(prep, Pipeline) else {}
    imputer, scaler = steps.get("simpleimputer"), steps.get("standardscaler")
    if not isinstance(imputer, SimpleImputer) or not isinstance(scaler, StandardScaler) or matrix.dtype != np.float64:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column: NaN, as the plain fit finds
        medians = np.array([np.nanmedian(matrix[:, j]) for j in range(matrix.shape[1])])
    if np.isnan(medians).any():
        return False  # the imputer would drop that column: left to the plain fit
    imputer.fit(medians.reshape(1, -1))
    batches = [slice(start, start + FIT_BATCH_ROWS) for start in range(0, len(matrix), FIT_BATCH_ROWS)]
    for rows in batches:
        _transform_where_it_lies(imputer, matrix[rows])
        scaler.partial_fit(matrix[rows])
    for rows in batches:
        _transform_where_it_lies(scaler, matrix[rows])
    estimator.steps[-1][1].fit(matrix, labels)
    return True


def _transform_where_it_lies(step: Any, rows: np.ndarray) -> None:
    copying = step.copy
    step.copy = False
    try:
        out = step.transform(rows)
    finally:
        step.copy = copying
    if not np.shares_memory(out, rows):
        rows[...] = out


def load_factory(spec: str) -> Callable[[], Any]:
    """`module:function` (a module on the import path, the working directory included) or
    `path/to/file.py:function`."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ConfigError(f"--pipeline {spec!r}: expected module:function or path/to/file.py:function")
    try:
        module = _import(where)
    except ConfigError:
        raise
    except Exception as exc:  # the user's module may raise anything while it is imported
        raise ConfigError(f"--pipeline {spec!r}: importing {where!r} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"--pipeline {spec!r}: {where!r} has no function {name!r}")
    return factory


def _import(where: str) -> Any:
    if where.endswith(".py") or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"--pipeline: no file {where!r}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"--pipeline: cannot import {where!r}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` would: the user's own modules
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name and where.startswith(exc.name):
            raise ConfigError(f"--pipeline: no module {where!r} on the import path") from exc
        raise


def unfitted_from(factory: Callable[[], Any], spec: str) -> Any:
    """The factory's estimator, checked to be one scikit-learn can clone and fit."""
    try:
        estimator = factory()
    except Exception as exc:  # user code: whatever it raises is the problem to report
        raise ConfigError(f"--pipeline {spec!r}: the factory raised {type(exc).__name__}: {exc}") from exc
    missing = [m for m in ("fit", "predict", "get_params") if not callable(getattr(estimator, m, None))]
    if missing:
        raise ConfigError(
            f"--pipeline {spec!r}: the factory returned a {type(estimator).__name__}, not a scikit-learn "
            f"estimator (no {', '.join(missing)})"
        )
    try:
        return clone(estimator)
    except Exception as exc:
        raise ConfigError(f"--pipeline {spec!r}: scikit-learn cannot clone what the factory returned: {exc}") from exc
