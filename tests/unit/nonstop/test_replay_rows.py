"""The parts of `nonstop replay` and `nonstop score --compare` that need no cluster: the
one comparison summary both print, and the captured rows a replay scores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sklearn import metrics

from nonstop.batch.evidence import compare
from nonstop.batch.replay import LABEL, REQUEST_ID, SERVED_PREDICTION, SERVED_VERSION, captured_rows
from nonstop.capture import CaptureConfig, Served, filesystem, records_table, root_of, write_records
from nonstop.errors import DataValidationError
from nonstop.outcomes import Outcome, check, store
from nonstop.registry import Registry
from tests.conftest import MODEL


def test_the_summary_is_agreement_plus_the_live_quality_metrics_on_labelled_rows_only() -> None:
    baseline, candidate = [0, 1, 1, 0, 1], [0, 1, 0, 0, 0]
    labels = [0, None, 0, float("nan"), 1]
    found = compare(baseline, candidate, task="classification", baseline_name="served", candidate_version=2, labels=labels)
    assert (found.rows, found.agreement, found.labelled) == (5, 0.6, 3)
    truth, base, cand = [0, 0, 1], [0, 1, 1], [0, 0, 0]
    assert found.baseline_metrics["accuracy"] == metrics.accuracy_score(truth, base)
    assert found.candidate_metrics["f1_macro"] == metrics.f1_score(truth, cand, average="macro")
    assert found.mean_abs_diff is None and "v2 vs served on 5 rows: agreement 60.00%" in found.line()


def test_a_regression_summary_has_the_mean_absolute_difference_and_no_labels_no_metrics() -> None:
    found = compare([1.0, 2.0], [1.5, 1.0], task="regression", baseline_name="v1", candidate_version=3)
    assert (found.agreement, found.mean_abs_diff, found.labelled, found.candidate_metrics) == (0.0, 0.75, 0, {})


def _served(manifest, request_id: str, at: datetime, role: str, rows: slice) -> Served:  # type: ignore[no-untyped-def]
    matrix = np.asarray(manifest.samples.inputs[rows], dtype=np.float64)
    return Served(request_id, at, MODEL, 1, role, manifest.features, matrix, manifest.samples.outputs[rows])


def test_a_replay_reads_what_production_answered_in_the_window_with_the_labels_that_arrived(trained: Registry) -> None:
    manifest = trained.manifest(MODEL, 1)
    root = root_of(trained.uri, CaptureConfig())
    now = datetime.now(UTC)
    fs, path = filesystem(root)
    write_records(fs, path, records_table([
        _served(manifest, "new", now, "primary", slice(0, 3)),
        _served(manifest, "new", now, "shadow", slice(0, 3)),   # another version's answer, never the client's
        _served(manifest, "old", now - timedelta(days=3), "primary", slice(3, 5)),  # outside the window
    ]))  # fmt: skip
    store(fs, path, MODEL, check([Outcome(request_id="new", label=manifest.classes[0])], manifest))

    rows = captured_rows(root, MODEL, now - timedelta(days=1))
    assert rows.num_rows == 3 and set(rows.column(REQUEST_ID).to_pylist()) == {"new"}
    assert set(manifest.feature_names) <= set(rows.column_names)  # features under their own names
    assert rows.column(SERVED_PREDICTION).to_pylist() == manifest.samples.outputs[0:3]
    assert rows.column(SERVED_VERSION).to_pylist() == [1, 1, 1]
    assert rows.column(LABEL).to_pylist() == [manifest.classes[0]] * 3
    first = manifest.feature_names[0]
    assert rows.column(first).to_pylist() == [float(r[first] if isinstance(r, dict) else r[0]) for r in manifest.samples.inputs[0:3]]

    with pytest.raises(DataValidationError, match="no traffic of 'breast_cancer' answered by production was captured since"):
        captured_rows(root, MODEL, now + timedelta(hours=1))
