"""What a published version promises about itself.

The manifest is written last, so its presence is what makes a version exist. Everything
a server needs to decide whether it may serve the artifact (digest, schema, samples)
lives here, and the loader checks the artifact against it rather than trusting either.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FeatureKind = Literal["number", "category"]
Task = Literal["classification", "regression"]
Scalar = float | int | str | bool


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: FeatureKind
    dtype: str = Field(description="pandas dtype seen in the training data")


class DataFingerprint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: int
    sha256: str
    source: str


class SampleSet(BaseModel):
    """Inputs in schema order and the outputs the artifact gave for them at training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: list[list[Scalar | None]]
    outputs: list[Scalar]
    probabilities: list[list[float]] | None = Field(
        default=None, description="a classifier's class probabilities for the inputs, columns in `classes` order"
    )


class GateRecord(BaseModel):
    """How the version fared against production when it was published, and whether a
    person overrode the verdict (`forced`): the trace an override leaves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str
    higher_is_better: bool
    tolerance: float
    production_version: int | None
    passed: bool
    reason: str
    forced: bool = False


class ManifestDraft(BaseModel):
    """What training knows before the registry assigns a version and digests the bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: list[FeatureSpec]
    label: str
    task: Task = Field(default="classification", description="manifests written before tasks were classifiers")
    classes: list[Scalar] = Field(description="a classifier's classes in predict_proba's column order; empty for regression")
    estimator: str | None = Field(default=None, description="class path of the published object, e.g. sklearn.pipeline.Pipeline")
    format: str = Field(default="skops", description="the artifact's format (nonstop.formats)")
    data: DataFingerprint
    metrics: dict[str, float]
    parent_version: int | None = None
    libraries: dict[str, str]
    samples: SampleSet
    gate: GateRecord | None = None
    trusted_types: list[str] | None = Field(
        default=None,
        description="exact types beyond the format's own list that the artifact holds, recorded at publishing: "
        "a loader whose NONSTOP_TRUSTED_TYPES lacks one refuses the version naming it; None: published before this was recorded",
    )


class Manifest(ManifestDraft):
    model: str
    version: int
    created_at: datetime
    artifact: str
    sha256: str

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def same_schema(self, other: Manifest) -> bool:
        return [(f.name, f.kind) for f in self.features] == [
            (f.name, f.kind) for f in other.features
        ]
