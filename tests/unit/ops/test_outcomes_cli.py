"""`nonstop outcomes` and `nonstop quality` as an operator runs them: a real subprocess on a
real registry whose captures folder holds real Parquet records."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from nonstop.capture import CaptureConfig, Served, filesystem, records_table, root_of, write_records
from nonstop.quality import NO_PROBABILITIES
from nonstop.registry import Registry
from tests.conftest import MODEL


def _nonstop(registry: Registry, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nonstop_ops", *args, "--registry", registry.uri]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_outcomes_from_csv_join_and_quality_reports_each_version(trained: Registry, tmp_path: Path) -> None:
    manifest = trained.manifest(MODEL, 1)
    matrix = np.asarray(manifest.samples.inputs[:4], dtype=np.float64)
    served = Served("r1", datetime.now(UTC), MODEL, 1, "primary", manifest.features, matrix, manifest.samples.outputs[:4])
    write_records(*filesystem(root_of(trained.uri, CaptureConfig())), records_table([served]))
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": ["r1", "gone"], "label": [manifest.samples.outputs[0], manifest.classes[0]]}).to_csv(labels, index=False)

    stored = _nonstop(trained, "outcomes", "--model", MODEL, "--data", str(labels))
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout) == {"stored": 2, "unknown": 1, "unknown_ids": ["gone"]}
    assert "1 id(s) match no captured record yet" in stored.stderr

    quality = _nonstop(trained, "quality", "--model", MODEL, "--since", "7d")
    assert quality.returncode == 0, quality.stderr
    [line] = json.loads(quality.stdout)
    assert (line["version"], line["role"], line["captured"], line["labelled"]) == (1, "primary", 4, 4)
    assert line["metrics"]["accuracy"] == float(np.mean([manifest.samples.outputs[0] == p for p in manifest.samples.outputs[:4]]))


def test_a_bad_outcomes_file_is_refused_naming_the_problem(trained: Registry, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": ["a", "a"], "label": [0, 1]}).to_csv(labels, index=False)
    repeated = _nonstop(trained, "outcomes", "--model", MODEL, "--data", str(labels))
    assert repeated.returncode == 2 and "'a' appear more than once" in repeated.stderr
    pd.DataFrame({"id": ["a"], "label": [0]}).to_csv(labels, index=False)
    missing = _nonstop(trained, "outcomes", "--model", MODEL, "--data", str(labels))
    assert missing.returncode == 2 and "no column(s) request_id" in missing.stderr
    text = tmp_path / "labels.txt"
    text.write_text("request_id,label\n")
    assert "from .csv or .parquet" in _nonstop(trained, "outcomes", "--model", MODEL, "--data", str(text)).stderr


def test_quality_prints_auc_and_log_loss_on_the_rows_with_probabilities_and_why_one_is_missing(trained: Registry, tmp_path: Path) -> None:
    """Six requests asked for probabilities, two did not, and the shadow comparison
    carries none: the printed ROC AUC and log loss are sklearn's on the six rows,
    accuracy is on all eight, and the shadow line names why it has neither."""
    manifest = trained.manifest(MODEL, 1)
    assert manifest.samples.probabilities is not None and len(manifest.classes) == 2
    inputs, probabilities = manifest.samples.inputs, manifest.samples.probabilities
    served = [
        Served(f"r{i}", datetime.now(UTC), MODEL, 1, role, manifest.features, np.asarray([inputs[i]], dtype=np.float64),
               [manifest.samples.outputs[i]], [probabilities[i]] if role == "primary" and i < 6 else None)
        for i in range(8) for role in ("primary", "shadow")
    ]  # fmt: skip
    write_records(*filesystem(root_of(trained.uri, CaptureConfig())), records_table(served))
    labels = [manifest.classes[i % 2] for i in range(8)]
    data = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": [f"r{i}" for i in range(8)], "label": labels}).to_csv(data, index=False)
    assert _nonstop(trained, "outcomes", "--model", MODEL, "--data", str(data)).returncode == 0

    quality = _nonstop(trained, "quality", "--model", MODEL)
    assert quality.returncode == 0, quality.stderr
    primary, shadow = json.loads(quality.stdout)
    assert (primary["role"], primary["labelled"], primary["with_probabilities"], primary["omitted"]) == ("primary", 8, 6, {})
    truth, scores = [label == manifest.classes[1] for label in labels[:6]], np.asarray(probabilities[:6])
    assert primary["metrics"]["roc_auc"] == pytest.approx(roc_auc_score(truth, scores[:, 1]), rel=1e-12)
    assert primary["metrics"]["log_loss"] == pytest.approx(log_loss(labels[:6], scores, labels=manifest.classes), rel=1e-12)
    assert primary["metrics"]["accuracy"] == accuracy_score(labels, manifest.samples.outputs)
    assert (shadow["role"], shadow["with_probabilities"], set(shadow["metrics"])) == ("shadow", 0, {"accuracy", "f1_macro"})
    assert shadow["omitted"] == {"roc_auc": NO_PROBABILITIES, "log_loss": NO_PROBABILITIES}
