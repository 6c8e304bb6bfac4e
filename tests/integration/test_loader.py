"""The replica's loader actor: versions load in a process of their own at the lowest CPU
priority and arrive in the replica verified, refusals as the same typed errors."""

from __future__ import annotations

import asyncio
import os

import pytest
import ray

from nonstop.errors import ManifestError
from nonstop.loading import LoadedModel, TrustPolicy, load_version
from nonstop.schema import rows_to_matrix
from serve_app.loader import LOADER_NICENESS, ModelLoader, OutOfProcessLoader
from tests.conftest import MODEL
from tests.harness.rollout import Stack

pytestmark = pytest.mark.integration


def test_a_version_loads_in_a_niced_process_and_arrives_verified(served: Stack) -> None:
    version = served.registry.resolve(MODEL, "production")
    assert version is not None
    loader = ModelLoader.remote(served.registry.uri, None, TrustPolicy())
    loaded = ray.get(loader.load.remote(MODEL, version))
    here = load_version(served.registry, MODEL, version, TrustPolicy())
    assert isinstance(loaded, LoadedModel)
    assert loaded.manifest == here.manifest
    rows = rows_to_matrix(here.manifest.samples.inputs, here.manifest.features)
    assert loaded.predict(rows) == here.predict(rows) == here.manifest.samples.outputs
    pid, niceness = ray.get(loader.__ray_call__.remote(lambda _: (os.getpid(), os.nice(0))))
    assert pid != os.getpid()
    assert niceness == LOADER_NICENESS
    ray.kill(loader)


def test_a_refusal_crosses_back_as_the_same_typed_error(served: Stack) -> None:
    load = OutOfProcessLoader(served.registry.uri, None, TrustPolicy())
    with pytest.raises(ManifestError, match=f"model '{MODEL}' version 999 refused \\(manifest\\)") as refused:
        asyncio.run(load(MODEL, 999))
    assert (refused.value.model, refused.value.version) == (MODEL, 999)
