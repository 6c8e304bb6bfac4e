"""`nonstop train` as a data scientist runs it: a real subprocess, real files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier

from nonstop.loading import TrustPolicy, load_version
from nonstop.registry import Registry
from nonstop.schema import frame_to_matrix
from tests.conftest import MODEL, train_into
from training import demo
from training.job import _compare
from training.pipeline import evaluate


def run_train(registry: Registry, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nonstop", "train", "--data", str(data), "--model", MODEL, "--registry", registry.uri, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_train_publishes_and_promotes(registry: Registry, demo_data: Path) -> None:
    done = run_train(registry, demo_data, "--promote")
    assert done.returncode == 0, done.stderr
    assert "version=1" in done.stdout
    assert registry.resolve(MODEL, "production") == 1


def test_a_candidate_worse_than_production_is_not_promoted(registry: Registry, demo_data: Path) -> None:
    production = load_version(registry, MODEL, train_into(registry, demo_data).manifest.version, TrustPolicy())
    holdout = demo.day_frame(5)
    labels = holdout["target"].to_numpy()
    weak = DummyClassifier(strategy="most_frequent").fit(frame_to_matrix(holdout, production.manifest.features), labels)
    weak_metrics = evaluate(weak, frame_to_matrix(holdout, production.manifest.features), labels)
    verdict = _compare(production, holdout, labels, weak_metrics)
    assert not verdict.not_worse
    assert verdict.production_metrics["accuracy"] > weak_metrics["accuracy"]
    assert "worse than production v1" in verdict.reason


def _frame() -> pd.DataFrame:
    return demo.day_frame(0)


def _without_label(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["target"])


def _null_column(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(mean_radius=np.nan)


def _text_in_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype({"mean_texture": object})
    frame.loc[3, "mean_texture"] = "abc"
    return frame


def _missing_feature(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["worst_area"])


def _few_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.head(12)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_without_label, "label column 'target' is missing"),
        (_null_column, "column 'mean_radius' is entirely null"),
        (_text_in_numbers, "column 'mean_texture' must be number as in production.*'abc'"),
        (_missing_feature, "required feature column\\(s\\) missing: worst_area"),
        (_few_rows, "only 12 rows"),
    ],
)
def test_bad_training_data_exits_nonzero_naming_the_problem(
    registry: Registry, demo_data: Path, tmp_path: Path, mutate, message: str
) -> None:
    train_into(registry, demo_data)
    path = tmp_path / "bad.csv"
    mutate(_frame()).to_csv(path, index=False)
    done = run_train(registry, path, "--promote")
    assert done.returncode == 2
    assert re.search(message, done.stderr), done.stderr
    assert "Traceback" not in done.stderr
    assert registry.versions(MODEL) == [1]


def test_an_empty_file_and_a_missing_path_are_refused(registry: Registry, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    done = run_train(registry, empty)
    assert done.returncode == 2 and "the file is empty" in done.stderr
    done = run_train(registry, tmp_path / "nowhere")
    assert done.returncode == 2 and "no data at" in done.stderr
    assert registry.models() == []
