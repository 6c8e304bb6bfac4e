"""Read training data and refuse it early, naming the column at fault.

Nothing is fitted or published from data that fails here, so a bad day of data costs a
failed job and a clear message, never a bad version in the registry.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from nonstop.errors import DataValidationError
from nonstop.manifest import DataFingerprint, FeatureSpec
from nonstop.redact import public_uri, redact

DATA_SUFFIXES = (".csv", ".parquet", ".pq")
MAX_DUPLICATE_FRACTION = 0.1
# a text column this numeric is a number column with bad values, not a category
NUMERIC_TEXT_FRACTION = 0.9


def open_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises several types for a bad URI
        # from None: the cause quotes the URI whole, credentials included
        raise DataValidationError(redact(f"cannot open data location {uri!r}: {exc}", uri)) from None


def list_data_files(uri: str) -> tuple[pafs.FileSystem, list[str]]:
    """One file, or every CSV/Parquet file below a folder (daily partitions), in name order."""
    fs, path = open_fs(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataValidationError(f"no data at {public_uri(uri)!r}")
    if info.type == pafs.FileType.File:
        return fs, [path]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(
        i.path for i in infos if i.type == pafs.FileType.File and i.path.lower().endswith(DATA_SUFFIXES)
    )
    if not files:
        raise DataValidationError(f"no CSV or Parquet files under {public_uri(uri)!r}")
    return fs, files


def read_file(fs: pafs.FileSystem, path: str) -> pd.DataFrame:
    if not path.lower().endswith(DATA_SUFFIXES):
        raise DataValidationError(f"{path}: unsupported file type (expected {', '.join(DATA_SUFFIXES)})")
    try:
        if path.lower().endswith(".csv"):
            with fs.open_input_file(path) as handle:
                raw = handle.read()
            check_header(path, pd.read_csv(io.BytesIO(raw), header=None, nrows=1, dtype=str).iloc[0].tolist())
            return pd.read_csv(io.BytesIO(raw))
        table = pq.read_table(path, filesystem=fs)
        check_header(path, table.column_names)
        check_flat(path, table.schema)
        return table.to_pandas()
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(f"{path}: the file is empty") from exc
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise DataValidationError(f"{path}: cannot be read: {exc}") from exc


def check_header(path: str, names: list[object]) -> None:
    """pandas renames a repeated CSV column `a` to `a.1`, which would train on it twice
    under two names; a Parquet file keeps both. Either way the file is refused."""
    repeated = sorted({str(n) for n in names if names.count(n) > 1})
    if repeated:
        raise DataValidationError(f"{path}: column(s) {', '.join(map(repr, repeated))} appear more than once")


def check_flat(path: str, schema: pa.Schema) -> None:
    """Lists, structs and maps have no place in a row of features; pandas would carry
    them as Python objects into hashing and fitting."""
    for field in schema:
        if pa.types.is_nested(field.type):
            raise DataValidationError(f"{path}: column {field.name!r} has nested type {field.type}: only flat columns are accepted")


def _check_same_columns(files: list[str], frames: list[pd.DataFrame]) -> None:
    """Daily partitions must agree on their columns: concatenation would otherwise fill
    the gaps with nulls (or imputed values) without a word."""
    first = list(map(str, frames[0].columns))
    for path, frame in zip(files[1:], frames[1:], strict=True):
        check_columns_match(path, list(map(str, frame.columns)), files[0], first)


def check_columns_match(path: str, names: list[str], first_path: str, first: list[str]) -> None:
    missing = [n for n in first if n not in names]
    extra = [n for n in names if n not in first]
    if missing or extra:
        detail = "; ".join(
            part for part in (f"missing {', '.join(map(repr, missing))}" if missing else "",
                              f"extra {', '.join(map(repr, extra))}" if extra else "") if part
        )  # fmt: skip
        raise DataValidationError(f"{path}: columns differ from {first_path}: {detail}")


def read_data(uri: str) -> tuple[pd.DataFrame, DataFingerprint]:
    fs, files = list_data_files(uri)
    frames = [read_file(fs, f) for f in files]
    _check_same_columns(files, frames)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return frame, fingerprint(frame, public_uri(uri))


def fingerprint(frame: pd.DataFrame, source: str) -> DataFingerprint:
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    digest.update(",".join(map(str, frame.columns)).encode())
    return DataFingerprint(rows=len(frame), sha256=digest.hexdigest(), source=source)


def kind_of(frame: pd.DataFrame, column: str) -> str:
    series = frame[column]
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return "number"
    if pd.api.types.is_string_dtype(series) or isinstance(series.dtype, pd.CategoricalDtype):
        return "category"
    if series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) == "string":
        return "category"  # text with gaps built in Python (None/NaN): pandas does not call it a string dtype
    raise DataValidationError(f"column {column!r} has unsupported dtype {series.dtype}")


def validate(
    frame: pd.DataFrame,
    label: str,
    *,
    min_rows: int,
    required: Sequence[FeatureSpec] = (),
    task: str = "classification",
) -> list[FeatureSpec]:
    """Check the frame and return its feature schema (every column but the label)."""
    if frame.empty:
        raise DataValidationError("the data has no rows")
    if label not in frame.columns:
        raise DataValidationError(
            f"label column {label!r} is missing (columns: {', '.join(map(str, frame.columns))})"
        )
    duplicated = [str(c) for c in frame.columns[frame.columns.duplicated()]]
    if duplicated:
        raise DataValidationError(f"column(s) {', '.join(duplicated)} appear more than once")
    for column in frame.columns:
        if frame[column].isna().all():
            raise DataValidationError(f"column {column!r} is entirely null")
    check_labels(frame[label], label, min_rows=min_rows, task=task)
    _check_duplicates(frame)

    features = [
        FeatureSpec(name=str(c), kind=kind_of(frame, c), dtype=str(frame[c].dtype)) for c in frame.columns if c != label  # type: ignore[arg-type]
    ]
    if not features:
        raise DataValidationError(f"no feature columns besides the label {label!r}")
    by_name = {f.name: f for f in features}
    missing = [r.name for r in required if r.name not in by_name]
    if missing:
        raise DataValidationError(f"required feature column(s) missing: {', '.join(missing)}")
    for spec in required:
        got = by_name[spec.name]
        if got.kind != spec.kind:
            bad = first_bad_value(frame[spec.name]) if spec.kind == "number" else None
            hint = f" (e.g. {bad!r})" if bad is not None else ""
            raise DataValidationError(
                f"column {spec.name!r} must be {spec.kind} as in production, "
                f"but has dtype {got.dtype}{hint}"
            )
    for spec in features:
        _check_values(frame[spec.name], spec)
    return features


def check_labels(labels: pd.Series, label: str, *, min_rows: int, task: str) -> None:
    """What the label alone must satisfy; the streaming reader checks it before reading
    any feature (training/stream.py)."""
    nulls = int(labels.isna().sum())
    if nulls:
        raise DataValidationError(f"label column {label!r} has {nulls} null value(s)")
    if task == "regression":
        _check_quantity_label(labels, label)
    counts = labels.value_counts()
    if len(counts) < 2:
        raise DataValidationError(f"label column {label!r} has a single {'value' if task == 'regression' else 'class'} ({counts.index[0]!r})")
    if len(labels) < min_rows:
        raise DataValidationError(f"only {len(labels)} rows; at least {min_rows} are required")
    rare = counts[counts < 2]
    if task == "classification" and len(rare):
        raise DataValidationError(f"label column {label!r}: class {rare.index[0]!r} has fewer than 2 rows")


def _check_quantity_label(series: pd.Series, label: str) -> None:
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        raise DataValidationError(f"label column {label!r} has dtype {series.dtype}: a regression label must be numbers")
    infinite = int(np.isinf(series.to_numpy(dtype=np.float64)).sum())
    if infinite:
        raise DataValidationError(f"label column {label!r} has {infinite} infinite value(s)")


def _check_duplicates(frame: pd.DataFrame) -> None:
    """Rows repeated wholesale (a partition loaded twice, a fan-out join) weight training
    towards them and land on both sides of the holdout split, flattering the metrics the
    promotion decision rests on. A few repeats happen in real data; many mean a bug."""
    check_repeated(int(frame.duplicated().sum()), len(frame))


def check_repeated(repeated: int, rows: int) -> None:
    if repeated > MAX_DUPLICATE_FRACTION * rows:
        raise DataValidationError(
            f"{repeated} of {rows} rows repeat an earlier row exactly "
            f"(more than {MAX_DUPLICATE_FRACTION:.0%}): is a partition loaded twice?"
        )


def _check_values(series: pd.Series, spec: FeatureSpec) -> None:
    if spec.kind == "number":
        check_infinite(spec.name, count_infinite(series))
        return
    present = int(series.notna().sum())
    numbers = int(pd.to_numeric(series, errors="coerce").notna().sum())
    check_numeric_text(spec.name, numbers, present, lambda: first_bad_value(series))


def count_infinite(series: pd.Series) -> int:
    return int(np.isinf(series.to_numpy(dtype=np.float64, na_value=np.nan)).sum())


def check_infinite(name: str, infinite: int) -> None:
    if infinite:
        raise DataValidationError(f"column {name!r} has {infinite} infinite value(s)")


def check_numeric_text(name: str, numbers: int, present: int, example: Callable[[], object]) -> None:
    """A text column this numeric is a number column with bad values, not a category."""
    if numbers < present and numbers >= NUMERIC_TEXT_FRACTION * present:
        raise DataValidationError(
            f"column {name!r} looks numeric ({numbers} of {present} values are numbers) but holds text such as {example()!r}"
        )


def first_bad_value(series: pd.Series) -> object | None:
    coerced = pd.to_numeric(series, errors="coerce")
    bad = series[coerced.isna() & series.notna()]
    return None if bad.empty else bad.iloc[0]
