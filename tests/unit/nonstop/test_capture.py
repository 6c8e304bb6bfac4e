"""The capture layout, retention, outcome checks and live quality on real Parquet files."""

from __future__ import annotations

import gc
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from nonstop.capture import (
    OUTCOMES, RECORDS, CaptureConfig, Records, Served, delete_expired, filesystem, read, records_table, root_of, sampled, write_records,
)  # fmt: skip
from nonstop.errors import DataValidationError
from nonstop.manifest import FeatureSpec, Manifest
from nonstop.outcomes import Outcome, check, joined, store
from nonstop.quality import live_quality
from nonstop.registry import Registry
from tests.conftest import MODEL

FEATURES = [FeatureSpec(name="x", kind="number", dtype="float64"), FeatureSpec(name="colour", kind="category", dtype="category")]


def _served(rid: str, version: int = 1, at: datetime | None = None, excluded: frozenset[str] = frozenset()) -> Served:
    matrix = np.array([[1.5, "red"], [np.nan, None]], dtype=object)
    return Served(rid, at or datetime.now(UTC), "m", version, "primary", FEATURES, matrix, [0, 1], None, excluded)


def test_records_are_typed_hive_partitioned_and_read_by_pandas(tmp_path: Path) -> None:
    fs, root = filesystem(str(tmp_path))
    write_records(fs, root, records_table([_served("a"), _served("b")]))
    write_records(fs, root, records_table([_served("c", version=2, excluded=frozenset({"colour"}))]))
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    assert sorted(p.name for p in (tmp_path / RECORDS / "model=m" / f"date={day}").iterdir()) == ["version=1", "version=2"]
    table = read(fs, root, RECORDS, "m")
    assert table is not None
    assert str(table.schema.field("f_x").type) == "double" and str(table.schema.field("f_colour").type) == "string"
    frame = table.to_pandas().sort_values(["request_id", "row"])
    assert frame["f_colour"].iloc[0] == "red" and frame[["f_colour", "f_x"]].iloc[1].isna().all()  # missing stays missing
    assert frame[frame["version"] == 2]["f_colour"].isna().all()  # left out of version 2's files
    by_pandas = pd.read_parquet(tmp_path / RECORDS)  # the folder as it is, partitions as columns
    assert by_pandas.groupby(by_pandas["version"].astype(int)).size().to_dict() == {1: 4, 2: 2}
    assert set(by_pandas["model"].astype(str)) == {"m"}


