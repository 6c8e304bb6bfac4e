"""Captured traffic as Parquet: what a record holds, where it goes, and when it is deleted.

Capture is off unless a deployment's `user_config` turns it on, because payloads can
hold personal data (docs/capture.md). The pure parts live here, in core, so that the
replicas that write captures and the tools that read them (outcomes, quality) share one
layout:

    <root>/records/model=<m>/date=<YYYY-MM-DD>/version=<v>/<uuid>-<i>.parquet
    <root>/outcomes/model=<m>/date=<YYYY-MM-DD>/<uuid>-<i>.parquet

`<root>` is the configured destination, by default the registry's own storage under
`captures/`. Both are hive-partitioned datasets written by pyarrow's dataset writer, so
pandas, DuckDB and Ray Data read them as they are. One record is one row of one request:
its request id, the row's index in the request, the time, model, version, role, the
features as typed columns (`f_<name>`: numbers as float64, categories as text) and the
answer (`prediction`, and `probabilities` when the request asked for them).
"""

from __future__ import annotations

import posixpath
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field

from nonstop.errors import StorageError
from nonstop.manifest import FeatureSpec
from nonstop.quality import VersionQuality
from nonstop.redact import redact

CAPTURES = "captures"
RECORDS = "records"
OUTCOMES = "outcomes"
FEATURE_PREFIX = "f_"
DATE_FORMAT = "%Y-%m-%d"


class CaptureConfig(BaseModel):
    """`capture:` in the deployment's user_config (serve_app/config.py ModelTarget)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=False, description="capture nothing unless true: payloads can hold personal data")
    sample_rate: float = Field(default=1.0, gt=0.0, le=1.0, description="share of requests captured, chosen by request id")
    destination: str | None = Field(default=None, description="a folder or object-store URI; default: <registry>/captures")
    exclude_columns: tuple[str, ...] = Field(default=(), description="features never written")
    retention_days: int = Field(default=30, ge=1, le=3650, description="date partitions older than this are deleted")
    max_buffered_rows: int = Field(
        default=100_000, ge=1, le=10_000_000, description="rows held in memory at most (buffered and being written)"
    )
    flush_interval_s: float = Field(default=5.0, ge=0.1, le=600.0, description="what a kill -9 can lose, at most")
    quality_window_h: float = Field(default=24.0, gt=0, le=24 * 3650, description="live quality over the requests of this many hours")
    quality_interval_s: float = Field(default=60.0, ge=1.0, le=86400.0, description="how often live quality is measured")


class CaptureStatus(BaseModel):
    """A replica's capture, as `nonstop status` shows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool
    destination: str | None = Field(description="credentials redacted")
    captured_rows: int
    dropped_rows: int
    buffered_rows: int
    quality: list[VersionQuality] = Field(default=[], description="live quality per version and role (the replica that measures)")
    quality_error: str | None = Field(default=None, description="why live quality could not be measured last time")


def root_of(registry_uri: str, config: CaptureConfig) -> str:
    """The capture destination: the configured one, or the registry's `captures/`."""
    if config.destination:
        return config.destination
    if "://" not in registry_uri:
        return str(Path(registry_uri) / CAPTURES)
    location, mark, query = registry_uri.partition("?")  # s3://bucket/path?endpoint_override=...: the folder before the query
    return posixpath.join(location.rstrip("/"), CAPTURES) + mark + query


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path under it: a local folder, or s3:// gs:// ... as
    nonstop/storage.py reaches object stores."""
    if "://" not in uri or uri.startswith("file://"):
        return pafs.LocalFileSystem(), str(Path(uri.removeprefix("file://")).expanduser().resolve())
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises several types for a bad URI
        raise StorageError(redact(f"cannot open capture destination {uri!r}: {exc}", uri)) from None
    return fs, path.rstrip("/")


def sampled(request_id: str, rate: float) -> bool:
    """The same request id is always in or out of the sample, whichever replica or role saw it."""
    return rate >= 1.0 or zlib.crc32(request_id.encode()) / 2**32 < rate


@dataclass
class Served:
    """One answered request, as the data plane hands it over: kept as references until written."""

    request_id: str
    at: datetime
    model: str
    version: int
    role: str
    features: Sequence[FeatureSpec]
    matrix: np.ndarray
    predictions: list[Any]
    probabilities: list[list[float]] | None = None
    excluded: frozenset[str] = field(default_factory=frozenset)

    @property
    def rows(self) -> int:
        return len(self.matrix)


def _feature_column(spec: FeatureSpec, values: np.ndarray) -> pa.Array:
    if spec.kind == "number":
        return pa.array(np.asarray(values, dtype=np.float64), type=pa.float64(), from_pandas=True)
    return pa.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values], type=pa.string())


def records_table(batch: Sequence[Served]) -> pa.Table:
    """Rows of one (model, version): the features are that version's, so one schema."""
    first = batch[0]
    columns: dict[str, pa.Array | list[Any]] = {
        "request_id": [s.request_id for s in batch for _ in range(s.rows)],
        "row": [i for s in batch for i in range(s.rows)],
        "timestamp": pa.array([s.at for s in batch for _ in range(s.rows)], type=pa.timestamp("us", tz="UTC")),
        "role": [s.role for s in batch for _ in range(s.rows)],
    }
    matrix = np.concatenate([s.matrix for s in batch]) if len(batch) > 1 else first.matrix
    for index, spec in enumerate(first.features):
        if spec.name not in first.excluded:
            columns[FEATURE_PREFIX + spec.name] = _feature_column(spec, matrix[:, index])
    columns["prediction"] = [p for s in batch for p in s.predictions]
    columns["probabilities"] = pa.array(
        [list(map(float, p)) if s.probabilities is not None else None for s in batch for p in (s.probabilities or [None] * s.rows)],
        type=pa.list_(pa.float64()),
    )
    columns["model"] = [s.model for s in batch for _ in range(s.rows)]
    columns["date"] = [s.at.strftime(DATE_FORMAT) for s in batch for _ in range(s.rows)]
    columns["version"] = pa.array([s.version for s in batch for _ in range(s.rows)], type=pa.int64())
    return pa.table(columns)


