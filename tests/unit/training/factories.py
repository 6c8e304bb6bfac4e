"""Factories for `nonstop train --pipeline tests/unit/training/factories.py:<name>`."""

from __future__ import annotations

from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LogisticRegression


def mean_only() -> DummyRegressor:
    """A regressor that ignores its features: worse than any real one."""
    return DummyRegressor(strategy="mean")


def raises() -> LogisticRegression:
    raise RuntimeError("the feature store is down")


def not_an_estimator() -> list[str]:
    return ["scaler", "logreg"]


def fails_to_fit() -> LogisticRegression:
    return LogisticRegression(C=-1.0)  # scikit-learn refuses the parameter at fit