def test_each_row_keeps_its_request_its_index_its_day_and_its_own_probabilities() -> None:
    """Requests of one and several rows, with and without probabilities, either side of midnight."""
    midnight = datetime(2026, 12, 7, tzinfo=UTC)
    table = records_table([
        Served("a", midnight - timedelta(microseconds=1), "m", 3, "primary", FEATURES, np.array([[1.0, "red"], [2.0, "blue"]], dtype=object),
               ["x", "y"], [[0.9, 0.1], [0.2, 0.8]]),
        Served("b", midnight, "m", 3, "shadow", FEATURES, np.array([[3.0, None]], dtype=object), ["z"], None),
        Served("c", midnight, "m", 3, "primary", FEATURES, np.array([[4.0, "red"], [5.0, "red"], [6.0, "red"]], dtype=object),
               ["x", "x", "y"], [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]),
    ])  # fmt: skip
    rows = table.to_pylist()
    assert [(r["request_id"], r["row"], r["role"], r["date"]) for r in rows] == [
        ("a", 0, "primary", "2026-12-06"), ("a", 1, "primary", "2026-12-06"), ("b", 0, "shadow", "2026-12-07"),
        ("c", 0, "primary", "2026-12-07"), ("c", 1, "primary", "2026-12-07"), ("c", 2, "primary", "2026-12-07"),
    ]  # fmt: skip
    assert [r["f_x"] for r in rows] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] and [r["f_colour"] for r in rows][1:3] == ["blue", None]
    assert [r["prediction"] for r in rows] == ["x", "y", "z", "x", "x", "y"]
    assert [r["probabilities"] for r in rows] == [[0.9, 0.1], [0.2, 0.8], None, [1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    assert {r["model"] for r in rows} == {"m"} and {r["version"] for r in rows} == {3}
    assert rows[0]["timestamp"] == midnight - timedelta(microseconds=1)
    with pytest.raises(ValueError, match="one model's version"):
        records_table([_served("a"), _served("b", version=2)])


def test_buffered_requests_leave_no_object_for_the_garbage_collector_to_walk() -> None:
    """A replica buffers thousands of requests between writes, in the process that answers
    them: each must add values to the columns, not containers the collector walks again."""
    records = Records("m", 1, FEATURES)
    matrix = np.array([[1.5, "red"]], dtype=object)
    gc.collect()
    before = len(gc.get_objects())
    for n in range(5000):
        records.add(f"r{n}", n, "primary", matrix, [n], [[0.25, 0.75]])
    assert len(gc.get_objects()) - before < 50
    assert records.rows == 5000 and records.table().num_rows == 5000


def test_retention_deletes_only_date_partitions_past_the_period(tmp_path: Path) -> None:
    fs, root = filesystem(str(tmp_path))
    today = date(2026, 12, 5)
    for days_ago in (0, 29, 30, 31, 90):
        at = datetime(2026, 12, 5, 12, tzinfo=UTC) - timedelta(days=days_ago)
        write_records(fs, root, records_table([_served(f"r{days_ago}", at=at)]))
    gone = delete_expired(fs, root, 30, today)
    assert [Path(p).name for p in gone] == ["date=2026-09-06", "date=2026-11-04"]
    left = read(fs, root, RECORDS, "m")
    assert left is not None and sorted(set(left.column("request_id").to_pylist())) == ["r0", "r29", "r30"]


def test_sampling_follows_the_request_id() -> None:
    ids = [f"id-{n}" for n in range(2000)]
    picked = [rid for rid in ids if sampled(rid, 0.1)]
    assert picked == [rid for rid in ids if sampled(rid, 0.1)]  # the same ids on every replica and role
    assert 100 < len(picked) < 300 and all(sampled(rid, 1.0) for rid in ids)


def test_the_default_destination_is_the_registrys_captures_folder(tmp_path: Path) -> None:
    assert root_of(str(tmp_path), CaptureConfig()) == str(tmp_path / "captures")
    assert root_of("s3://bucket/reg", CaptureConfig()) == "s3://bucket/reg/captures"
    assert root_of("s3://bucket/reg", CaptureConfig(destination="s3://other/c")) == "s3://other/c"
    with pytest.raises(ValueError, match="extra"):
        CaptureConfig.model_validate({"enabled": True, "sampling": 0.5})


def _manifest(trained_manifest: Manifest, **changes: object) -> Manifest:
    return trained_manifest.model_copy(update=changes)


@pytest.fixture
def classifier(trained_once: Path) -> Manifest:
    return Registry(str(trained_once)).manifest(MODEL, 1)


def test_labels_are_checked_against_the_task(classifier: Manifest) -> None:
    first = classifier.classes[0]
    assert check([Outcome(request_id="a", label=str(first))], classifier).labels == [first]
    with pytest.raises(DataValidationError, match="'cat' is not a class"):
        check([Outcome(request_id="a", label="cat")], classifier)
    with pytest.raises(DataValidationError, match="'a' appear more than once"):
        check([Outcome(request_id="a", label=first), Outcome(request_id="a", label=first)], classifier)
    regression = _manifest(classifier, task="regression", classes=[])
    assert check([Outcome(request_id="a", label=2)], regression).labels == [2.0]
    with pytest.raises(DataValidationError, match="not a finite number"):
        check([Outcome(request_id="a", label="high")], regression)


def test_live_quality_equals_the_metric_computed_by_hand_from_the_rows(tmp_path: Path, classifier: Manifest) -> None:
    fs, root = filesystem(str(tmp_path))
    write_records(fs, root, records_table([_served(f"v1-{n}") for n in range(5)]))
    write_records(fs, root, records_table([_served(f"v2-{n}", version=2) for n in range(5)]))
    labels = {f"v1-{n}": 0 for n in range(3)} | {f"v2-{n}": 1 for n in range(4)}
    checked = check([Outcome(request_id=rid, label=label) for rid, label in labels.items()], _manifest(classifier, classes=[0, 1]))
    report = store(fs, root, "m", checked)
    assert report.unknown == 0 and (tmp_path / OUTCOMES / "model=m").is_dir()
    frame = joined(fs, root, "m")
    lines = {line.version: line for line in live_quality(frame, "classification")}
    for version in (1, 2):
        rows = frame[(frame["version"] == version) & frame["label"].notna()]
        truth, predicted = rows["label"].astype(int), rows["prediction"]
        assert lines[version].labelled == len(rows) == {1: 6, 2: 8}[version]
        assert lines[version].metrics == {
            "accuracy": accuracy_score(truth, predicted),
            "f1_macro": f1_score(truth, predicted, average="macro"),
        }
    assert lines[1].captured == 10
    assert live_quality(frame, "classification", since=datetime.now(UTC) + timedelta(hours=1)) == []


def test_a_label_posted_again_replaces_the_earlier_one(tmp_path: Path, classifier: Manifest) -> None:
    fs, root = filesystem(str(tmp_path))
    write_records(fs, root, records_table([_served("a")]))
    binary = _manifest(classifier, classes=[0, 1])
    store(fs, root, "m", check([Outcome(request_id="a", label=0)], binary), now=datetime(2026, 12, 5, tzinfo=UTC))
    store(fs, root, "m", check([Outcome(request_id="a", label=1)], binary), now=datetime(2026, 12, 6, tzinfo=UTC))
    assert set(joined(fs, root, "m")["label"]) == {1}


def test_files_appear_whole_under_their_final_names(tmp_path: Path) -> None:
    """Written under a name readers skip, then renamed: no reader ever opens half a file."""
    fs, root = filesystem(str(tmp_path))
    write_records(fs, root, records_table([_served("a")]))
    files = [p for p in (tmp_path / RECORDS).rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".parquet" and not files[0].name.startswith(("_", "."))
    files[0].with_name("_half-0.parquet.part").write_bytes(b"PAR1 cut")  # as one being written looks
    assert len(list((tmp_path / RECORDS).rglob("*.parquet"))) == 1  # DuckDB's glob skips it too
    table = read(fs, root, RECORDS, "m")  # a file being written is not read
    assert table is not None and table.column("request_id").to_pylist() == ["a", "a"]
