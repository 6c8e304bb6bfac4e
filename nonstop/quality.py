"""Live quality per version and role: captured answers scored against the outcomes that arrived.

The task's metrics on the labelled rows only (a row whose label has not arrived is not
a mistake): accuracy and macro F1 for a classifier; RMSE, MAE and R² for a regression.
Computed by sklearn.metrics from the joined frame (nonstop/outcomes.py `joined`), so a
figure here is the one anyone gets from the same Parquet files by hand.

A classifier's ROC AUC and log loss need its probabilities, which a record holds only
when the request asked for them (`?probabilities=true`): they are computed on the
labelled rows that carry them, with the columns in the order of the version's manifest
`classes`. A metric that cannot be computed (no such row, one class among the labels,
the class order unknown) is left out of `metrics` and named in `omitted` with the reason:
a dashboard never reads a NaN, and a reader learns why a figure is missing.

`labelled_scores` is what a rollout's outcome check compares (serve_app/rollout/outcome_check.py):
one score per labelled row (1 for a right class, 0 for a wrong one; the squared error of
a regression), summarised by count, mean and variance, which is all a two-sample test
needs.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from sklearn import metrics
from sklearn.exceptions import UndefinedMetricWarning

from nonstop.errors import NonstopError
from nonstop.labelled_score import LabelledScore
from nonstop.manifest import Manifest, Scalar, Task

PROBABILITY_METRICS = ("roc_auc", "log_loss")
NO_PROBABILITIES = "no labelled row carries probabilities (captured only for requests that asked for them: ?probabilities=true)"


class VersionQuality(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    role: str
    captured: int
    labelled: int
    metrics: dict[str, float]
    with_probabilities: int | None = Field(
        default=None,
        description="a classifier's labelled rows that carry probabilities (ROC AUC and log loss are on those); None for a regression",
    )
    omitted: dict[str, str] = Field(default={}, description="metric -> why it could not be computed on these rows")


def live_quality(
    frame: pd.DataFrame,
    task: Task,
    since: datetime | None = None,
    classes: Mapping[int, Sequence[Scalar]] | None = None,
    captured: Mapping[tuple[int, str], int] | None = None,
) -> list[VersionQuality]:
    """One line per (version, role) captured since `since`. `classes`: each version's
    classes in its probability columns' order (`class_orders`); a version missing from
    it gets no ROC AUC or log loss, and says so. `captured`: the count of records per
    (version, role) when `frame` holds only the labelled ones (nonstop/outcomes.py
    `labelled`); without it every record is in `frame` and counted there."""
    if since is not None and len(frame):
        frame = frame[frame["timestamp"] >= pd.Timestamp(since)]
    groups = {(int(v), str(r)): g for (v, r), g in frame.groupby(["version", "role"], sort=True)} if len(frame) else {}
    counts = dict(captured) if captured is not None else {key: len(group) for key, group in groups.items()}
    lines = []
    for version, role in sorted(counts):
        group = groups.get((version, role), frame.iloc[:0])
        labelled = group[group["label"].notna()]
        found = _metrics(labelled, task) if len(labelled) else {}
        omitted: dict[str, str] = {}
        with_probabilities = None
        if task == "classification" and len(labelled):
            rows = labelled[labelled["probabilities"].notna()] if "probabilities" in labelled else labelled.iloc[:0]
            with_probabilities = len(rows)
            scores, omitted = _probability_metrics(rows, (classes or {}).get(int(version)), int(version))
            found |= scores
        elif task == "classification":
            with_probabilities = 0
        lines.append(
            VersionQuality(
                version=version, role=role, captured=counts[(version, role)], labelled=len(labelled),
                metrics=found, with_probabilities=with_probabilities, omitted=omitted,
            )
        )  # fmt: skip
    return lines


def class_orders(frame: pd.DataFrame, manifest_of: Callable[[int], Manifest]) -> dict[int, list[Scalar]]:
    """Each captured version's classes from its manifest: the order its probabilities
    were captured in. A version whose manifest cannot be read is left out, so its
    probability metrics are omitted, named, rather than failing every other line."""
    found: dict[int, list[Scalar]] = {}
    for version in sorted({int(v) for v in frame["version"].unique()}) if len(frame) else []:
        try:
            found[version] = list(manifest_of(version).classes)
        except NonstopError:
            continue
    return found


def _probability_metrics(rows: pd.DataFrame, classes: Sequence[Scalar] | None, version: int) -> tuple[dict[str, float], dict[str, str]]:
    """ROC AUC and log loss on the labelled rows that carry probabilities, or why not.

    The labels are turned into indexes of `classes` and sklearn is given every index as
    `labels=`, so a window in which a class never occurred still scores against all the
    columns. Multiclass AUC is one-vs-rest, macro-averaged over the classes present among
    the labels (a class with no positive has no AUC of its own); with all present it is
    exactly `roc_auc_score(..., multi_class="ovr")`. Binary AUC scores the second class's
    column, the positive class of predict_proba."""
    why = _unscorable(rows, classes, version)
    if why is not None or classes is None:
        return {}, dict.fromkeys(PROBABILITY_METRICS, why or "")
    truth = np.array([_class_index(label, classes) for label in rows["label"]])
    scores = np.vstack([np.asarray(p, dtype=np.float64) for p in rows["probabilities"]])
    indexes = list(range(len(classes)))
    found: dict[str, float] = {}
    omitted: dict[str, str] = {}
    try:
        found["log_loss"] = float(metrics.log_loss(truth, scores, labels=indexes))
    except ValueError as exc:
        omitted["log_loss"] = str(exc)
    present = np.unique(truth)
    if len(present) < 2:
        omitted["roc_auc"] = f"only one class ({classes[int(present[0])]!r}) among the labels: ROC AUC needs two"
        return found, omitted
    try:
        if len(classes) == 2:
            found["roc_auc"] = float(metrics.roc_auc_score(truth, scores[:, 1]))
        else:
            with warnings.catch_warnings():  # the absent classes' undefined AUCs, left out of the mean below
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                per_class = metrics.roc_auc_score(truth, scores, multi_class="ovr", labels=indexes, average=None)
            found["roc_auc"] = float(np.mean(np.asarray(per_class)[present]))
    except ValueError as exc:
        omitted["roc_auc"] = str(exc)
    return {name: found[name] for name in PROBABILITY_METRICS if name in found}, omitted


def _unscorable(rows: pd.DataFrame, classes: Sequence[Scalar] | None, version: int) -> str | None:
    """Why these rows give no probability metric, or None when they do."""
    if not len(rows):
        return NO_PROBABILITIES
    if classes is None:
        return f"the class order of v{version} is unknown (no manifest of it was read)"
    if not classes:
        return f"v{version}'s manifest lists no classes"
    widths = sorted({len(p) for p in rows["probabilities"]})
    if widths != [len(classes)]:
        return f"probabilities of {', '.join(map(str, widths))} column(s), but v{version} has {len(classes)} classes"
    strangers = [label for label in rows["label"] if _class_index(label, classes) is None]
    if strangers:
        return f"label {strangers[0]!r} is not a class of v{version} ({', '.join(map(repr, classes[:10]))})"
    return None


def _class_index(label: Any, classes: Sequence[Scalar]) -> int | None:
    """The column of `label` among `classes`: as the outcomes check matched it (a label
    read back from Parquet may be 1.0 for class 1)."""
    for index, known in enumerate(classes):
        if known == label or str(known) == str(label) or _same_number(known, label):
            return index
    return None


def _same_number(known: Any, value: Any) -> bool:
    real = numbers.Real
    return isinstance(known, real) and isinstance(value, real) and not isinstance(value, bool) and float(known) == float(value)


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
