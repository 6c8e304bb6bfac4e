"""What a replica serves, as data: one immutable `ServingState`, replaced whole.

The holder builds a new state for every change (a version swapped in, a target changed,
a load refused) and assigns it in one reference assignment; the data plane reads it once
per request. A state holds any number of loaded versions, each with a role: a primary,
and during a rollout a candidate with the share of requests it answers, so a request
reads primary, candidate and share from one state, never a candidate with another
step's share; a canary or a shadow is one more entry, not another attribute threaded
through every layer. Every version in a state belongs to the state's model: a model switch
builds a state with none of the old model's versions, so a request can never be answered
by another model's estimator.

`ReplicaStatus` is the same state as a report: the replica posts it to the status board,
`nonstop status` prints it, and the metrics are derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nonstop.capture import CaptureStatus
from nonstop.loading import LoadedModel
from nonstop.manifest import FeatureSpec, Scalar, Task
from serve_app.config import ModelTarget


class Role(StrEnum):
    """Why a loaded version is held: the primary answers; a candidate answers a rollout's
    share of requests, or only scores in the shadow (serve_app/rollout/canary.py)."""

    PRIMARY = "primary"
    CANDIDATE = "candidate"


class LoadFailure(BaseModel):
    """Why the last attempt to serve something failed; `reason` is the error's code."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int | None
    reason: str
    message: str
    at: datetime


@dataclass(frozen=True)
class ServedVersion:
    loaded: LoadedModel
    role: Role


@dataclass(frozen=True)
class ServingState:
    """The target the operator set, the versions loaded for it, the candidate's share of
    requests (`weight`; 0 with a candidate held: it only scores in the shadow), and the
    last failure."""

    target: ModelTarget | None = None
    versions: tuple[ServedVersion, ...] = ()
    last_error: LoadFailure | None = None
    weight: float = 0.0

    @property
    def model(self) -> str | None:
        """The model this replica serves: the target's, whatever is loaded yet."""
        return self.target.model if self.target else None

    def held(self, role: Role) -> LoadedModel | None:
        return next((v.loaded for v in self.versions if v.role is role), None)

    @property
    def primary(self) -> LoadedModel | None:
        return self.held(Role.PRIMARY)

    @property
    def ready(self) -> bool:
        return self.primary is not None

    def with_version(self, loaded: LoadedModel, role: Role) -> ServingState:
        """The same state with `loaded` in `role`, replacing what held that role."""
        if self.model != loaded.manifest.model:
            raise ValueError(f"a state for {self.model!r} cannot hold a version of {loaded.manifest.model!r}")
        kept = tuple(v for v in self.versions if v.role is not role)
        return replace(self, versions=(*kept, ServedVersion(loaded, role)))

    def with_candidate(self, loaded: LoadedModel | None, weight: float) -> ServingState:
        """`loaded` as the candidate answering `weight` of requests, both in one change
        (None: no candidate, and no share)."""
        if loaded is None:
            return replace(self, versions=tuple(v for v in self.versions if v.role is not Role.CANDIDATE), weight=0.0)
        return replace(self.with_version(loaded, Role.CANDIDATE), weight=weight)

    def with_error(self, failure: LoadFailure) -> ServingState:
        return replace(self, last_error=failure)

    def retargeted(self, target: ModelTarget) -> ServingState:
        """The new target; another model starts from nothing loaded and no error."""
        if target == self.target:
            return self
        if target.model == self.model:
            return replace(self, target=target)
        return ServingState(target=target)

    def status(self, replica_id: str, pid: int, reported_at: datetime) -> ReplicaStatus:
        return ReplicaStatus(
            replica_id=replica_id,
            pid=pid,
            model=self.model,
            target=self.target.describe() if self.target else None,
            versions=[
                VersionStatus(
                    model=v.loaded.manifest.model,
                    version=v.loaded.version,
                    role=v.role,
                    since=v.loaded.loaded_at,
                    load_seconds=v.loaded.load_seconds,
                )
                for v in self.versions
            ],
            last_error=self.last_error,
            reported_at=reported_at,
        )

    def metadata(self) -> ModelMetadata:
        """What is actually loaded, never what is merely targeted."""
        if self.model is None:
            raise ValueError("a state without a target describes no model")
        primary = self.primary
        manifest = primary.manifest if primary else None
        return ModelMetadata(
            name=self.model,
            ready=primary is not None,
            version=str(manifest.version) if manifest else None,
            target=self.target.describe() if self.target else None,
            loaded_at=primary.loaded_at if primary else None,
            load_seconds=primary.load_seconds if primary else None,
            features=manifest.features if manifest else [],
            task=manifest.task if manifest else None,
            classes=manifest.classes if manifest else [],
            output=_output_shape(primary) if primary else None,
            metrics=manifest.metrics if manifest else {},
            created_at=manifest.created_at if manifest else None,
            last_error=self.last_error,
        )


def _output_shape(loaded: LoadedModel) -> OutputShape:
    if loaded.manifest.task == "regression":
        return OutputShape(prediction="number", probabilities=None)
    return OutputShape(prediction="class", probabilities=len(loaded.manifest.classes) if loaded.gives_probabilities else None)


class VersionStatus(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    version: int
    role: Role
    since: datetime
    load_seconds: float


class ModelStatus(BaseModel):
    """One model of many on one replica (serve_app/replica/models.py): whether it is held,
    how often its requests found it held, how often it was loaded and evicted here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    held: bool
    version: int | None = Field(description="the primary held, if any")
    hits: int = Field(description="requests that found it held")
    loads: int = Field(description="loads on this replica (the first one, and after each eviction)")
    evictions: int
    load_seconds: float | None = Field(description="the last load's time, as its requests waited for it")
    held_bytes: int = Field(description="estimated bytes of its loaded versions (0 when not held)")
    last_error: LoadFailure | None = None


class ReplicaStatus(BaseModel):
    """One replica's report, read by `nonstop status`, the tests and the metrics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replica_id: str
    pid: int
    model: str | None
    target: str | None
    versions: list[VersionStatus]
    last_error: LoadFailure | None
    reported_at: datetime
    capture: CaptureStatus | None = None
    models: list[ModelStatus] = Field(default=[], description="many models: each one this replica loaded")

    def held(self, role: Role) -> VersionStatus | None:
        return next((v for v in self.versions if v.role is role), None)

    @property
    def primary(self) -> VersionStatus | None:
        return self.held(Role.PRIMARY)

    @property
    def ready(self) -> bool:
        return self.primary is not None

    def serves(self, model: str, version: int) -> bool:
        """`version` of `model` is a primary here (one model's, or one of many)."""
        return any(v.role is Role.PRIMARY and (v.model, v.version) == (model, version) for v in self.versions)


class OutputShape(BaseModel):
    """What one instance's answer is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prediction: Literal["class", "number"] = Field(description="a class label, or a number (regression)")
    probabilities: int | None = Field(
        description="with ?probabilities=true: this many floats per instance, in `classes` order; null if the model gives none"
    )


class ModelMetadata(BaseModel):
    """`GET /v1/models/{model}`: the version loaded as primary, the target, the last error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    ready: bool
    version: str | None
    target: str | None
    loaded_at: datetime | None
    load_seconds: float | None
    features: list[FeatureSpec]
    task: Task | None = None
    classes: list[Scalar]
    output: OutputShape | None = None
    metrics: dict[str, float]
    created_at: datetime | None
    last_error: LoadFailure | None
