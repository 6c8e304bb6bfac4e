"""Where `nonstop train --data` reads from: parts, each read twice, a batch at a time.

A part is one file (a day's partition, or one file of it) or one date of the capture
store. The first pass (`Part.scan`) reads a part's schema and its label column only; the
second (`Part.batches`) reads its rows in batches of at most BATCH_ROWS, so that beside
the matrix being filled (training/stream.py) only one batch of raw rows is ever held.
CSV has no footer to read a schema from: a CSV file is parsed whole, once per pass, and
is meant for data that fits comfortably; partitioned Parquet is what scales.

Sources:
- a file, or a folder of CSV/Parquet files (daily `day=YYYY-MM-DD` partitions), local or
  on an object store (s3://, gs://, ... as pyarrow reaches them);
- `capture://MODEL`: the capture store's records of MODEL joined with their outcomes
  (nonstop/capture.py's layout), the rows clients were answered (`shadow` rows left out)
  that have a label;
- either narrowed by a window (`--since 30d`) to the partitions of the newest N days.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from nonstop.capture import FEATURE_PREFIX, OUTCOMES, RECORDS, filesystem, read
from nonstop.errors import DataValidationError, NonstopError
from nonstop.redact import public_uri
from nonstop.registry import check_name
from training.data import check_flat, check_header, kind_of, list_data_files, open_fs, read_file

BATCH_ROWS = 65_536
CAPTURE_SCHEME = "capture://"
SHADOW = "shadow"
_DAY = re.compile(r"(?:^|/)(?:day|date)=(\d{4}-\d{2}-\d{2})(?=/|$)")
_WINDOW = re.compile(r"(\d{1,4})d")

Kinds = dict[str, tuple[str, str]]


@dataclass(frozen=True)
class PartScan:
    """`kinds` maps a column to its (kind, dtype) where the part has values for it."""

    columns: list[str]
    rows: int
    labels: pd.Series | None
    kinds: Kinds


class Part(Protocol):
    name: str
    day: date | None

    def scan(self, label: str) -> PartScan: ...

    def batches(self, columns: list[str], label: str) -> Iterator[pd.DataFrame]: ...


@dataclass(frozen=True)
class Source:
    parts: list[Part]
    description: str  # what the manifest and the model card name as the data's source


def open_source(data: str, *, since: str | None = None, capture_root: str | None = None) -> Source:
    if data.startswith(CAPTURE_SCHEME):
        if capture_root is None:
            raise DataValidationError(f"{data}: no capture destination to read from")
        return _capture_source(data.removeprefix(CAPTURE_SCHEME), capture_root, since)
    fs, files = list_data_files(data)
    root = open_fs(data)[1].rstrip("/")
    # a day is read from the folders below the one named, never from above it
    parts: list[Part] = [_file_part(fs, path, _day_of(path.removeprefix(root) if path != root else "")) for path in files]
    parts = window(parts, since, public_uri(data))
    days = _days(parts)
    return Source(parts, public_uri(data) + (f" (day {days[0]} to {days[-1]}, {since})" if since and days else ""))


def window(parts: list[Part], since: str | None, where: str) -> list[Part]:
    """The parts of the newest N days, the newest partition's day included. The window
    ends at the newest partition rather than today, so the same data always selects the
    same partitions; the days chosen are named in the version's data source."""
    if since is None:
        return parts
    match = _WINDOW.fullmatch(since.strip())
    if match is None or int(match.group(1)) < 1:
        raise DataValidationError(f"--since {since!r}: expected a number of days such as 30d")
    undated = [p.name for p in parts if p.day is None]
    if undated:
        raise DataValidationError(f"--since needs day=YYYY-MM-DD partitions, but {undated[0]} is in none (under {where})")
    newest = max(p.day for p in parts if p.day is not None)
    first = newest - timedelta(days=int(match.group(1)) - 1)
    return [p for p in parts if p.day is not None and p.day >= first]