def write_records(fs: pafs.FileSystem, root: str, table: pa.Table) -> None:
    _write(fs, posixpath.join(root, RECORDS), table, ["model", "date", "version"])


def write_outcomes(fs: pafs.FileSystem, root: str, table: pa.Table) -> None:
    _write(fs, posixpath.join(root, OUTCOMES), table, ["model", "date"])


def _write(fs: pafs.FileSystem, base: str, table: pa.Table, keys: list[str]) -> None:
    """New files only (a unique name per write): writers on many replicas never collide.
    Each file is written under a name readers skip (pyarrow's discovery ignores a leading
    `_`, a `*.parquet` glob the `.part` suffix) and renamed once whole, so a reader never
    sees half of one (an object store's put is whole already)."""
    written: list[str] = []
    try:
        ds.write_dataset(
            table,
            base,
            filesystem=fs,
            format="parquet",
            partitioning=keys,
            partitioning_flavor="hive",
            basename_template=f"_{uuid.uuid4().hex}-{{i}}.parquet.part",
            existing_data_behavior="overwrite_or_ignore",
            file_visitor=lambda file: written.append(file.path),
        )
        for path in written:
            folder, name = posixpath.split(path)
            fs.move(path, posixpath.join(folder, name.removeprefix("_").removesuffix(".part")))
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot write captures under {base}: {exc}") from exc


def read(
    fs: pafs.FileSystem,
    root: str,
    kind: str,
    model: str,
    since: date | None = None,
    columns: Callable[[str], bool] | None = None,
    where: ds.Expression | None = None,
) -> pa.Table | None:
    """One model's records or outcomes, or None. The files of all its versions are read
    under one schema: columns one version lacks are null in its rows. `since`: only the
    date partitions from that day on (the others are not opened); `columns`: only the
    columns it keeps; `where`: only the rows it selects, filtered as the files are read,
    so what is left out never takes memory."""
    base = posixpath.join(root, kind, f"model={model}")
    if fs.get_file_info(base).type == pafs.FileType.NotFound:
        return None
    keys = pa.schema([("date", pa.string())] + ([("version", pa.int64())] if kind == RECORDS else []))
    partitioning = ds.partitioning(keys, flavor="hive")
    fragments = list(ds.dataset(base, filesystem=fs, format="parquet", partitioning=partitioning).get_fragments())
    if not fragments:
        return None
    schema = pa.unify_schemas([f.physical_schema for f in fragments] + [keys])
    dataset = ds.dataset(base, filesystem=fs, format="parquet", partitioning=partitioning, schema=schema)
    selected = where
    if since is not None:
        days = ds.field("date") >= since.strftime(DATE_FORMAT)
        selected = days if selected is None else days & selected
    kept = [name for name in schema.names if columns(name)] if columns is not None else None
    table = dataset.to_table(columns=kept, filter=selected)
    return table.append_column("model", pa.array([model] * table.num_rows, type=pa.string()))


def expired(fs: pafs.FileSystem, root: str, retention_days: int, today: date) -> list[str]:
    """Date partitions (records and outcomes, every model) older than the retention period."""
    oldest = today - timedelta(days=retention_days)
    found = []
    for kind in (RECORDS, OUTCOMES):
        base = posixpath.join(root, kind)
        for model in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
            if model.type != pafs.FileType.Directory:
                continue
            for day in fs.get_file_info(pafs.FileSelector(model.path, allow_not_found=True)):
                name = posixpath.basename(day.path)
                if day.type == pafs.FileType.Directory and name.startswith("date=") and _day(name) < oldest:
                    found.append(day.path)
    return sorted(found)


def _day(partition: str) -> date:
    try:
        return datetime.strptime(partition.removeprefix("date="), DATE_FORMAT).replace(tzinfo=UTC).date()
    except ValueError:
        return date.max  # not ours: never deleted


def delete_expired(fs: pafs.FileSystem, root: str, retention_days: int, today: date) -> list[str]:
    gone = expired(fs, root, retention_days, today)
    for path in gone:
        fs.delete_dir(path)
    return gone
