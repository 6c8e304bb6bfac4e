"""The transport-free data plane: which version answers, and its answer.

It knows no JSON and no HTTP. A request goes in two steps, so that decoding can be
checked against the exact version that will answer:

    binding = plane.bind(model, version)        # reads the served state once
    matrix = <decode the body against binding.features>
    result = await plane.infer(binding, matrix)  # InferenceResult

A swap in the middle of a request cannot mix two versions, and a request for one model
is never answered by another's estimator: `bind` only ever returns a version of the
model named in the request. What a request asks for is a set of `Output`s; a new output
kind is one enum member and one branch in `compute`.

Prediction can go through an injected batching `Predictor`, so the deployment batches
concurrent requests (`serve.batch` with no wait: what queued while the previous batch
ran) without this module knowing about Ray.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from nonstop.errors import ModelNotReady, NonstopError, UnknownModel, VersionNotFound, clip
from nonstop.loading import LoadedModel
from nonstop.manifest import FeatureSpec
from serve_app.rollout.canary import Canary, Route
from serve_app.replica.state import ModelMetadata, Role, ServingState


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


Predictor = Callable[[Job], Awaitable[Outputs]]


class StateSource(Protocol):
    @property
    def state(self) -> ServingState: ...


class Observer(Protocol):
    """Told of every outcome; the deployment plugs metrics in here."""

    def predicted(self, model: str, version: int, rows: int) -> None: ...
    def refused(self, model: str, reason: str) -> None: ...


class _Unobserved:
    def predicted(self, model: str, version: int, rows: int) -> None:
        pass

    def refused(self, model: str, reason: str) -> None:
        pass


OTHER_MODEL = "other"  # refusals for names not served are counted under one label

def compute(loaded: LoadedModel, matrix: np.ndarray, outputs: frozenset[Output]) -> Outputs:
    """Every requested output, one list entry per row."""
    results: Outputs = {}
    if Output.PREDICTIONS in outputs:
        results[Output.PREDICTIONS] = loaded.predict(matrix)
    if Output.PROBABILITIES in outputs:
        results[Output.PROBABILITIES] = loaded.predict_proba(matrix)
    return results


def run_batch(jobs: Sequence[Job]) -> list[Outputs]:
    """One estimator call per (version, outputs) for many requests; during a swap a
    batch can hold two versions."""
    results: list[Outputs] = [{} for _ in jobs]
    groups: dict[tuple[int, frozenset[Output]], list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault((id(job.loaded), job.outputs), []).append(index)
    for indices in groups.values():
        first = jobs[indices[0]]
        matrices = [jobs[i].matrix for i in indices]
        stacked = compute(first.loaded, np.concatenate(matrices) if len(matrices) > 1 else matrices[0], first.outputs)
        start = 0
        for i, matrix in zip(indices, matrices, strict=True):
            results[i] = {kind: values[start : start + len(matrix)] for kind, values in stacked.items()}
            start += len(matrix)
    return results


@dataclass(frozen=True)
class Binding:
    """The version that will answer one request, chosen once."""

    model: str
    loaded: LoadedModel
    route: Route | None = None  # set while a rollout runs: see serve_app/rollout/canary.py

    @property
    def version(self) -> int:
        return self.loaded.version

    @property
    def features(self) -> list[FeatureSpec]:
        return self.loaded.manifest.features


@dataclass(frozen=True)
class InferenceResult:
    model: str
    version: int
    outputs: Outputs

    @property
    def predictions(self) -> list[Any]:
        return self.outputs[Output.PREDICTIONS]


class DataPlane:
    def __init__(
        self,
        source: StateSource,
        batched: Predictor | None = None,
        observer: Observer | None = None,
        canary: Canary | None = None,
    ) -> None:
        self._source = source
        self._batched = batched
        self._observer = observer or _Unobserved()
        self._canary = canary

    def served_models(self) -> list[str]:
        model = self._source.state.model
        return [model] if model else []

    def is_served(self, model: str) -> bool:
        return model in self.served_models()

    def _state_for(self, model: str) -> ServingState:
        state = self._source.state
        if model != state.model:
            raise UnknownModel(f"unknown model {clip(model)!r}; this server serves {state.model!r}")
        return state

    def bind(self, model: str, version: int | None = None, key: str | None = None) -> Binding:
        """The primary version of `model` (or, while a rollout runs, the candidate for its
        share of requests; `key` makes the choice sticky), or the loaded `version` asked for."""
        state = self._state_for(model)
        if version is not None:
            held = next((v.loaded for v in state.versions if v.loaded.version == version), None)
            if held is None:
                serving = state.primary.version if state.primary else None
                raise VersionNotFound(f"model {model!r} version {version} is not served here (serving: {serving})")
            return Binding(model, held)
        primary = state.held(Role.PRIMARY)
        if primary is None:
            why = f": {state.last_error.message}" if state.last_error else ""
            raise ModelNotReady(f"model {model!r} has no version loaded yet{why}")
        route = self._canary.route(state, key) if self._canary is not None else None
        return Binding(model, route.answer if route else primary, route)

    async def infer(self, binding: Binding, matrix: np.ndarray, outputs: frozenset[Output] = PREDICTIONS_ONLY) -> InferenceResult:
        if Output.PROBABILITIES in outputs:
            binding.loaded.require_probabilities()  # refused alone, never inside a shared batch
        started = time.perf_counter()
        route = binding.route
        try:
            results = await self._run(Job(binding.loaded, matrix, outputs))
        except Exception:
            if route is None or self._canary is None or not route.by_candidate or route.compare is None:
                raise
            # a candidate that fails costs the client nothing: the primary answers instead
            self._canary.failed(route.answer, time.perf_counter() - started)
            binding, route = Binding(binding.model, route.compare), None
            results = await self._run(Job(binding.loaded, matrix, outputs))
        if route is not None and self._canary is not None:
            self._canary.answered(route, matrix, results.get(Output.PREDICTIONS, []), time.perf_counter() - started)
        self._observer.predicted(binding.model, binding.version, len(matrix))
        return InferenceResult(model=binding.model, version=binding.version, outputs=results)

    async def _run(self, job: Job) -> Outputs:
        return run_batch([job])[0] if self._batched is None else await self._batched(job)

    def refused(self, model: str, exc: NonstopError) -> None:
        """Count a refused request by the error's reason code; a model name the client
        made up is not a label (that would let clients grow the metrics without bound)."""
        self._observer.refused(model if self.is_served(model) else OTHER_MODEL, exc.reason)

    def metadata(self, model: str) -> ModelMetadata:
        return self._state_for(model).metadata()
