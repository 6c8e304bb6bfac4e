"""A classifier's live ROC AUC and log loss on real Parquet captures, against sklearn by hand.

The records are written as replicas write them (nonstop/capture.py), the labels stored as
the outcomes route stores them, and the expected figures computed from the files read
back by pandas, so a figure `nonstop quality` shows is the one anyone gets by hand.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from nonstop.capture import FEATURE_PREFIX, RECORDS, Served, filesystem, records_table, write_records
from nonstop.manifest import FeatureSpec, Manifest, Scalar
from nonstop.outcomes import Outcome, check, joined, labelled, store
from nonstop.quality import NO_PROBABILITIES, VersionQuality, live_quality
from nonstop.registry import Registry
from tests.conftest import MODEL

FEATURES = [FeatureSpec(name="x", kind="number", dtype="float64")]
BINARY: list[Scalar] = [0, 1]
WINES: list[Scalar] = ["barbera", "barolo", "grignolino"]


@pytest.fixture
def classifier(trained_once: Path) -> Manifest:
    return Registry(str(trained_once)).manifest(MODEL, 1)


def _write(tmp_path: Path, rows: list[tuple[str, Scalar, list[float] | None]], version: int = 1) -> None:
    """One single-row request per (request id, prediction, probabilities or None)."""
    fs, root = filesystem(str(tmp_path))
    served = [
        Served(rid, datetime.now(UTC), "m", version, "primary", FEATURES, np.array([[float(i)]]), [predicted],
               None if probabilities is None else [probabilities])
        for i, (rid, predicted, probabilities) in enumerate(rows)
    ]  # fmt: skip
    write_records(fs, root, records_table(served))


def _label(tmp_path: Path, manifest: Manifest, labels: dict[str, Scalar]) -> pd.DataFrame:
    fs, root = filesystem(str(tmp_path))
    store(fs, root, "m", check([Outcome(request_id=rid, label=label) for rid, label in labels.items()], manifest))
    return joined(fs, root, "m")


def _by_hand(tmp_path: Path, labels: dict[str, Scalar]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The records as pandas reads the folder, with their labels joined by request id:
    every labelled row, and those of them that carry probabilities."""
    stored = pd.read_parquet(tmp_path / RECORDS)
    stored["label"] = stored["request_id"].map(labels)
    labelled = stored[stored["label"].notna()]
    return labelled, labelled[labelled["probabilities"].notna()]


def _random_rows(classes: list[Scalar], n: int, seed: int, some_without: bool = True) -> list[tuple[str, Scalar, list[float] | None]]:
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(len(classes)), n)
    return [
        (f"r{i}", classes[int(np.argmax(p))], None if some_without and i % 4 == 0 else [float(v) for v in p])
        for i, p in enumerate(probabilities)
    ]


@pytest.mark.parametrize("classes", [BINARY, WINES], ids=["binary", "three_classes"])
def test_auc_and_log_loss_equal_sklearns_on_the_rows_with_probabilities(
    tmp_path: Path, classifier: Manifest, classes: list[Scalar]
) -> None:
    rows = _random_rows(classes, 60, seed=len(classes))
    _write(tmp_path, rows)
    labels = {rid: classes[i % len(classes)] for i, (rid, _, _) in enumerate(rows) if i % 5}  # four in five labelled, every class
    frame = _label(tmp_path, classifier.model_copy(update={"classes": classes}), labels)
    [line] = live_quality(frame, "classification", classes={1: classes})

    labelled, with_probabilities = _by_hand(tmp_path, labels)
    truth, scores = with_probabilities["label"].tolist(), np.vstack(with_probabilities["probabilities"].tolist())
    expected_auc = (
        roc_auc_score([t == classes[1] for t in truth], scores[:, 1])  # the positive class: predict_proba's second column
        if len(classes) == 2
        else roc_auc_score(truth, scores, multi_class="ovr", labels=classes)
    )
    assert line.with_probabilities == len(with_probabilities) and 0 < len(with_probabilities) < len(labelled) == line.labelled
    assert line.metrics["roc_auc"] == pytest.approx(expected_auc, rel=1e-12)
    assert line.metrics["log_loss"] == pytest.approx(log_loss(truth, scores, labels=classes), rel=1e-12)
    assert line.omitted == {}


def test_a_window_without_one_class_still_scores_against_every_column(tmp_path: Path, classifier: Manifest) -> None:
    """grignolino never occurred: log loss is over all three columns (labels=), and the
    one-vs-rest AUC is the mean of the two classes that did occur."""
    rows = _random_rows(WINES, 40, seed=7, some_without=False)
    _write(tmp_path, rows)
    labels = {rid: WINES[i % 2] for i, (rid, _, _) in enumerate(rows)}
    frame = _label(tmp_path, classifier.model_copy(update={"classes": WINES}), labels)
    [line] = live_quality(frame, "classification", classes={1: WINES})

    _, rows_by_hand = _by_hand(tmp_path, labels)
    truth, scores = rows_by_hand["label"].tolist(), np.vstack(rows_by_hand["probabilities"].tolist())
    per_class = [roc_auc_score([t == wine for t in truth], scores[:, index]) for index, wine in enumerate(WINES[:2])]
    assert line.metrics["roc_auc"] == pytest.approx(np.mean(per_class), rel=1e-12)
    assert line.metrics["log_loss"] == pytest.approx(log_loss(truth, scores, labels=WINES), rel=1e-12)
    assert not math.isnan(line.metrics["roc_auc"]) and line.omitted == {}


