"""The estimator and the yardstick every candidate and production are measured with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from nonstop.manifest import FeatureSpec

PRIMARY_METRIC = "accuracy"
HOLDOUT_ROWS = "holdout_rows"


Estimator = Literal["logreg", "forest"]


def _classifier(kind: Estimator, seed: int, n_estimators: int) -> Any:
    """logreg: the cheap default. forest: slow to load on purpose when n_estimators is
    large, which is how the rollout report proves a long load costs no capacity."""
    if kind == "forest":
        return RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=1)
    return LogisticRegression(max_iter=2000, random_state=seed)


def build_pipeline(
    features: Sequence[FeatureSpec], seed: int, estimator: Estimator = "logreg", n_estimators: int = 100
) -> Pipeline:
    """Columns are addressed by position: serving feeds plain arrays, never DataFrames."""
    numeric = [i for i, f in enumerate(features) if f.kind == "number"]
    categorical = [i for i, f in enumerate(features) if f.kind == "category"]
    numeric_steps = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    classifier = _classifier(estimator, seed, n_estimators)
    if not categorical:
        return Pipeline([("prep", numeric_steps), ("clf", classifier)])
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
    return Pipeline([("prep", prep), ("clf", classifier)])


def evaluate(estimator: Any, matrix: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    predicted = estimator.predict(matrix)
    metrics = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1_macro": float(f1_score(labels, predicted, average="macro")),
        HOLDOUT_ROWS: float(len(labels)),
    }
    classes = getattr(estimator, "classes_", [])
    if len(classes) == 2 and hasattr(estimator, "predict_proba"):
        metrics["roc_auc"] = float(roc_auc_score(labels, estimator.predict_proba(matrix)[:, 1]))
    return metrics
