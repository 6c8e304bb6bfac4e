"""Live quality per version and role: captured answers scored against the outcomes that arrived.

The task's metrics on the labelled rows only (a row whose label has not arrived is not
a mistake): accuracy and macro F1 for a classifier; RMSE, MAE and R² for a regression.
Computed by sklearn.metrics from the joined frame (nonstop/outcomes.py `joined`), so a
figure here is the one anyone gets from the same Parquet files by hand.

`labelled_scores` is what a rollout's outcome check compares (serve_app/rollout/outcome_check.py):
one score per labelled row (1 for a right class, 0 for a wrong one; the squared error of
a regression), summarised by count, mean and variance, which is all a two-sample test
needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from sklearn import metrics

from nonstop.manifest import Task


class VersionQuality(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    role: str
    captured: int
    labelled: int
    metrics: dict[str, float]


def live_quality(frame: pd.DataFrame, task: Task, since: datetime | None = None) -> list[VersionQuality]:
    """One line per (version, role) captured since `since`."""
    if since is not None and len(frame):
        frame = frame[frame["timestamp"] >= pd.Timestamp(since)]
    lines = []
    for (version, role), group in frame.groupby(["version", "role"], sort=True):
        labelled = group[group["label"].notna()]
        lines.append(
            VersionQuality(
                version=int(version),
                role=str(role),
                captured=len(group),
                labelled=len(labelled),
                metrics=_metrics(labelled, task) if len(labelled) else {},
            )
        )
    return lines


class LabelledScore(BaseModel):
    """One version's labelled rows, as a two-sample test sees them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    score: Literal["accuracy", "squared_error"] = Field(description="per row: right (1) or wrong (0); or (prediction - label)^2")
    rows: int = Field(description="labelled rows")
    mean: float = Field(description="accuracy, or mean squared error")
    variance: float = Field(description="sample variance of the per-row score (0 for one row)")


def labelled_scores(frame: pd.DataFrame, task: Task, versions: Iterable[int]) -> dict[int, LabelledScore]:
    """Per version, every labelled row it predicted (answered or in a rollout's shadow),
    each (request, row) once: a version is judged on what it said, whoever heard it."""
    found = {}
    for version in versions:
        rows = frame[(frame["version"] == version) & frame["label"].notna()].drop_duplicates(["request_id", "row"])
        if not len(rows):
            continue
        if task == "regression":
            score: Literal["accuracy", "squared_error"] = "squared_error"
            values = (rows["prediction"].astype(float).to_numpy() - rows["label"].astype(float).to_numpy()) ** 2
        else:
            score = "accuracy"
            values = np.array([_same(p, t) for p, t in zip(rows["prediction"], rows["label"], strict=True)], dtype=float)
        found[version] = LabelledScore(
            version=version, score=score, rows=len(values), mean=float(values.mean()),
            variance=float(values.var(ddof=1)) if len(values) > 1 else 0.0,
        )  # fmt: skip
    return found


def _same(predicted: object, label: object) -> bool:
    """A class as predicted against the class as labelled (a CSV's "1" is class 1)."""
    return predicted == label or str(predicted) == str(label)


def _metrics(rows: pd.DataFrame, task: Task) -> dict[str, float]:
    truth, predicted = rows["label"].tolist(), rows["prediction"].tolist()
    if task == "regression":
        truth_f, predicted_f = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
        found = {
            "rmse": float(np.sqrt(metrics.mean_squared_error(truth_f, predicted_f))),
            "mae": float(metrics.mean_absolute_error(truth_f, predicted_f)),
        }
        if len(rows) > 1:
            found["r2"] = float(metrics.r2_score(truth_f, predicted_f))
        return found
    return {
        "accuracy": float(metrics.accuracy_score(truth, predicted)),
        "f1_macro": float(metrics.f1_score(truth, predicted, average="macro")),
    }


def task_metrics(truth: list[object], predicted: list[object], task: Task) -> dict[str, float]:
    """The same metrics for any labelled answers: a replay or a batch comparison
    (nonstop/batch/evidence.py) reads like live quality."""
    return _metrics(pd.DataFrame({"label": truth, "prediction": predicted}), task)
