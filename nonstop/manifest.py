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


class ManifestDraft(BaseModel):
    """What training knows before the registry assigns a version and digests the bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: list[FeatureSpec]
    label: str
    classes: list[Scalar]
    data: DataFingerprint
    metrics: dict[str, float]
    parent_version: int | None = None
    libraries: dict[str, str]
    samples: SampleSet


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
