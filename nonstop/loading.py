"""Turn a published version into a servable estimator, or refuse it with a reason.

The trust decision is made here, by the loader, from a policy fixed by code and by the
serving configuration. It is never read from the artifact or its manifest: whoever can
write those could otherwise choose what gets trusted.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from nonstop.compiled import FastPredict, agrees, compile_predictor
from nonstop.config import TRUSTED_TYPES_ENV, Settings
from nonstop.errors import (
    ArtifactIntegrityError,
    ConfigError,
    InvalidInput,
    InvalidStructureError,
    ManifestError,
    ModelLoadError,
    NonstopError,
    SampleMismatchError,
    SchemaMismatchError,
    UntrustedArtifactError,
)
from nonstop.formats import InvalidStructure, ModelFormat, UnreadableArtifact, UntrustedContent, format_named
from nonstop.manifest import FeatureSpec, Manifest
from nonstop.registry import Registry
from nonstop.schema import matrix_dtype, matrix_to_frame, rows_to_matrix, to_python

_PROBA_TOLERANCE = 1e-9


class TrustPolicy(BaseModel):
    """Each format's own exact list, plus exact type names the operator adds one by one.

    Serving and training build it from the one setting (`NONSTOP_TRUSTED_TYPES`,
    `Settings.trusted_types`), so `nonstop train` publishes only what serving will load
    and measures production exactly as serving would load it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    extra_types: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> TrustPolicy:
        return cls(extra_types=settings.trusted_types)

    def refuse_untrusted(self, needed: Sequence[str], what: str) -> None:
        """`needed` (a version's record, or what an artifact holds) must all be trusted
        here; else a `ConfigError` naming the types and the setting."""
        missing = sorted(set(needed) - set(self.extra_types))
        if missing:
            raise ConfigError(
                f"{what} needs {', '.join(missing)}, outside the format's trust list and not in {TRUSTED_TYPES_ENV} "
                f"(trusted here: {', '.join(self.extra_types) or 'nothing more'}); serving and training read that one setting"
            )


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

    @property
    def format(self) -> ModelFormat:
        return format_named(self.manifest.format)

    def inputs(self, matrix: np.ndarray) -> Any:
        """What the estimator was fitted on: a named frame if it saw one, else the matrix."""
        return estimator_inputs(self.estimator, matrix, self.manifest.features)

    def predict(self, matrix: np.ndarray) -> list[Any]:
        if self.fast is not None:
            return self.fast(matrix).tolist()
        return to_python(self.format.predict(self.estimator, self.inputs(matrix)))

    @property
    def gives_probabilities(self) -> bool:
        return self.manifest.task == "classification" and hasattr(self.estimator, "predict_proba")

    def require_probabilities(self) -> None:
        """Refuse up front, so a request asking a regressor for probabilities fails alone
        and not inside a batch it shares with others."""
        if not self.gives_probabilities:
            kind = "a regression model" if self.manifest.task == "regression" else "a classifier without predict_proba"
            raise InvalidInput(f"model {self.manifest.model!r} v{self.version} gives no probabilities ({kind})")

    def predict_proba(self, matrix: np.ndarray) -> list[list[float]]:
        """One row of class probabilities per input row, columns in `manifest.classes` order."""
        self.require_probabilities()
        probabilities = self.format.predict_proba(self.estimator, self.inputs(matrix))
        if probabilities is None:
            raise InvalidInput(f"model {self.manifest.model!r} v{self.version} gives no probabilities")
        return probabilities.tolist()


def estimator_inputs(estimator: Any, matrix: np.ndarray, features: Sequence[FeatureSpec]) -> Any:
    """Training (candidate and production alike) and serving both feed estimators here."""
    if getattr(estimator, "feature_names_in_", None) is None:
        return matrix
    return matrix_to_frame(matrix, features)


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
    estimator = _safe_loads(manifest, data, policy)
    verify(manifest, estimator)
    return LoadedModel(
        manifest=manifest,
        estimator=estimator,
        loaded_at=datetime.now(UTC),
        load_seconds=time.perf_counter() - started,
        fast=_checked_fast_path(manifest, estimator),
    )


