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
    """One answered request, as tests and tools describe it; `records_table` writes a batch of them."""

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


class Records:
    """Rows of one (model, version), held as columns until written (the features are that
    version's, so one schema). A request adds its values to a few lists and leaves no
    container of its own behind: a replica buffers thousands of requests between writes,
    and as many objects would be walked again by every garbage collection of the process
    that answers the requests."""

    def __init__(self, model: str, version: int, features: Sequence[FeatureSpec], excluded: frozenset[str] = frozenset()) -> None:
        self.model, self.version = model, version
        self._features, self._excluded = list(features), excluded
        self._ids: list[str] = []
        self._counts: list[int] = []  # rows per request
        self._at_us: list[int] = []  # microseconds since the epoch, UTC
        self._roles: list[str] = []
        self._matrices: list[np.ndarray] = []
        self._predictions: list[Any] = []  # per row
        self._probabilities: list[np.ndarray | None] = []
        self.rows = 0

    def add(
        self, request_id: str, at_us: int, role: str, matrix: np.ndarray, predictions: Sequence[Any], probabilities: Sequence[Sequence[float]] | None = None
    ) -> None:
        rows = len(matrix)
        if rows == 0:
            return
        self._ids.append(request_id)
        self._counts.append(rows)
        self._at_us.append(at_us)
        self._roles.append(role)
        self._matrices.append(matrix)
        self._predictions.extend(predictions)
        self._probabilities.append(None if probabilities is None else np.asarray(probabilities, dtype=np.float64).reshape(rows, -1))
        self.rows += rows

    def table(self) -> pa.Table:
        if not self.rows:
            raise ValueError(f"no rows of {self.model} v{self.version} to write")
        counts = np.asarray(self._counts, dtype=np.int64)
        each = None if self.rows == len(counts) else np.repeat(np.arange(len(counts)), counts)  # each row's request

        def per_row(values: pa.Array) -> pa.Array:
            return values if each is None else values.take(pa.array(each))

        at = np.asarray(self._at_us, dtype=np.int64)
        first_rows = np.cumsum(counts) - counts
        matrix = np.concatenate(self._matrices) if len(self._matrices) > 1 else self._matrices[0]
        columns: dict[str, pa.Array] = {
            "request_id": per_row(pa.array(self._ids, type=pa.string())),
            "row": pa.array(np.zeros(self.rows, dtype=np.int64) if each is None else np.arange(self.rows) - first_rows[each]),
            "timestamp": per_row(pa.array(at, type=pa.timestamp("us", tz="UTC"))),
            "role": per_row(pa.array(self._roles, type=pa.string())),
        }
        for index, spec in enumerate(self._features):
            if spec.name not in self._excluded:
                columns[FEATURE_PREFIX + spec.name] = _feature_column(spec, matrix[:, index])
        columns["prediction"] = pa.array(self._predictions)
        columns["probabilities"] = self._probability_column(counts)
        columns["model"] = pa.array([self.model] * self.rows, type=pa.string())
        columns["date"] = per_row(pa.array(np.datetime_as_string(at.astype("datetime64[us]").astype("datetime64[D]")), type=pa.string()))
        columns["version"] = pa.array(np.full(self.rows, self.version, dtype=np.int64))
        return pa.table(columns)

    def _probability_column(self, counts: np.ndarray) -> pa.Array:
        """A list of floats per row, null where its request did not ask for them."""
        kind = pa.list_(pa.float64())
        given = [p for p in self._probabilities if p is not None]
        if not given:
            return pa.nulls(self.rows, type=kind)
        widths = np.repeat([0 if p is None else p.shape[1] for p in self._probabilities], counts)
        offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int32)
        missing = np.repeat([p is None for p in self._probabilities], counts)
        values = np.concatenate([p.ravel() for p in given])
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.float64()), type=kind, mask=pa.array(missing))


def _feature_column(spec: FeatureSpec, values: np.ndarray) -> pa.Array:
    if spec.kind == "number":
        return pa.array(np.asarray(values, dtype=np.float64), type=pa.float64(), from_pandas=True)
    return pa.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values], type=pa.string())


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def records_table(batch: Sequence[Served]) -> pa.Table:
    """Requests of one (model, version) as the table a replica writes."""
    first = batch[0]
    records = Records(first.model, first.version, first.features, first.excluded)
    for served in batch:
        if (served.model, served.version) != (first.model, first.version):
            raise ValueError(f"one table holds one model's version: {served.model} v{served.version} among {first.model} v{first.version}")
        records.add(served.request_id, (served.at - _EPOCH) // timedelta(microseconds=1), served.role, served.matrix, served.predictions, served.probabilities)
    return records.table()


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
