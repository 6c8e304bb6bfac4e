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

from nonstop.capture import CaptureConfig, Served, filesystem, records_table, root_of, write_records
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
