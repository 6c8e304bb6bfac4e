"""`nonstop train` as a data scientist runs it: a real subprocess, real files."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nonstop.errors import DataValidationError
from nonstop.registry import Registry
from tests.conftest import MODEL, train_into
from tests.unit.nonstop.test_signing import KEY
from training import demo


def run_train(registry: Registry, data: Path | str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nonstop_ops", "train", "--data", str(data), "--model", MODEL, "--registry", registry.uri, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_train_publishes_and_promotes(registry: Registry, demo_data: Path) -> None:
    done = run_train(registry, demo_data, "--promote")
    assert done.returncode == 0, done.stderr
    assert "version=1" in done.stdout
    assert registry.resolve(MODEL, "production") == 1


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


def _few_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.head(12)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_without_label, "label column 'target' is missing"),
        (_null_column, "column 'mean_radius' is entirely null"),
        (_text_in_numbers, "column 'mean_texture' looks numeric .* but holds text such as 'abc'"),
        (_few_rows, "only 12 rows"),
    ],
)
@pytest.mark.usefixtures("trained")
def test_bad_training_data_exits_nonzero_naming_the_problem(
    registry: Registry, tmp_path: Path, mutate, message: str
) -> None:
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


def _header_only(path: Path) -> None:
    _frame().head(0).to_csv(path, index=False)


def _partition_loaded_twice(path: Path) -> None:
    pd.concat([_frame(), _frame()], ignore_index=True).to_csv(path, index=False)


def _text_in_a_number_column(path: Path) -> None:
    _text_in_numbers(_frame()).to_csv(path, index=False)


def _infinite_value(path: Path) -> None:
    frame = _frame()
    frame.loc[7, "mean_radius"] = np.inf
    frame.to_csv(path, index=False)


def _date_column(path: Path) -> None:
    _frame().assign(seen_at=pd.Timestamp("2026-11-01")).to_parquet(path.with_suffix(".parquet"), index=False)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (_header_only, "the data has no rows"),
        (_partition_loaded_twice, "120 of 240 rows repeat an earlier row exactly \\(more than 10%\\)"),
        (_text_in_a_number_column, "column 'mean_texture' looks numeric \\(119 of 120 values are numbers\\) but holds text such as 'abc'"),
        (_infinite_value, "column 'mean_radius' has 1 infinite value\\(s\\)"),
        (_date_column, "column 'seen_at' has unsupported dtype datetime64"),
    ],
)
def test_bad_data_for_a_fresh_registry_is_refused_and_publishes_nothing(
    registry: Registry, tmp_path: Path, write, message: str
) -> None:
    """In-process: the CLI turns this error into exit status 2, as the tests above show."""
    path = tmp_path / "day.csv"
    write(path)
    with pytest.raises(DataValidationError, match=message):
        train_into(registry, path if path.exists() else path.with_suffix(".parquet"))
    assert not Path(registry.uri).exists()  # not even a claimed version folder


def test_a_few_repeated_rows_are_accepted(registry: Registry, tmp_path: Path) -> None:
    frame = _frame()
    path = tmp_path / "day.csv"
    pd.concat([frame, frame.head(12)], ignore_index=True).to_csv(path, index=False)  # 12 of 132: under 10%
    assert train_into(registry, path).manifest.version == 1


def test_a_fit_that_fails_midway_publishes_nothing(registry: Registry, tmp_path: Path) -> None:
    """Values that pass validation but overflow the scaler: the fit itself raises."""
    frame = _frame()
    frame["mean_radius"] = np.where(frame.index % 2 == 0, 1e300, -1e300)
    path = tmp_path / "day.csv"
    frame.to_csv(path, index=False)
    done = run_train(registry, path, "--promote")
    assert done.returncode == 2
    assert "error: training failed on this data: Input X contains NaN" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not Path(registry.uri).exists()


def test_no_credential_reaches_the_registry_logs_or_errors(
    tmp_path: Path, demo_data: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """A signing key and a token in the data URI: neither is written, logged or shown."""
    token, key = "data-token-3c9f1e", KEY.get_secret_value()
    registry = Registry(str(tmp_path / "registry"), signing_key=KEY)
    path = tmp_path / "day.csv"
    _frame().to_csv(path, index=False)
    caplog.set_level(logging.DEBUG)
    manifest = train_into(registry, f"file://{path}?token={token}").manifest
    assert manifest.data.source == f"file://{path}?token=***"
    with pytest.raises(DataValidationError, match="cannot open data location") as refused:
        train_into(registry, f"file://reader:{token}@{path}")
    out, err = capfd.readouterr()
    shown = [out, err, caplog.text, str(refused.value)]
    shown += [p.read_bytes().decode(errors="replace") for p in (tmp_path / "registry").rglob("*") if p.is_file()]
    assert not [text for text in shown if token in text or key in text]


# --- data shapes that once trained silently or crashed (issue 11) ----------------------


def _repeated_csv_column(folder: Path) -> Path:
    path = folder / "day.csv"
    text = _frame().to_csv(index=False)
    header, rest = text.split("\n", 1)
    path.write_text(header.replace("mean_texture", "mean_radius", 1) + "\n" + rest)
    return path


def _partitions_that_differ(folder: Path) -> Path:
    _frame().to_csv(folder / "day-1.csv", index=False)
    demo.day_frame(1).drop(columns=["mean_area"]).assign(extra=1.0).to_csv(folder / "day-2.csv", index=False)
    return folder


def _nested(kind: str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        table = pa.Table.from_pandas(_frame(), preserve_index=False)
        rows = table.num_rows
        values = {
            "list": pa.array([[1.0, 2.0]] * rows),
            "struct": pa.array([{"a": 1.0}] * rows),
            "map": pa.array([[("k", 1.0)]] * rows, pa.map_(pa.string(), pa.float64())),
        }[kind]
        path = folder / "day.parquet"
        pq.write_table(table.append_column("nested", values), path)
        return path

    return write


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (_repeated_csv_column, "day.csv: column\\(s\\) 'mean_radius' appear more than once"),
        (_partitions_that_differ, "day-2.csv: columns differ from .*day-1.csv: missing 'mean_area'; extra 'extra'"),
        (_nested("list"), "column 'nested' has nested type list<"),
        (_nested("struct"), "column 'nested' has nested type struct<"),
        (_nested("map"), "column 'nested' has nested type map<"),
    ],
)
def test_repeated_differing_or_nested_columns_exit_nonzero_and_publish_nothing(
    registry: Registry, tmp_path: Path, write: Callable[[Path], Path], message: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(DataValidationError, match=message):
        train_into(registry, write(data))
    assert not Path(registry.uri).exists()


def test_the_cli_exits_nonzero_naming_a_repeated_column(registry: Registry, tmp_path: Path) -> None:
    done = run_train(registry, _repeated_csv_column(tmp_path))
    assert done.returncode == 2 and "'mean_radius' appear more than once" in done.stderr, done.stderr
    assert not Path(registry.uri).exists()