def _days(parts: list[Part]) -> list[date]:
    return sorted({p.day for p in parts if p.day is not None})


def _day_of(relative: str) -> date | None:
    match = _DAY.search(relative)
    if match is None:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        raise DataValidationError(f"{relative}: {match.group(0).strip('/')} is not a date") from None


def _file_part(fs: pafs.FileSystem, path: str, day: date | None) -> Part:
    return CsvPart(fs, path, day) if path.lower().endswith(".csv") else ParquetPart(fs, path, day)


def _unreadable(path: str, exc: Exception) -> DataValidationError:
    return DataValidationError(f"{path}: cannot be read: {exc}")


def _schema_kinds(schema: pa.Schema, rows: int) -> Kinds:
    """Kinds from a Parquet schema as pandas will type the columns; a column of the null
    type has no values to type (all null in this part)."""
    if rows == 0:
        return {}
    empty = schema.empty_table().to_pandas()
    kinds: Kinds = {}
    for field in schema:
        if pa.types.is_null(field.type):
            continue
        dtype = str(empty[field.name].dtype)
        text = pa.types.is_string(field.type) or pa.types.is_large_string(field.type) or pa.types.is_dictionary(field.type)
        kinds[field.name] = ("category", dtype) if text else (kind_of(empty, field.name), dtype)
    return kinds


@dataclass(frozen=True)
class ParquetPart:
    fs: pafs.FileSystem
    name: str
    day: date | None

    def _file(self) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.name, filesystem=self.fs)
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise _unreadable(self.name, exc) from exc

    def scan(self, label: str) -> PartScan:
        file = self._file()
        schema = file.schema_arrow
        check_header(self.name, list(schema.names))
        check_flat(self.name, schema)
        rows = file.metadata.num_rows
        try:
            labels = file.read(columns=[label]).column(0).to_pandas() if label in schema.names else None
        except (OSError, pa.ArrowException) as exc:
            raise _unreadable(self.name, exc) from exc
        return PartScan(list(schema.names), rows, labels, _schema_kinds(schema, rows))

    def batches(self, columns: list[str], label: str) -> Iterator[pd.DataFrame]:
        try:
            for batch in self._file().iter_batches(batch_size=BATCH_ROWS, columns=columns):
                yield batch.to_pandas()
        except (OSError, pa.ArrowException) as exc:
            raise _unreadable(self.name, exc) from exc


@dataclass(frozen=True)
class CsvPart:
    fs: pafs.FileSystem
    name: str
    day: date | None

    def scan(self, label: str) -> PartScan:
        frame = read_file(self.fs, self.name)
        kinds = {str(c): (kind_of(frame, c), str(frame[c].dtype)) for c in frame.columns if frame[c].notna().any()}
        labels = frame[label] if label in frame.columns else None
        return PartScan(list(map(str, frame.columns)), len(frame), labels, kinds)

    def batches(self, columns: list[str], label: str) -> Iterator[pd.DataFrame]:
        yield read_file(self.fs, self.name)[columns]


# --- the capture store joined with outcomes -----------------------------------------------


def _capture_source(model: str, root: str, since: str | None) -> Source:
    check_name("model", model)
    try:
        fs, path = filesystem(root)
        base = posixpath.join(path, RECORDS, f"model={model}")
        dates = [
            info.path for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
            if info.type == pafs.FileType.Directory and posixpath.basename(info.path).startswith("date=")
        ]  # fmt: skip
        if not dates:
            raise DataValidationError(f"no captured records of {model!r} under {public_uri(root)}")
        schema = _records_schema(fs, base)
        labels = _latest_labels(fs, path, model)
    except NonstopError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise DataValidationError(f"the capture store under {public_uri(root)} cannot be read: {exc}") from exc
    parts: list[Part] = [
        CapturePart(fs, d, _day_of(posixpath.basename(d)), schema, labels) for d in sorted(dates)
    ]
    parts = window(parts, since, public_uri(root))
    days = _days(parts)
    span = f"{days[0]} to {days[-1]}" if days else "no dates"
    return Source(
        parts,
        f"{CAPTURE_SCHEME}{model}: captured records joined with outcomes under {public_uri(root)}, {span}"
        + (f" ({since})" if since else ""),
    )


