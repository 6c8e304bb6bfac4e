"""A scoring job's output, written by the actors that score: one pass over the data.

Each actor of the pool scores a batch and writes its scored rows to `<out>/scored` and its
refused rows, with their reason, to `<out>/rejects`, one Parquet file each, and hands back
only a one-row summary: the rows, the refusals, the files it wrote and, for a comparison,
the few columns compared. Nothing of the scored data goes through Ray's object store or
the driver, and nothing is read twice (a Ray Data write after the scoring needed the
scored rows materialized in the object store, then read every row of them again).

A file is kept only once the driver holds the summary naming it. An actor that dies after
writing and before answering leaves a file no summary names; Ray scores that batch again
on another actor, and `keep_only` deletes the orphan, so no row is written twice. Every
file of one job starts with the job's prefix, so files already in the folder are left
alone; a job that fails deletes its own files (`discard`), and leaves nothing half-written.
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from nonstop.batch.scorer import OUTPUT_COLUMNS, REASON, BatchScorer

SCORED, REJECTS = "scored", "rejects"
ROWS, REFUSED, FILES = "rows", "refused", "files"


def job_prefix() -> str:
    return f"part-{uuid.uuid4().hex[:16]}"


def split(scored: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(scored rows without `reason`, refused rows with the input and `reason` only)."""
    refused = pc.is_valid(scored[REASON])
    outputs = set(OUTPUT_COLUMNS) - {REASON}
    accepted = scored.filter(pc.invert(refused)).drop_columns([REASON])
    rejects = scored.filter(refused)
    return accepted, rejects.select([n for n in rejects.column_names if n not in outputs])


class BatchWriter:
    """Scores a batch and writes it; what the actor pool calls."""

    def __init__(self, scorer: BatchScorer, fs: pafs.FileSystem, out: str, prefix: str, compared: tuple[str, ...]) -> None:
        self._scorer, self._fs, self._out, self._prefix, self._compared = scorer, fs, out, prefix, compared

    def __call__(self, table: pa.Table) -> pa.Table:
        accepted, rejects = split(self._scorer(table))
        name = f"{self._prefix}-{uuid.uuid4().hex}.parquet"
        written = []
        for rows, folder in ((accepted, SCORED), (rejects, REJECTS)):
            if rows.num_rows:
                path = posixpath.join(self._out, folder, name)
                pq.write_table(rows, path, filesystem=self._fs)
                written.append(path)
        summary = {
            ROWS: pa.array([table.num_rows], pa.int64()),
            REFUSED: pa.array([rejects.num_rows], pa.int64()),
            FILES: pa.array([written], pa.list_(pa.string())),
        }
        for name in self._compared:
            values = accepted.column(name).combine_chunks()
            summary[name] = pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values)
        return pa.table(summary)


@dataclass
class Totals:
    """The summaries of every batch, added up in the driver."""

    compared: tuple[str, ...]
    rows: int = 0
    refused: int = 0
    files: set[str] = field(default_factory=set)
    values: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, summaries: Iterable[pa.Table]) -> Totals:
        for summary in summaries:
            self.rows += sum(summary.column(ROWS).to_pylist())
            self.refused += sum(summary.column(REFUSED).to_pylist())
            for written in summary.column(FILES).to_pylist():
                self.files.update(written)
            for name in self.compared:
                for values in summary.column(name).to_pylist():
                    self.values.setdefault(name, []).extend(values)
        return self


def prepare_folders(fs: pafs.FileSystem, out: str) -> None:
    for folder in (SCORED, REJECTS):
        fs.create_dir(posixpath.join(out, folder), recursive=True)


def _ours(fs: pafs.FileSystem, out: str, prefix: str) -> list[str]:
    found = []
    for folder in (SCORED, REJECTS):
        selector = pafs.FileSelector(posixpath.join(out, folder), allow_not_found=True)
        found += [f.path for f in fs.get_file_info(selector) if posixpath.basename(f.path).startswith(prefix + "-")]
    return found


def keep_only(fs: pafs.FileSystem, out: str, prefix: str, kept: set[str]) -> None:
    """Delete this job's files that no batch summary names: written by an actor that died
    before answering, its batch since scored again."""
    for path in _ours(fs, out, prefix):
        if path not in kept:
            fs.delete_file(path)


def discard(fs: pafs.FileSystem, out: str, prefix: str) -> None:
    """A failed job's files: all of them, so nothing half-written looks like a result."""
    keep_only(fs, out, prefix, set())
