from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from nonstop.errors import ArtifactIntegrityError, SampleMismatchError, SchemaMismatchError, UntrustedArtifactError
from nonstop.loading import TrustPolicy, load_version
from nonstop.manifest import ManifestDraft
from nonstop.registry import Registry
from nonstop.schema import rows_to_matrix
from harness.small_models import publish_small
from tests.conftest import MODEL


def draft_of(registry: Registry, version: int, **changes: object) -> ManifestDraft:
    manifest = registry.manifest(MODEL, version)
    fields = manifest.model_dump(include=set(ManifestDraft.model_fields))
    fields.update(changes)
    return ManifestDraft(**fields)


@pytest.mark.usefixtures("trained")
def test_a_published_version_loads_and_predicts_its_samples(registry: Registry) -> None:
    manifest = registry.manifest(MODEL, 1)
    loaded = load_version(registry, MODEL, manifest.version, TrustPolicy())
    assert loaded.version == manifest.version
    assert loaded.manifest.sha256 == manifest.sha256


@pytest.mark.usefixtures("trained")
def test_a_corrupted_artifact_is_refused(registry: Registry, tmp_path: Path) -> None:
    version = registry.manifest(MODEL, 1).version
    artifact = tmp_path / "registry" / MODEL / "versions" / str(version) / "model.skops"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match=f"version {version} refused.*sha256"):
        load_version(registry, MODEL, version, TrustPolicy())


@pytest.mark.usefixtures("trained")
def test_an_artifact_that_would_run_code_is_refused(registry: Registry) -> None:
    good = registry.manifest(MODEL, 1).version
    hostile = make_pipeline(FunctionTransformer(os.system))
    published = registry.publish(MODEL, sio.dumps(hostile), draft_of(registry, good))
    with pytest.raises(UntrustedArtifactError, match="system"):
        load_version(registry, MODEL, published.version, TrustPolicy())


@pytest.mark.usefixtures("trained")
def test_wrong_sample_outputs_are_refused(registry: Registry) -> None:
    good = registry.manifest(MODEL, 1)
    flipped = good.samples.model_copy(update={"outputs": [1 - o for o in good.samples.outputs]})
    published = registry.publish(MODEL, registry.read_artifact(MODEL, good.version), draft_of(registry, good.version, samples=flipped))
    with pytest.raises(SampleMismatchError, match="sample outputs differ"):
        load_version(registry, MODEL, published.version, TrustPolicy())


@pytest.mark.usefixtures("trained")
def test_a_manifest_schema_that_disagrees_with_the_estimator_is_refused(registry: Registry) -> None:
    good = registry.manifest(MODEL, 1)
    fewer = good.features[:-1]
    samples = good.samples.model_copy(update={"inputs": [row[:-1] for row in good.samples.inputs]})
    published = registry.publish(
        MODEL, registry.read_artifact(MODEL, good.version), draft_of(registry, good.version, features=fewer, samples=samples)
    )
    with pytest.raises(SchemaMismatchError, match="expects 30 features, manifest declares 29"):
        load_version(registry, MODEL, published.version, TrustPolicy())


@pytest.mark.usefixtures("trained")
def test_the_demo_pipeline_gets_the_checked_numpy_path(registry: Registry) -> None:
    manifest = registry.manifest(MODEL, 1)
    loaded = load_version(registry, MODEL, manifest.version, TrustPolicy())
    assert loaded.fast is not None
    rows = rows_to_matrix(manifest.samples.inputs, manifest.features)
    assert loaded.predict(rows) == manifest.samples.outputs


def test_an_estimator_fitted_on_a_frame_gets_the_checked_numpy_path_and_answers_as_sklearn_does(tmp_path: Path) -> None:
    """What a data scientist publishes from a DataFrame: its columns are the schema, so the
    matrix read by position is the frame it was fitted on (and the path is checked so). A
    model that refuses missing values refuses them on the path too, in its own words."""
    registry = Registry(str(tmp_path / "registry"))
    version = publish_small(registry, "framed", seed=1)
    loaded = load_version(registry, "framed", version, TrustPolicy())
    assert list(loaded.estimator.feature_names_in_) == loaded.manifest.feature_names
    assert loaded.fast is not None
    rows = np.random.default_rng(3).normal(size=(200, 3))
    frame = pd.DataFrame(rows, columns=loaded.manifest.feature_names)
    assert loaded.predict(rows) == loaded.estimator.predict(frame).tolist()
    rows[5, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        loaded.estimator.predict(pd.DataFrame(rows, columns=loaded.manifest.feature_names))
    with pytest.raises(ValueError, match="Input X contains NaN"):
        loaded.predict(rows)