def _checked_fast_path(manifest: Manifest, estimator: Any) -> FastPredict | None:
    """The numpy path, kept only if it matches scikit-learn, fed as it is when serving, on
    varied rows, gaps included (or, for an estimator that refuses gaps, handing it the rows
    that hold one). An estimator fitted on a frame takes it when the frame's columns were
    the schema's, in its order: the path reads the matrix by position."""
    if matrix_dtype(manifest.features) is not np.float64:
        return None
    named = getattr(estimator, "feature_names_in_", None)
    if named is not None and [str(n) for n in named] != manifest.feature_names:
        return None
    fast = compile_predictor(estimator)
    if fast is None:
        return None
    samples = rows_to_matrix(manifest.samples.inputs, manifest.features)
    rng = np.random.default_rng(0)
    varied = np.repeat(samples, 8, axis=0) * rng.uniform(0.5, 1.5, size=(len(samples) * 8, samples.shape[1]))
    gaps = samples.copy()
    gaps[rng.random(gaps.shape) < 0.2] = np.nan
    rows = np.vstack([samples, varied])
    if not agrees(fast, estimator, rows, estimator_inputs(estimator, rows, manifest.features)):
        return None
    try:
        return fast if agrees(fast, estimator, gaps, estimator_inputs(estimator, gaps, manifest.features)) else None
    except ValueError:  # the estimator refuses missing values: rows holding one go to it, to be refused alike
        return _gaps_to_estimator(fast, estimator, manifest.features)


def _gaps_to_estimator(fast: FastPredict, estimator: Any, features: Sequence[FeatureSpec]) -> FastPredict:
    def predict(matrix: np.ndarray) -> np.ndarray:
        if np.isnan(matrix).any():
            return np.asarray(estimator.predict(estimator_inputs(estimator, matrix, features)))
        return fast(matrix)

    return predict


def _safe_loads(manifest: Manifest, data: bytes, policy: TrustPolicy) -> Any:
    model, version = manifest.model, manifest.version
    try:
        fmt = format_named(manifest.format)
    except NonstopError as exc:
        raise ManifestError(model, version, exc.message) from exc
    if manifest.trusted_types is not None:  # recorded at publishing: refused by name before anything is read
        try:
            policy.refuse_untrusted(manifest.trusted_types, f"v{version} (recorded at publishing)")
        except ConfigError as exc:
            raise UntrustedArtifactError(model, version, exc.message) from exc
    try:
        return fmt.loads(data, policy.extra_types)
    except UntrustedContent as exc:
        raise UntrustedArtifactError(
            model, version, f"{fmt.name} artifact holds types outside the trusted list: {exc}"
        ) from exc
    except InvalidStructure as exc:
        raise InvalidStructureError(model, version, f"{fmt.name} artifact: {exc}") from exc
    except UnreadableArtifact as exc:
        raise ArtifactIntegrityError(model, version, str(exc)) from exc


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
    fmt = format_named(manifest.format)
    inputs = estimator_inputs(estimator, rows_to_matrix(samples.inputs, manifest.features), manifest.features)
    try:
        got = to_python(fmt.predict(estimator, inputs))
        probabilities = fmt.predict_proba(estimator, inputs) if samples.probabilities is not None else None
    except Exception as exc:  # whatever the estimator raises on rows it cannot take
        raise SchemaMismatchError(model, version, f"estimator rejects the manifest's samples: {exc}") from exc
    if len(got) != len(samples.outputs):
        raise ManifestError(model, version, f"{len(samples.inputs)} sample inputs but {len(samples.outputs)} outputs")
    mismatched = [i for i, (a, b) in enumerate(zip(got, samples.outputs, strict=True)) if not _same(a, b)]
    if mismatched:
        raise SampleMismatchError(
            model, version, f"{len(mismatched)} of {len(got)} sample outputs differ (first at sample {mismatched[0]})"
        )
    if samples.probabilities is not None and (
        probabilities is None
        or probabilities.shape != (len(got), len(manifest.classes))
        or not np.allclose(probabilities, samples.probabilities, rtol=_PROBA_TOLERANCE, atol=1e-12)
    ):
        raise SampleMismatchError(model, version, "sample probabilities differ from the manifest's")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float | int):
        return abs(a - b) <= _PROBA_TOLERANCE * max(1.0, abs(b))
    return a == b