def test_rows_without_probabilities_count_for_accuracy_but_not_for_auc_or_log_loss(tmp_path: Path, classifier: Manifest) -> None:
    """Rows answered without probabilities are all wrong, those with them all right: an
    accuracy on the wrong subset, or an AUC or log loss that took a row without them,
    would differ from the figures by hand."""
    rows: list[tuple[str, Scalar, list[float] | None]] = [(f"p{i}", i % 2, [0.8, 0.2] if i % 2 == 0 else [0.3, 0.7]) for i in range(6)]
    rows += [(f"n{i}", 1 - i % 2, None) for i in range(4)]
    _write(tmp_path, rows)
    labels: dict[str, Scalar] = {rid: int(rid[1:]) % 2 for rid, _, _ in rows}
    frame = _label(tmp_path, classifier.model_copy(update={"classes": BINARY}), labels)
    [line] = live_quality(frame, "classification", classes={1: BINARY})

    labelled, with_probabilities = _by_hand(tmp_path, labels)
    assert (line.labelled, line.with_probabilities) == (10, 6)
    assert line.metrics["accuracy"] == accuracy_score(labelled["label"].astype(int), labelled["prediction"]) == 0.6
    scores = np.vstack(with_probabilities["probabilities"].tolist())
    truth = with_probabilities["label"].astype(int)
    assert line.metrics["log_loss"] == pytest.approx(log_loss(truth, scores, labels=BINARY), rel=1e-12)
    assert line.metrics["roc_auc"] == roc_auc_score(truth, scores[:, 1]) == 1.0


def test_one_class_among_the_labels_omits_auc_naming_why_and_keeps_log_loss(tmp_path: Path, classifier: Manifest) -> None:
    rows = _random_rows(WINES, 12, seed=3, some_without=False)
    _write(tmp_path, rows)
    frame = _label(tmp_path, classifier.model_copy(update={"classes": WINES}), {rid: "barolo" for rid, _, _ in rows})
    [line] = live_quality(frame, "classification", classes={1: WINES})
    assert "roc_auc" not in line.metrics
    assert line.omitted == {"roc_auc": "only one class ('barolo') among the labels: ROC AUC needs two"}
    assert set(line.metrics) == {"accuracy", "f1_macro", "log_loss"} and all(math.isfinite(v) for v in line.metrics.values())


def test_without_probabilities_or_a_class_order_both_are_omitted_with_the_reason(tmp_path: Path, classifier: Manifest) -> None:
    """No request asked for probabilities (v1); v2's class order is not known: no NaN,
    no crash, and each line says why its two figures are missing."""
    _write(tmp_path, [(f"a{i}", i % 2, None) for i in range(4)])
    _write(tmp_path, [(f"b{i}", i % 2, [0.4, 0.6]) for i in range(4)], version=2)
    labels: dict[str, Scalar] = {f"{v}{i}": i % 2 for v in "ab" for i in range(4)}
    frame = _label(tmp_path, classifier.model_copy(update={"classes": BINARY}), labels)
    lines = {line.version: line for line in live_quality(frame, "classification", classes={1: BINARY})}
    assert lines[1] == VersionQuality(
        version=1, role="primary", captured=4, labelled=4, metrics={"accuracy": 1.0, "f1_macro": 1.0},
        with_probabilities=0, omitted={"roc_auc": NO_PROBABILITIES, "log_loss": NO_PROBABILITIES},
    )  # fmt: skip
    assert set(lines[2].metrics) == {"accuracy", "f1_macro"} and lines[2].with_probabilities == 4
    assert lines[2].omitted["roc_auc"] == "the class order of v2 is unknown (no manifest of it was read)"
    regression = live_quality(frame.assign(label=frame["label"].astype(float)), "regression", classes={1: BINARY})
    assert all(line.with_probabilities is None and line.omitted == {} for line in regression)


def test_labelled_reads_only_the_labelled_rows_without_features_and_gives_the_same_figures(
    tmp_path: Path, classifier: Manifest
) -> None:
    """A replica measures on a day of captures: it must not hold the day in memory. The
    records are counted on two columns, and only those whose label arrived are read,
    without their features, yet every line equals the one of the whole join."""
    rows = _random_rows(BINARY, 200, seed=7)
    _write(tmp_path, rows[:120], version=1)
    _write(tmp_path, rows[120:], version=2)
    labels = {rid: BINARY[i % 2] for i, (rid, _, _) in enumerate(rows) if i % 10 == 3}  # one row in ten labelled
    whole = _label(tmp_path, classifier.model_copy(update={"classes": BINARY}), labels)
    found = labelled(*filesystem(str(tmp_path)), "m")

    assert set(found.frame["request_id"]) == set(labels) and len(found.frame) == len(labels)
    assert not [c for c in found.frame.columns if c.startswith(FEATURE_PREFIX)]
    assert found.captured == {(1, "primary"): 120, (2, "primary"): 80}
    classes = {1: BINARY, 2: BINARY}
    assert live_quality(found.frame, "classification", classes=classes, captured=found.captured) == live_quality(
        whole, "classification", classes=classes
    )


def test_labelled_keeps_to_the_window(tmp_path: Path, classifier: Manifest) -> None:
    rows = _random_rows(BINARY, 20, seed=3)
    _write(tmp_path, rows)
    _label(tmp_path, classifier.model_copy(update={"classes": BINARY}), {rid: 1 for rid, _, _ in rows})
    later = labelled(*filesystem(str(tmp_path)), "m", since=datetime.now(UTC))
    assert later.captured == {} and later.frame.empty
