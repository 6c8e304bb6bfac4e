"""`nonstop replay`: captured traffic scored offline by a candidate, compared with what
production answered and with the labels that arrived, the evidence signed into the ledger.

The rows come from the capture store (nonstop/capture.py: the features each request
sent, typed as the answering version's schema) joined with the outcomes
(nonstop/outcomes.py), and go through `nonstop score`'s own path (nonstop/batch/job.py):
the same loader, trust policy and row rules as serving, on the Ray cluster. Only what
production answered is the baseline (role `primary`): a canary's answers and the shadow
comparisons are other versions'. A captured row the candidate cannot take (a feature it
needs that the captured version did not have, or that capture left out) is a reject
with its reason, and counted in the evidence, never silently dropped.

The evidence is one ledger entry (`decision/replay` on the alias whose answers were the
baseline): signed with the registry's key, verified by `nonstop history` like every entry.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from nonstop.batch.evidence import REPLAY, Comparison, ReplayEvidence
from nonstop.batch.job import ScoreOptions, prepare, score
from nonstop.capture import FEATURE_PREFIX, CaptureConfig, filesystem, root_of
from nonstop.columns import MAX_STRING_LENGTH
from nonstop.config import Settings
from nonstop.errors import DataValidationError
from nonstop.ledger import EntryDraft, default_actor
from nonstop.outcomes import joined
from nonstop.registry import PRODUCTION, Registry

REPLAYS = "replays"
REQUEST_ID, ROW, SERVED_VERSION, SERVED_PREDICTION, LABEL = "request_id", "row", "served_version", "served_prediction", "label"
PRIMARY = "primary"


class ReplayOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    candidate: int = Field(ge=1)
    since: datetime = Field(description="captured at or after this (aware) time")
    alias: str = Field(default=PRODUCTION, description="the alias the ledger entry is about: the served baseline's")
    destination: str | None = Field(default=None, description="capture destination; default: the registry's captures/")
    out: str | None = Field(default=None, description="where the scored rows go; default: under the captures, replays/")
    actor: str = Field(default_factory=default_actor, max_length=200)
    workers: int = Field(default=1, ge=1)
    worker_cpus: float | None = Field(default=None, ge=0)
    batch_size: int = Field(default=8192, ge=1)
    max_string_length: int = Field(default=MAX_STRING_LENGTH, ge=1)


class ReplayReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    candidate: int
    since: datetime
    captured: int = Field(description="rows production answered in the window")
    served_versions: list[int] = Field(description="the versions that answered them")
    scored: int
    rejected: int
    comparison: Comparison
    out: str
    ledger_seq: int = Field(description="the ledger entry holding this report as evidence")


def captured_rows(root: str, model: str, since: datetime) -> pa.Table:
    """What production answered since `since`: the features under their own names, the
    request id and row, the served version and answer, and the label where one arrived."""
    fs, path = filesystem(root)
    frame = joined(fs, path, model)
    if len(frame):
        frame = frame[(frame["role"] == PRIMARY) & (frame["timestamp"] >= pd.Timestamp(since))]
    if not len(frame):
        raise DataValidationError(
            f"no traffic of {model!r} answered by production was captured since {since.isoformat()} under {root}: "
            "is capture on (docs/capture.md), and the window right?"
        )
    features = [c for c in frame.columns if c.startswith(FEATURE_PREFIX)]
    labels = frame["label"].astype(object).where(frame["label"].notna(), None).tolist()
    columns: dict[str, Any] = {c.removeprefix(FEATURE_PREFIX): pa.array(frame[c].tolist(), from_pandas=True) for c in features}
    columns[REQUEST_ID] = pa.array(frame[REQUEST_ID].astype(str).tolist(), type=pa.string())
    columns[ROW] = pa.array(frame[ROW].to_numpy(), type=pa.int64())
    columns[SERVED_VERSION] = pa.array(frame["version"].to_numpy(), type=pa.int64())
    columns[SERVED_PREDICTION] = pa.array(frame["prediction"].tolist(), from_pandas=True)
    columns[LABEL] = pa.array([_plain(v) for v in labels], from_pandas=True)
    return pa.table(columns)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def replay(options: ReplayOptions, settings: Settings, connect: Callable[[], object] | None = None) -> ReplayReport:
    """Score the captured window with the candidate on the Ray cluster, then append the
    report to the model's ledger. `connect` joins the cluster once the candidate loaded
    and the window holds traffic: a refusal never waits for a cluster."""
    import ray.data

    registry = Registry(settings.registry, signing_key=settings.signing_key)
    root = root_of(registry.uri, CaptureConfig(destination=options.destination))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = options.out or posixpath.join(root, REPLAYS, f"model={options.model}", f"version={options.candidate}", stamp)
    score_options = ScoreOptions(
        model=options.model, version=options.candidate, data=root, out=out, keep=(REQUEST_ID, ROW, SERVED_VERSION),
        label=LABEL, baseline=SERVED_PREDICTION, workers=options.workers,
        worker_cpus=options.worker_cpus, batch_size=options.batch_size, max_string_length=options.max_string_length,
    )  # fmt: skip
    prepared = prepare(score_options, settings)  # a candidate that must not run is refused before any row is read
    rows = captured_rows(root, options.model, options.since)
    if connect is not None:
        connect()
    blocks = [rows.slice(start, options.batch_size) for start in range(0, rows.num_rows, options.batch_size)]
    summary = score(score_options, settings, prepared, ray.data.from_blocks(blocks))  # no task: see source.read
    if summary.comparison is None:  # a baseline column always gives one
        raise DataValidationError("the replay produced no comparison")
    served = sorted(set(rows.column(SERVED_VERSION).to_pylist()))
    evidence = ReplayEvidence(
        since=options.since, captured=rows.num_rows, served_versions=served, scored=summary.scored,
        rejected=summary.rejected, comparison=summary.comparison, out=out,
    )  # fmt: skip
    entry = registry.ledger(options.model).append(
        EntryDraft(
            kind="decision", action=REPLAY, alias=options.alias, candidate=options.candidate, actor=options.actor,
            reason=f"replay of {rows.num_rows} captured rows: {summary.comparison.line()}"[:4000],
            evidence={REPLAY: evidence.model_dump(mode="json")},
        )  # fmt: skip
    )
    return ReplayReport(
        model=options.model, candidate=options.candidate, since=options.since, captured=rows.num_rows,
        served_versions=served, scored=summary.scored, rejected=summary.rejected, comparison=summary.comparison,
        out=out, ledger_seq=entry.seq,
    )  # fmt: skip