def _records_schema(fs: pafs.FileSystem, base: str) -> pa.Schema:
    """The schema every date is read under: a feature one version lacks is null in its rows."""
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(base, recursive=True)) if i.path.endswith(".parquet")]
    schemas = [pq.read_schema(f, filesystem=fs) for f in files]
    unified = pa.unify_schemas(schemas) if schemas else pa.schema([])
    keep = ["request_id", "role", *(n for n in unified.names if n.startswith(FEATURE_PREFIX))]
    missing = [n for n in ("request_id", "role") if n not in unified.names]
    if missing:
        raise DataValidationError(f"captured records under {base} lack column(s) {', '.join(missing)}")
    return pa.schema([unified.field(n) for n in keep])


def _latest_labels(fs: pafs.FileSystem, root: str, model: str) -> pd.Series:
    """The label of each request id, the last received winning (nonstop/outcomes.py)."""
    outcomes = read(fs, root, OUTCOMES, model)
    if outcomes is None or outcomes.num_rows == 0:
        raise DataValidationError(f"no outcomes for {model!r} yet: training from captures needs labels (nonstop outcomes)")
    frame = outcomes.select(["request_id", "label", "received_at"]).to_pandas()
    latest = frame.sort_values("received_at", kind="stable").drop_duplicates("request_id", keep="last")
    return latest.set_index("request_id")["label"]


@dataclass(frozen=True)
class CapturePart:
    """One date of records: the rows clients were answered that have a label."""

    fs: pafs.FileSystem
    name: str
    day: date | None
    schema: pa.Schema
    labels: pd.Series

    def _dataset(self) -> ds.Dataset:
        return ds.dataset(self.name, filesystem=self.fs, format="parquet", schema=self.schema)

    def _features(self) -> list[str]:
        return [n for n in self.schema.names if n.startswith(FEATURE_PREFIX)]

    def _labelled(self, frame: pd.DataFrame, label: str) -> pd.DataFrame:
        frame = frame[frame["role"] != SHADOW]
        labels = frame["request_id"].map(self.labels)
        keep = labels.notna().to_numpy()
        renamed = {n: n.removeprefix(FEATURE_PREFIX) for n in self._features()}
        return frame.loc[keep, list(renamed)].rename(columns=renamed).assign(**{label: labels[keep].to_numpy()})

    def scan(self, label: str) -> PartScan:
        try:
            keys = self._dataset().to_table(columns=["request_id", "role"]).to_pandas()
        except (OSError, pa.ArrowException) as exc:
            raise _unreadable(self.name, exc) from exc
        keys = keys[keys["role"] != SHADOW]
        labels = keys["request_id"].map(self.labels).dropna().rename(label).reset_index(drop=True)
        columns = [n.removeprefix(FEATURE_PREFIX) for n in self._features()]
        if label in columns:
            raise DataValidationError(f"{self.name}: a captured feature is named {label!r}, the label: pass another --label")
        renamed = pa.schema([f.with_name(f.name.removeprefix(FEATURE_PREFIX)) for f in self.schema if f.name in self._features()])
        return PartScan([*columns, label], len(labels), labels, _schema_kinds(renamed, len(labels)))

    def batches(self, columns: list[str], label: str) -> Iterator[pd.DataFrame]:
        try:
            for batch in self._dataset().to_batches(columns=["request_id", "role", *self._features()], batch_size=BATCH_ROWS):
                yield self._labelled(batch.to_pandas(), label)[columns]
        except (OSError, pa.ArrowException) as exc:
            raise _unreadable(self.name, exc) from exc
