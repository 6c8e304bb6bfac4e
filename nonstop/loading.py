"""Turn a published version into a servable estimator, or refuse it with a reason.

The trust decision is made here, by the loader, from a policy fixed by code and by the
serving configuration. It is never read from the artifact or its manifest: whoever can
write those could otherwise choose what gets trusted.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import skops.io as sio
from pydantic import BaseModel, ConfigDict

from nonstop.errors import (
    ArtifactIntegrityError,
    ManifestError,
    ModelLoadError,
    NonstopError,
    SampleMismatchError,
    SchemaMismatchError,
    UntrustedArtifactError,
)
from nonstop.manifest import Manifest
from nonstop.registry import Registry
from nonstop.compiled import FastPredict, agrees, compile_predictor
from nonstop.schema import matrix_dtype, rows_to_matrix, to_python

TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "scipy.")
_PROBA_TOLERANCE = 1e-9


class TrustPolicy(BaseModel):
    """scikit-learn, numpy and scipy types, plus exact type names the operator adds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    extra_types: tuple[str, ...] = ()

    def is_trusted(self, type_name: str) -> bool:
        return type_name.startswith(TRUSTED_MODULE_PREFIXES) or type_name in self.extra_types


@dataclass(frozen=True)
class LoadedModel:
    """An immutable, verified model: swapped in and out whole, never mutated."""

    manifest: Manifest
    estimator: Any
    loaded_at: datetime
    load_seconds: float
    fast: FastPredict | None = None

    @property
    def version(self) -> int:
        return self.manifest.version

    def predict(self, matrix: np.ndarray) -> list[Any]:
        if self.fast is not None:
            return self.fast(matrix).tolist()
        return to_python(self.estimator.predict(matrix))


def load_version(registry: Registry, model: str, version: int, policy: TrustPolicy) -> LoadedModel:
    started = time.perf_counter()
    try:
        manifest = registry.manifest(model, version)
    except ModelLoadError:
        raise  # already says why this version is refused
    except NonstopError as exc:
        raise ManifestError(model, version, exc.message) from exc
    data = registry.read_artifact(model, version, manifest)
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise ArtifactIntegrityError(
            model, version, f"artifact sha256 {digest[:12]}… does not match the manifest's {manifest.sha256[:12]}…"
        )
    estimator = _safe_loads(model, version, data, policy)
    verify(manifest, estimator)
    return LoadedModel(
        manifest=manifest,
        estimator=estimator,
        loaded_at=datetime.now(UTC),
        load_seconds=time.perf_counter() - started,
        fast=_checked_fast_path(manifest, estimator),
    )


def _checked_fast_path(manifest: Manifest, estimator: Any) -> FastPredict | None:
    """The numpy path, kept only if it matches scikit-learn on varied rows, gaps included."""
    if matrix_dtype(manifest.features) is not np.float64:
        return None
    fast = compile_predictor(estimator)
    if fast is None:
        return None
    samples = rows_to_matrix(manifest.samples.inputs, manifest.features)
    rng = np.random.default_rng(0)
    varied = np.repeat(samples, 8, axis=0) * rng.uniform(0.5, 1.5, size=(len(samples) * 8, samples.shape[1]))
    gaps = samples.copy()
    gaps[rng.random(gaps.shape) < 0.2] = np.nan
    return fast if agrees(fast, estimator, np.vstack([samples, varied, gaps])) else None


def _safe_loads(model: str, version: int, data: bytes, policy: TrustPolicy) -> Any:
    try:
        found = sio.get_untrusted_types(data=data)
    except Exception as exc:  # skops raises assorted errors on a malformed archive
        raise ArtifactIntegrityError(model, version, f"not a readable skops artifact: {exc}") from exc
    refused = sorted(t for t in found if not policy.is_trusted(t))
    if refused:
        raise UntrustedArtifactError(model, version, f"types outside the trusted list: {', '.join(refused)}")
    try:
        return sio.loads(data, trusted=found)
    except Exception as exc:
        raise ArtifactIntegrityError(model, version, f"skops could not load the artifact: {exc}") from exc


def verify(manifest: Manifest, estimator: Any) -> None:
    """The artifact must accept the manifest's schema and reproduce its sample outputs."""
    model, version = manifest.model, manifest.version
    fitted = getattr(estimator, "n_features_in_", None)
    if fitted is not None and fitted != len(manifest.features):
        raise SchemaMismatchError(
            model, version, f"estimator expects {fitted} features, manifest declares {len(manifest.features)}"
        )
    samples = manifest.samples
    if not samples.inputs:
        raise ManifestError(model, version, "manifest carries no sample inputs to verify against")
    try:
        got = to_python(estimator.predict(rows_to_matrix(samples.inputs, manifest.features)))
    except Exception as exc:
        raise SchemaMismatchError(model, version, f"estimator rejects the manifest's samples: {exc}") from exc
    if len(got) != len(samples.outputs):
        raise ManifestError(model, version, f"{len(samples.inputs)} sample inputs but {len(samples.outputs)} outputs")
    mismatched = [i for i, (a, b) in enumerate(zip(got, samples.outputs, strict=True)) if not _same(a, b)]
    if mismatched:
        raise SampleMismatchError(
            model, version, f"{len(mismatched)} of {len(got)} sample outputs differ (first at sample {mismatched[0]})"
        )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float | int):
        return abs(a - b) <= _PROBA_TOLERANCE * max(1.0, abs(b))
    return a == b
