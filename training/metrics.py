"""Tasks, the metrics that score each, and which way each metric is better.

Every candidate and the production version it is compared with are scored here, on the
same holdout rows fed through the same input path serving uses, so the gate compares
like with like.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)

from nonstop.errors import ConfigError
from nonstop.manifest import Task

HOLDOUT_ROWS = "holdout_rows"
# a metric's direction: True when higher is better
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "f1_macro": True,
    "roc_auc": True,
    "log_loss": False,
    "rmse": False,
    "mae": False,
    "r2": True,
}
TASK_METRICS: dict[Task, tuple[str, ...]] = {
    "classification": ("accuracy", "f1_macro", "roc_auc", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}
DEFAULT_GATE_METRIC: dict[Task, str] = {"classification": "accuracy", "regression": "rmse"}
# an integer label with more distinct values than this is a quantity, not a class
MAX_INTEGER_CLASSES = 20


def detect_task(labels: pd.Series) -> Task:
    """Text, booleans and categories are classes; floats are quantities; integers are
    classes unless there are many distinct values (counts, prices in cents)."""
    if pd.api.types.is_bool_dtype(labels) or not pd.api.types.is_numeric_dtype(labels):
        return "classification"
    present = labels.dropna()
    if pd.api.types.is_float_dtype(labels) and not np.array_equal(present, np.round(present)):
        return "regression"
    return "classification" if present.nunique() <= MAX_INTEGER_CLASSES else "regression"


def check_gate_metric(task: Task, metric: str | None) -> str:
    metric = metric or DEFAULT_GATE_METRIC[task]
    if metric not in TASK_METRICS[task]:
        raise ConfigError(f"gate metric {metric!r} does not score {task} (choose from {', '.join(TASK_METRICS[task])})")
    return metric


def evaluate(task: Task, predicted: np.ndarray, labels: np.ndarray, probabilities: np.ndarray | None, classes: Any) -> dict[str, float]:
    """Holdout metrics of one model: its predictions (and probabilities, where it has
    them) against the labels. ROC AUC and log loss need probabilities."""
    metrics: dict[str, float] = {}
    if task == "regression":
        truth, guess = np.asarray(labels, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
        metrics["rmse"] = float(root_mean_squared_error(truth, guess))
        metrics["mae"] = float(mean_absolute_error(truth, guess))
        metrics["r2"] = float(r2_score(truth, guess))
    else:
        metrics["accuracy"] = float(accuracy_score(labels, predicted))
        metrics["f1_macro"] = float(f1_score(labels, predicted, average="macro"))
        if probabilities is not None:
            metrics.update(_probability_metrics(labels, probabilities, list(classes)))
    metrics[HOLDOUT_ROWS] = float(len(labels))
    return metrics


def _probability_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: list[Any]) -> dict[str, float]:
    scores = {"log_loss": float(log_loss(labels, probabilities, labels=classes))}
    present = set(np.unique(labels).tolist())
    if len(present) < 2:
        return scores  # AUC is undefined on a holdout of one class
    if len(classes) == 2:
        scores["roc_auc"] = float(roc_auc_score(labels, probabilities[:, 1]))
    elif present == set(classes):
        scores["roc_auc"] = float(roc_auc_score(labels, probabilities, multi_class="ovr", labels=classes))
    return scores
