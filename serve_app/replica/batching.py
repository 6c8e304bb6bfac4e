"""A request's work for the estimator, alone or batched with others: what it asks for
(`Output`), the `Job`, and a batch run that keeps every request's failure its own.

The deployment batches concurrent requests (`serve.batch`, serve_app/app.py) and hands
the batch to `run_batch`: one estimator call per version and outputs, and a group whose
call fails is run again job by job, so one request's bad rows or one version's failure
never fails another request. A new output kind is one enum member and one branch in
`compute`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from nonstop.loading import LoadedModel


class Output(StrEnum):
    """What a request can ask the model for."""

    PREDICTIONS = "predictions"
    PROBABILITIES = "probabilities"  # a classifier's, columns in the manifest's `classes` order


PREDICTIONS_ONLY = frozenset({Output.PREDICTIONS})
Outputs = dict[Output, list[Any]]


@dataclass(frozen=True)
class Job:
    """One request's work for the estimator."""

    loaded: LoadedModel
    matrix: np.ndarray
    outputs: frozenset[Output] = PREDICTIONS_ONLY


# A job's outputs, or what its version raised on it: a batch hands each request its own.
Outcome = Outputs | Exception
# Raises what the job's version raised on it (`settled`), never another job's failure.
Predictor = Callable[[Job], Awaitable[Outputs]]


def compute(loaded: LoadedModel, matrix: np.ndarray, outputs: frozenset[Output]) -> Outputs:
    """Every requested output, one list entry per row."""
    results: Outputs = {}
    if Output.PREDICTIONS in outputs:
        results[Output.PREDICTIONS] = loaded.predict(matrix)
    if Output.PROBABILITIES in outputs:
        results[Output.PROBABILITIES] = loaded.predict_proba(matrix)
    return results


def run_batch(jobs: Sequence[Job]) -> list[Outcome]:
    """One estimator call per (version, outputs) for many requests; during a swap or a
    rollout a batch holds two versions. What one version raises, or raises on one
    request's rows, fails that request alone: a group whose call fails is run again job
    by job, so the happy path keeps its single call and a failure costs a rerun."""
    outcomes: list[Outcome] = [{} for _ in jobs]
    groups: dict[tuple[int, frozenset[Output]], list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault((id(job.loaded), job.outputs), []).append(index)
    for indices in groups.values():
        first = jobs[indices[0]]
        matrices = [jobs[i].matrix for i in indices]
        try:
            stacked = compute(first.loaded, np.concatenate(matrices) if len(matrices) > 1 else matrices[0], first.outputs)
        except Exception as exc:  # whatever the estimator raises: this group's, not the batch's
            for i in indices:
                outcomes[i] = exc if len(indices) == 1 else _alone(jobs[i])
            continue
        start = 0
        for i, matrix in zip(indices, matrices, strict=True):
            outcomes[i] = {kind: values[start : start + len(matrix)] for kind, values in stacked.items()}
            start += len(matrix)
    return outcomes


def _alone(job: Job) -> Outcome:
    try:
        return compute(job.loaded, job.matrix, job.outputs)
    except Exception as exc:  # the request's own failure, handed back to it alone
        return exc


def settled(outcome: Outcome) -> Outputs:
    """A job's outputs, or the exception its version raised on it, raised for its request."""
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
