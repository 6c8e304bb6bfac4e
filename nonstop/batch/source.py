"""Where a scoring job's rows come from: files listed in the driver, read in Ray tasks
that reserve only what the job says.

Ray Data's own readers start tasks (listing, sampling) that each reserve a whole CPU,
whatever the read is told: on a cluster whose CPUs Serve's replicas hold (`nonstop up`)
they wait for ever. Here the driver lists the files through pyarrow's filesystem (a
local folder, or s3:// as the registry reaches it) and each file is read by a task with
the job's reservation, hive partition keys (`day=…`) as columns, as Ray Data adds them.
"""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from nonstop.capture import filesystem
from nonstop.errors import InvalidInput
from nonstop.redact import redact

FORMATS = {".parquet": "parquet", ".csv": "csv"}
PATH = "path"


def _format(path: str) -> str | None:
    return next((kind for suffix, kind in FORMATS.items() if path.lower().endswith(suffix)), None)


def listing(data: str) -> tuple[pafs.FileSystem, list[str], str, str]:
    """(filesystem, files, format, base folder): one file, or every Parquet (else CSV)
    file under a folder, hidden ones (`_`, `.`) left out as Ray Data leaves them out."""
    fs, path = filesystem(data)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            kind = _format(path)
            if kind is None:
                raise InvalidInput(f"--data {redact(data, data)!r}: a .parquet or .csv file, or a folder of them")
            return fs, [path], kind, posixpath.dirname(path)
        if info.type == pafs.FileType.NotFound:
            raise InvalidInput(f"--data {redact(data, data)!r} does not exist")
        found = [f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if f.type == pafs.FileType.File]
    except OSError as exc:
        raise InvalidInput(redact(f"--data {data!r} cannot be listed: {exc}", data)) from exc
    visible = sorted(p for p in found if not any(part[:1] in "._" for part in posixpath.relpath(p, path).split("/")))
    for kind in ("parquet", "csv"):
        files = [p for p in visible if _format(p) == kind]
        if files:
            return fs, files, kind, path
    raise InvalidInput(f"--data {redact(data, data)!r}: no .parquet or .csv file under it")


def _dataset(fs: pafs.FileSystem, paths: list[str], kind: str, base: str) -> ds.Dataset:
    partitioning = ds.HivePartitioning.discover(infer_dictionary=False)
    return ds.dataset(paths, filesystem=fs, format=kind, partitioning=partitioning, partition_base_dir=base)


def schema(data: str) -> pa.Schema:
    """The first file's columns, read in the driver: what --keep and --label are checked against."""
    fs, files, kind, base = listing(data)
    return _dataset(fs, files[:1], kind, base).schema


def _read(batch: pa.Table, fs: pafs.FileSystem, kind: str, base: str) -> pa.Table:
    return _dataset(fs, batch.column(PATH).to_pylist(), kind, base).to_table()


def read(data: str, task_cpus: float, tasks: int) -> Any:
    """A Ray dataset of the rows of `data`: one read task per file."""
    import ray.data

    fs, files, kind, base = listing(data)
    paths = ray.data.from_blocks([pa.table({PATH: [path]}) for path in files])  # from_arrow starts a 1-CPU task
    return paths.map_batches(
        _read, fn_kwargs={"fs": fs, "kind": kind, "base": base}, batch_size=1, batch_format="pyarrow",
        num_cpus=task_cpus, concurrency=tasks,
    )  # fmt: skip
