"""What the scoring actors write, without Ray: each batch's scored and refused rows in a
file of its own, a summary naming them, and only files a summary names kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from nonstop.batch.output import REJECTS, SCORED, BatchWriter, Totals, discard, job_prefix, keep_only, prepare_folders
from nonstop.batch.scorer import PREDICTION, REASON, BatchScorer
from nonstop.loading import TrustPolicy, load_version
from nonstop.registry import Registry
from tests.conftest import MODEL
from tests.unit.nonstop.test_batch_scorer import _table


def _writer(registry: Registry, out: Path, prefix: str, compared: tuple[str, ...] = ()) -> BatchWriter:
    scorer = BatchScorer(load_version(registry, MODEL, 1, TrustPolicy()), keep=("id",), max_string_length=256)
    fs = pafs.LocalFileSystem()
    prepare_folders(fs, str(out))
    return BatchWriter(scorer, fs, str(out), prefix, compared)


def test_a_batch_is_written_once_split_into_scored_and_refused_rows(trained: Registry, tmp_path: Path) -> None:
    table, matrix = _table(trained, 20)
    first = trained.manifest(MODEL, 1).features[0].name
    values = matrix[:, 0].copy()
    values[[2, 5]] = np.inf
    table = table.set_column(0, first, pa.array(values))
    prefix = job_prefix()

    summary = _writer(trained, tmp_path, prefix, compared=("id", PREDICTION))(table)

    totals = Totals(("id", PREDICTION)).add([summary])
    scored, refused = pq.read_table(tmp_path / SCORED), pq.read_table(tmp_path / REJECTS)
    assert (totals.rows, totals.refused, len(totals.files)) == (20, 2, 2)
    assert sorted(scored.column("id").to_pylist()) == [i for i in range(20) if i not in (2, 5)] == totals.values["id"]
    assert refused.column("id").to_pylist() == [2, 5] and REASON not in scored.column_names
    assert PREDICTION not in refused.column_names and all(refused.column(REASON).to_pylist())
    assert totals.values[PREDICTION] == scored.column(PREDICTION).to_pylist()


def test_only_the_files_a_summary_names_are_kept_and_other_jobs_files_are_left(trained: Registry, tmp_path: Path) -> None:
    """An actor that wrote and died before answering left an orphan: deleted. Another job's
    file in the same folder is not this job's to delete; a failed job discards its own."""
    table, _ = _table(trained, 10)
    prefix, other = job_prefix(), job_prefix()
    answered = _writer(trained, tmp_path, prefix)(table)
    _writer(trained, tmp_path, prefix)(table)  # the orphan: its summary never reached the driver
    _writer(trained, tmp_path, other)(table)
    fs = pafs.LocalFileSystem()

    keep_only(fs, str(tmp_path), prefix, Totals(()).add([answered]).files)

    names = sorted(p.name for p in (tmp_path / SCORED).iterdir())
    assert len(names) == 2 and sum(n.startswith(prefix) for n in names) == 1 and sum(n.startswith(other) for n in names) == 1
    assert pq.read_table(tmp_path / SCORED).num_rows == 20
    discard(fs, str(tmp_path), other)
    assert [p.name for p in (tmp_path / SCORED).iterdir()] == [n for n in names if n.startswith(prefix)]
