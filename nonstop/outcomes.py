"""Outcomes: the labels that arrive after a prediction, keyed by the request id it was served under.

They are checked against the task of the model's version (a classifier's label must be
one of its classes, a regressor's a finite number), stored beside the captures
(nonstop/capture.py's layout, under `outcomes/`) and joined to the captured records by
request id. Decisions, documented in docs/capture.md:

- a batch naming one request id twice is refused whole, naming the ids: which of the two
  the sender meant cannot be guessed;
- an id posted again in a later batch replaces the earlier label (the last received wins
  at the join): a corrected label is how a mistake is fixed;
- an id no captured record has yet is stored anyway and reported as unknown: its record
  may still be in a replica's buffer, or it was not sampled; it joins once captured.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field

from nonstop.capture import DATE_FORMAT, FEATURE_PREFIX, OUTCOMES, RECORDS, read, write_outcomes
from nonstop.errors import DataValidationError, clip
from nonstop.manifest import Manifest, Scalar

MAX_OUTCOMES = 10_000  # per batch: a bigger file is posted in several
MAX_REQUEST_ID = 128
_RECORD_KEYS = ("request_id", "row", "version", "role", "prediction")  # an empty join's columns


class Outcome(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(min_length=1, max_length=MAX_REQUEST_ID)
    label: Scalar


class OutcomeBatch(BaseModel):
    """The body of `POST /v1/models/{model}/outcomes`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    outcomes: list[Outcome] = Field(min_length=1, max_length=MAX_OUTCOMES)


class OutcomeReport(BaseModel):
    """What a post of outcomes answers: how many were stored, and which ids no record has yet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stored: int
    unknown: int
    unknown_ids: list[str] = Field(description="the first few ids no captured record has yet; stored all the same")


@dataclass(frozen=True)
class Checked:
    request_ids: list[str]
    labels: list[Any]


def check(outcomes: Sequence[Outcome], manifest: Manifest) -> Checked:
    """The labels typed as the version's task says, or a DataValidationError naming the problem."""
    counts = Counter(o.request_id for o in outcomes)
    repeated = [rid for rid, n in counts.items() if n > 1]
    if repeated:
        raise DataValidationError(
            f"request id(s) {', '.join(repr(clip(r)) for r in repeated[:5])} appear more than once in the batch: send each once"
        )
    return Checked([o.request_id for o in outcomes], [_label(o, manifest) for o in outcomes])


def _label(outcome: Outcome, manifest: Manifest) -> Any:
    value = outcome.label
    if manifest.task == "regression":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise DataValidationError(
                f"request id {clip(outcome.request_id)!r}: label {clip(str(value))!r} is not a finite number, "
                f"and {manifest.model!r} v{manifest.version} is a regression"
            )
        return float(value)
    for known in manifest.classes:  # a CSV reads 1 as "1" or 1.0: matched by its text
        if type(known) is type(value) and known == value or str(known) == str(value) or _same_number(known, value):
            return known
    classes = ", ".join(repr(c) for c in manifest.classes[:10])
    raise DataValidationError(
        f"request id {clip(outcome.request_id)!r}: label {clip(str(value))!r} is not a class of "
        f"{manifest.model!r} v{manifest.version} ({classes})"
    )


def _same_number(known: Any, value: Any) -> bool:
    numbers = (int, float)
    return isinstance(known, numbers) and isinstance(value, numbers) and not isinstance(value, bool) and float(known) == float(value)


def store(fs: pafs.FileSystem, root: str, model: str, checked: Checked, now: datetime | None = None) -> OutcomeReport:
    """Write the batch to the outcomes dataset and say which ids no captured record has."""
    at = now or datetime.now(UTC)
    table = pa.table(
        {
            "request_id": checked.request_ids,
            "label": checked.labels,
            "received_at": pa.array([at] * len(checked.labels), type=pa.timestamp("us", tz="UTC")),
            "model": [model] * len(checked.labels),
            "date": [at.strftime(DATE_FORMAT)] * len(checked.labels),
        }
    )
    write_outcomes(fs, root, table)
    ids = pa.array(checked.request_ids, type=pa.string())
    records = read(fs, root, RECORDS, model, columns=lambda name: name == "request_id", where=ds.field("request_id").isin(ids))
    known = set(records.column("request_id").to_pylist()) if records is not None else set()
    unknown = [rid for rid in checked.request_ids if rid not in known]
    return OutcomeReport(stored=len(checked.labels), unknown=len(unknown), unknown_ids=unknown[:20])


