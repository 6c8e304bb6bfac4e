from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from nonstop.compiled import agrees, compile_predictor


def _rows(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    x = x.copy()
    x[np.random.default_rng(seed).random(x.shape) < 0.1] = np.nan
    return x, y


@pytest.mark.parametrize(
    "estimator",
    [
        make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(max_iter=500)),
        make_pipeline(SimpleImputer(), StandardScaler(with_mean=False), Ridge()),
    ],
)
def test_compiled_linear_pipelines_agree_with_sklearn_including_gaps(estimator) -> None:
    x, y = _rows()
    estimator.fit(x, y)
    fast = compile_predictor(estimator)
    assert fast is not None
    assert agrees(fast, estimator, _rows(seed=1)[0])


def test_binary_logistic_regression_maps_back_to_its_labels() -> None:
    x, y = _rows()
    labels = np.where(y == 0, "setosa", "other")
    estimator = make_pipeline(SimpleImputer(), LogisticRegression(max_iter=500)).fit(x, labels)
    fast = compile_predictor(estimator)
    assert fast is not None and set(fast(x)) == {"setosa", "other"}
    assert agrees(fast, estimator, x)


@pytest.mark.parametrize(
    "estimator",
    [
        make_pipeline(SimpleImputer(), RandomForestClassifier(n_estimators=3, random_state=0)),
        make_pipeline(SimpleImputer(), MinMaxScaler(), LogisticRegression(max_iter=500)),
        make_pipeline(SimpleImputer(add_indicator=True), LogisticRegression(max_iter=500)),
    ],
)
def test_anything_else_keeps_sklearns_predict(estimator) -> None:
    x, y = _rows()
    assert compile_predictor(estimator.fit(x, y)) is None
