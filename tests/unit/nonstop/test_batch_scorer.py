"""The scoring step of `nonstop score` without Ray: rows refused one by one with the
serving decoders' reasons, the rest scored as the loaded version scores them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from nonstop.batch.job import ScoreOptions, reservations
from nonstop.batch.scorer import ABS_DIFF, AGREES, PREDICTION, PROBABILITIES, REASON, VERSION, BatchScorer
from nonstop.errors import InvalidInput
from nonstop.loading import TrustPolicy, load_version
from nonstop.registry import Registry
from nonstop.schema import rows_to_matrix
from tests.conftest import MODEL


def _table(registry: Registry, rows: int = 40) -> tuple[pa.Table, np.ndarray]:
    manifest = registry.manifest(MODEL, 1)
    samples = rows_to_matrix(manifest.samples.inputs, manifest.features)
    matrix = np.resize(samples, (rows, samples.shape[1]))
    table = pa.table({f.name: matrix[:, i] for i, f in enumerate(manifest.features)} | {"id": np.arange(rows)})
    return table, matrix


def test_valid_rows_score_as_the_loaded_version_and_keys_are_carried(trained: Registry) -> None:
    loaded = load_version(trained, MODEL, 1, TrustPolicy())
    table, matrix = _table(trained)
    out = BatchScorer(loaded, keep=("id",), probabilities=True, max_string_length=256)(table)
    assert out.column("id").to_pylist() == list(range(40))
    assert out.column(PREDICTION).to_pylist() == loaded.predict(matrix)
    assert np.allclose(out.column(PROBABILITIES).to_pylist(), loaded.predict_proba(matrix))
    assert set(out.column(VERSION).to_pylist()) == {1}
    assert out.column(REASON).null_count == len(out)


def test_a_bad_value_refuses_its_row_only_with_the_decoders_reason(trained: Registry) -> None:
    loaded = load_version(trained, MODEL, 1, TrustPolicy())
    table, matrix = _table(trained)
    first = loaded.manifest.features[0].name
    values = matrix[:, 0].copy()
    values[[3, 7]] = [np.inf, np.nan]
    nulls = np.zeros(len(values), dtype=bool)
    nulls[9] = True  # null is a missing value: imputed, as over HTTP
    table = table.set_column(0, first, pa.array(values, mask=nulls))
    out = BatchScorer(loaded, keep=("id",), max_string_length=256)(table)
    reasons = out.column(REASON).to_pylist()
    assert reasons[3] == f"feature {first!r}: inf is not a finite number"
    assert reasons[7] == f"feature {first!r}: nan is not a finite number"
    assert [i for i, r in enumerate(reasons) if r is not None] == [3, 7]
    predictions = out.column(PREDICTION).to_pylist()
    assert predictions[3] is None and predictions[7] is None and predictions[9] is not None
    keep = [i for i in range(40) if i not in (3, 7)]
    assert [predictions[i] for i in keep] == loaded.predict(np.where(nulls[:, None] & (np.arange(matrix.shape[1]) == 0), np.nan, matrix)[keep])


def test_a_column_of_the_wrong_type_refuses_every_row_naming_it(trained: Registry) -> None:
    loaded = load_version(trained, MODEL, 1, TrustPolicy())
    table, _ = _table(trained, 5)
    first = loaded.manifest.features[0].name
    table = table.set_column(0, first, pa.array(["1.0"] * 5))
    out = BatchScorer(loaded, max_string_length=256)(table)
    assert set(out.column(REASON).to_pylist()) == {f"column {first!r}: expected numbers, got Arrow type string"}
    assert out.column(PREDICTION).null_count == 5


def test_comparing_a_version_with_itself_agrees_on_every_row(trained: Registry) -> None:
    loaded = load_version(trained, MODEL, 1, TrustPolicy())
    table, _ = _table(trained)
    out = BatchScorer(loaded, compare=loaded, max_string_length=256)(table)
    assert out.column(AGREES).to_pylist() == [True] * 40
    assert ABS_DIFF not in out.column_names  # classes: agreement only


def test_keep_columns_named_like_an_output_are_refused(trained: Registry) -> None:
    loaded = load_version(trained, MODEL, 1, TrustPolicy())
    with pytest.raises(InvalidInput, match="named like an output column: prediction"):
        BatchScorer(loaded, keep=("prediction",), max_string_length=256)


def test_the_job_reserves_cpus_only_where_the_cluster_has_them_free() -> None:
    """On a cluster whose CPUs Serve's replicas hold (`nonstop up`), a reservation would
    wait for ever: the job then reserves nothing and is bounded by its counts."""
    options = ScoreOptions(model=MODEL, data="d", out="o", workers=2)
    assert reservations(options, free_cpus=4.0) == reservations(options, free_cpus=2.0)
    assert (reservations(options, 2.0).worker_cpus, reservations(options, 2.0).task_cpus) == (0.5, 1.0)
    assert (reservations(options, 1.5).worker_cpus, reservations(options, 1.5).task_cpus) == (0.0, 0.0)
    given = reservations(options.model_copy(update={"worker_cpus": 1.0, "task_cpus": 0.25}), 0.0)
    assert (given.worker_cpus, given.task_cpus, given.tasks) == (1.0, 0.25, 2)