def from_frame(frame: pd.DataFrame) -> list[Outcome]:
    """`request_id` and `label` columns of a CSV or Parquet file, as outcomes."""
    missing = [c for c in ("request_id", "label") if c not in frame.columns]
    if missing:
        raise DataValidationError(f"the outcomes file has no column(s) {', '.join(missing)}: it needs request_id and label")
    return [
        Outcome(request_id=str(rid), label=label.item() if hasattr(label, "item") else label)
        for rid, label in zip(frame["request_id"], frame["label"], strict=True)
    ]


def joined(fs: pafs.FileSystem, root: str, model: str, since: datetime | None = None) -> pd.DataFrame:
    """Every captured record of `model` with its latest label (NaN where none arrived yet);
    `since`: only the records answered from then on (and the labels received since that day)."""
    day = since.astimezone(UTC).date() if since is not None else None
    records = read(fs, root, RECORDS, model, day)
    if records is None or records.num_rows == 0:
        return pd.DataFrame(columns=[*_RECORD_KEYS, "label"])
    frame = records.to_pandas()
    if since is not None:
        frame = frame[frame["timestamp"] >= pd.Timestamp(since)]
    outcomes = read(fs, root, OUTCOMES, model, day)
    if outcomes is None:
        frame["label"] = None
        return frame
    latest = (
        outcomes.to_pandas()
        .sort_values("received_at")
        .drop_duplicates("request_id", keep="last")[["request_id", "label"]]
    )
    return frame.merge(latest, on="request_id", how="left")


@dataclass(frozen=True)
class Labelled:
    """What quality is measured on: the records whose label arrived, joined to their latest
    label (features left out), and how many records each (version, role) has in all."""

    frame: pd.DataFrame
    captured: dict[tuple[int, str], int]


def labelled(fs: pafs.FileSystem, root: str, model: str, since: datetime | None = None) -> Labelled:
    """`joined`'s labelled rows and counts, read in memory that grows with the labels, not
    with the traffic: a replica measures live quality on a day of captures (millions of
    rows), so the records are counted on two columns, and only the labelled ones are read
    whole, selected by request id as the files are read."""
    day = since.astimezone(UTC).date() if since is not None else None
    recent = ds.field("timestamp") >= pa.scalar(since, type=pa.timestamp("us", tz="UTC")) if since is not None else None
    counted = read(fs, root, RECORDS, model, day, columns=lambda name: name in ("version", "role"), where=recent)
    captured: dict[tuple[int, str], int] = {}
    if counted is not None and counted.num_rows:
        for row in counted.group_by(["version", "role"]).aggregate([([], "count_all")]).to_pylist():
            captured[(int(row["version"]), str(row["role"]))] = int(row["count_all"])
    outcomes = read(fs, root, OUTCOMES, model, day) if captured else None
    if outcomes is None or outcomes.num_rows == 0:
        return Labelled(pd.DataFrame(columns=[*_RECORD_KEYS, "label"]), captured)
    latest = outcomes.to_pandas().sort_values("received_at").drop_duplicates("request_id", keep="last")[["request_id", "label"]]
    ids = pa.array(latest["request_id"].tolist(), type=pa.string())
    selected = ds.field("request_id").isin(ids) if recent is None else recent & ds.field("request_id").isin(ids)
    records = read(fs, root, RECORDS, model, day, columns=lambda name: not name.startswith(FEATURE_PREFIX), where=selected)
    frame = records.to_pandas() if records is not None else pd.DataFrame(columns=list(_RECORD_KEYS))
    return Labelled(frame.merge(latest, on="request_id", how="inner"), captured)
