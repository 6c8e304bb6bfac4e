"""`nonstop train --data` beyond one file: a date window over daily partitions, the capture
store joined with outcomes, and partitions that disagree. Real files, real subprocesses."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from nonstop.capture import CaptureConfig, Served, filesystem, records_table, root_of, write_records
from nonstop.errors import DataValidationError
from nonstop.loading import TrustPolicy, load_version
from nonstop.manifest import FeatureSpec
from nonstop.outcomes import Outcome, check, store
from nonstop.registry import Registry
from tests.conftest import MODEL, train_into
from tests.unit.training.test_train_cli import run_train
from training import demo
from training.card import CARD_NAME
from training.data import fingerprint, read_data
from training.pipeline import build_pipeline, fit_in_place
from training.sources import open_source, window
from training.stream import fill, scan, split

DAYS = 40


@pytest.fixture(scope="module")
def forty_days(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("forty-days")
    demo.write_days(folder, DAYS)
    return folder


def test_since_30d_trains_on_exactly_the_last_30_daily_partitions(registry: Registry, forty_days: Path, tmp_path: Path) -> None:
    done = run_train(registry, forty_days, "--since", "30d")
    assert done.returncode == 0, done.stderr
    data = registry.manifest(MODEL, 1).data
    first, last = demo.FIRST_DAY + timedelta(days=DAYS - 30), demo.FIRST_DAY + timedelta(days=DAYS - 1)
    assert data.rows == 30 * demo.ROWS_PER_DAY
    assert data.source == f"{forty_days} (day {first} to {last}, 30d)"
    # the same rows, hash for hash, as the pandas reader gives for a folder of only those 30 days
    only = tmp_path / "last-30"
    for day in demo.existing_days(forty_days)[-30:]:
        shutil.copytree(forty_days / f"day={day}", only / f"day={day}")
    frame, _ = read_data(str(only))
    assert data.sha256 == fingerprint(frame, "").sha256


def test_the_window_ends_at_the_newest_partition_and_counts_days_not_partitions(forty_days: Path, tmp_path: Path) -> None:
    gappy = tmp_path / "gappy"
    shutil.copytree(forty_days, gappy)
    shutil.rmtree(gappy / f"day={demo.FIRST_DAY + timedelta(days=DAYS - 2)}")  # yesterday's partition never arrived
    days = [p.day for p in open_source(str(gappy), since="3d").parts]
    assert days == [demo.FIRST_DAY + timedelta(days=DAYS - 3), demo.FIRST_DAY + timedelta(days=DAYS - 1)]
    with pytest.raises(DataValidationError, match="--since '3 days': expected a number of days such as 30d"):
        window(open_source(str(gappy)).parts, "3 days", "x")
    one = tmp_path / "one" / f"day={demo.FIRST_DAY}"
    shutil.copytree(forty_days / f"day={demo.FIRST_DAY}", one)
    assert [p.day for p in open_source(str(one.parent), since="30d").parts] == [demo.FIRST_DAY]
    flat = tmp_path / "flat.parquet"
    demo.day_frame(0).to_parquet(flat)
    with pytest.raises(DataValidationError, match="--since needs day=YYYY-MM-DD partitions, but .*flat.parquet is in none"):
        open_source(str(flat), since="30d")


def test_a_partition_that_changes_a_column_type_is_refused_naming_the_partition_and_column(registry: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    demo.write_days(folder, 3)
    changed = folder / f"day={demo.FIRST_DAY + timedelta(days=1)}" / "part-0.parquet"
    demo.day_frame(1).astype({"mean_radius": str}).to_parquet(changed, index=False)
    done = run_train(registry, folder)
    assert done.returncode == 2, done.stderr
    first = folder / f"day={demo.FIRST_DAY}" / "part-0.parquet"
    expected = f"{changed}: column 'mean_radius' holds category values (dtype str) but {first} holds number values (dtype float64)"
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not Path(registry.uri).exists()


def test_text_in_a_number_column_of_one_csv_partition_is_named_with_its_partition(tmp_path: Path, registry: Registry) -> None:
    """Concatenated, the column turned to text and the whole data was called 'mostly numbers'."""
    folder = tmp_path / "data"
    folder.mkdir()
    demo.day_frame(0).to_csv(folder / "day-1.csv", index=False)
    frame = demo.day_frame(1).astype({"mean_texture": object})
    frame.loc[3, "mean_texture"] = "abc"
    frame.to_csv(folder / "day-2.csv", index=False)
    with pytest.raises(DataValidationError, match="day-2.csv: column 'mean_texture' holds category values .* but .*day-1.csv holds number"):
        train_into(registry, folder)


def _capture(registry: Registry, days: int, rows_per_request: int = 4) -> tuple[int, int]:
    """Records of the production version as replicas write them, and labels for most of
    them: (labelled rows clients were answered, shadow rows of labelled requests)."""
    manifest = registry.manifest(MODEL, registry.resolve(MODEL, "production") or 0)
    fs, root = filesystem(root_of(registry.uri, CaptureConfig()))
    names = [f.name for f in manifest.features]
    labelled = shadows = 0
    for day in range(days):
        frame = demo.day_frame(100 + day)
        at = datetime(2026, 12, 1 + day, 12, tzinfo=UTC)
        served, outcomes = [], []
        for start in range(0, len(frame), rows_per_request):
            rows = frame.iloc[start : start + rows_per_request]
            rid = f"d{day}-r{start}"
            matrix = rows[names].to_numpy()
            served.append(Served(rid, at, MODEL, manifest.version, "primary", manifest.features, matrix, [0] * len(rows)))
            if start % (rows_per_request * 5) == 0:  # a rollout's shadow comparison of the same request
                served.append(Served(rid, at, MODEL, manifest.version, "shadow", manifest.features, matrix, [0] * len(rows)))
                shadows += len(rows)
            if start % (rows_per_request * 10) != 0:  # some requests never get a label
                outcomes.append(Outcome(request_id=rid, label=int(rows["target"].iloc[0])))
                labelled += len(rows)
        write_records(fs, root, records_table(served))
        store(fs, root, MODEL, check(outcomes, manifest), now=at + timedelta(hours=1))
    return labelled, shadows


def test_training_from_the_capture_store_publishes_a_version_whose_card_names_it(trained: Registry) -> None:
    labelled, _ = _capture(trained, days=3)
    done = run_train(trained, f"capture://{MODEL}")
    assert done.returncode == 0, done.stderr
    manifest = trained.manifest(MODEL, 2)
    source = f"capture://{MODEL}: captured records joined with outcomes under {trained.uri}/captures, 2026-12-01 to 2026-12-03"
    assert manifest.data.source == source
    assert manifest.data.rows == labelled  # labelled rows only, each once: the shadow copies left out
    assert [f.name for f in manifest.features] == [f.name for f in trained.manifest(MODEL, 1).features]
    card = (trained.read_extra(MODEL, 2, CARD_NAME) or b"").decode()
    assert f"from `{source}`" in card


def test_the_capture_store_without_outcomes_is_refused_saying_labels_are_needed(trained: Registry, registry: Registry) -> None:
    with pytest.raises(DataValidationError, match=f"no captured records of '{MODEL}' under"):
        train_into(trained, f"capture://{MODEL}")
    manifest = trained.manifest(MODEL, 1)
    fs, root = filesystem(root_of(trained.uri, CaptureConfig()))
    matrix = demo.day_frame(0)[[f.name for f in manifest.features]].to_numpy()[:3]
    write_records(fs, root, records_table([Served("a", datetime.now(UTC), MODEL, 1, "primary", manifest.features, matrix, [0, 0, 0])]))
    with pytest.raises(DataValidationError, match="no outcomes for 'breast_cancer' yet: training from captures needs labels"):
        train_into(trained, f"capture://{MODEL}")


def test_the_in_place_fit_gives_the_plain_fits_model_and_publishes_a_copying_pipeline(trained: Registry) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(300, 3))
    matrix[::7, 1] = np.nan
    labels = (matrix[:, 0] > 0).astype(int)
    features = [FeatureSpec(name=f"x{i}", kind="number", dtype="float64") for i in range(3)]
    plain, frugal = build_pipeline(features, 0), build_pipeline(features, 0)
    plain.fit(matrix, labels)
    rows = matrix.copy()
    assert fit_in_place(frugal, rows, labels)
    assert not np.isnan(rows).any() and abs(rows.mean()) < 1e-9  # imputed and scaled where they lay
    np.testing.assert_allclose(frugal.predict_proba(matrix), plain.predict_proba(matrix), rtol=1e-6)
    assert not fit_in_place(Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())]), rows, labels)
    loaded = load_version(trained, MODEL, 1, TrustPolicy())  # trained through the in-place fit
    copies = {k: v for k, v in loaded.estimator.get_params().items() if k.endswith("__copy")}
    assert copies and all(copies.values())
    inputs = np.asarray(loaded.manifest.samples.inputs, dtype=np.float64)
    before = inputs.copy()
    loaded.predict(inputs)
    assert np.array_equal(inputs, before)  # serving's input is never overwritten


def test_reading_keeps_the_pandas_readers_rows_and_fingerprint(demo_data: Path) -> None:
    frame, expected = read_data(str(demo_data))
    source = open_source(str(demo_data))
    scanned = scan(source.parts, "target")
    data = fill(scanned, split(scanned.labels, task="classification", holdout_fraction=0.2, seed=0), source)
    assert data.fingerprint.sha256 == expected.sha256 and data.fingerprint.rows == len(frame)
    assert [f.name for f in data.features] == [c for c in frame.columns if c != "target"]
    assert sorted(map(tuple, data.matrix.tolist())) == sorted(map(tuple, frame.drop(columns="target").to_numpy().tolist()))
