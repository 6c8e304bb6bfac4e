"""The model holder on a real registry: load, verify, swap, refuse."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import skops.io as sio
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from nonstop.errors import ArtifactIntegrityError
from nonstop.loading import TrustPolicy
from nonstop.registry import Registry
from serve_app.config import Limits, ModelTarget
from serve_app.dataplane import DataPlane
from serve_app.holder import ModelHolder
from tests.conftest import MODEL, train_into
from tests.nonstop.test_loading import draft_of
from tests.nonstop.test_signing import KEY
from training import demo

FOLLOW = ModelTarget(model=MODEL, alias="production", poll_interval_s=3600)


def _corrupt(registry_root: Path, version: int) -> None:
    artifact = registry_root / MODEL / "versions" / str(version) / "model.skops"
    artifact.write_bytes(artifact.read_bytes()[:-100])


def test_first_configure_loads_before_returning(registry: Registry, demo_data: Path) -> None:
    train_into(registry, demo_data)

    async def scenario() -> int | None:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        await holder.close()
        return holder.current.version if holder.current else None

    assert asyncio.run(scenario()) == 1


def test_first_configure_fails_loudly_without_a_usable_model(registry: Registry, demo_data: Path, tmp_path: Path) -> None:
    train_into(registry, demo_data)
    _corrupt(tmp_path / "registry", 1)

    async def scenario() -> None:
        await ModelHolder(registry, TrustPolicy()).configure(FOLLOW)

    with pytest.raises(ArtifactIntegrityError):
        asyncio.run(scenario())


def test_reconfigure_returns_at_once_and_swaps_in_the_background(registry: Registry, demo_data: Path) -> None:
    train_into(registry, demo_data)
    train_into(registry, demo_data, promote=False)

    async def scenario() -> tuple[int, int]:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        await holder.configure(ModelTarget(model=MODEL, version=2))
        during = holder.current.version
        assert holder._pending is not None
        await holder._pending
        return during, holder.current.version

    assert asyncio.run(scenario()) == (1, 2)


def test_alias_move_is_followed_and_old_model_object_is_untouched(registry: Registry, demo_data: Path) -> None:
    train_into(registry, demo_data)

    async def scenario() -> None:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        old = holder.current
        train_into(registry, demo_data)
        await holder.sync()
        assert holder.current.version == 2
        assert old.version == 1 and old is not holder.current
        await holder.close()

    asyncio.run(scenario())


def test_a_refused_version_keeps_the_old_one_and_is_not_retried(registry: Registry, demo_data: Path, tmp_path: Path) -> None:
    train_into(registry, demo_data)
    changes: list[int] = []

    async def scenario() -> None:
        holder = ModelHolder(registry, TrustPolicy(), on_change=lambda: changes.append(1))
        await holder.configure(FOLLOW)
        train_into(registry, demo_data)
        _corrupt(tmp_path / "registry", 2)
        await holder.sync()
        assert holder.current.version == 1
        assert holder.last_error is not None and holder.last_error.version == 2
        assert holder.last_error.reason == "integrity"
        first_failure = holder.last_error
        await holder.sync()
        assert holder.last_error is first_failure  # not loaded again
        await holder.close()

    asyncio.run(scenario())
    assert len(changes) == 2  # the first load, then the refusal


def test_a_version_with_other_features_is_refused_unless_allowed(registry: Registry, tmp_path: Path) -> None:
    base = tmp_path / "base.csv"
    demo.day_frame(0).to_csv(base, index=False)
    wider = tmp_path / "wider.csv"
    demo.day_frame(1).assign(extra_feature=1.0).to_csv(wider, index=False)
    train_into(registry, base)
    train_into(registry, wider)

    async def scenario(target: ModelTarget) -> tuple[int, str | None]:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(ModelTarget(model=MODEL, version=1))
        await holder.configure(target)
        await holder._pending
        await holder.close()
        return holder.current.version, holder.last_error.reason if holder.last_error else None

    assert asyncio.run(scenario(ModelTarget(model=MODEL, version=2))) == (1, "schema_mismatch")
    assert asyncio.run(scenario(ModelTarget(model=MODEL, version=2, allow_schema_change=True))) == (2, None)


def _publish_code_runner(registry: Registry, root: Path, data: Path) -> None:
    """Properly published and signed, but unpickling it would call os.system."""
    hostile = make_pipeline(FunctionTransformer(os.system))
    registry.promote(MODEL, registry.publish(MODEL, sio.dumps(hostile), draft_of(registry, 1)).version)


def _edit_a_published_manifest(registry: Registry, root: Path, data: Path) -> None:
    train_into(registry, data)
    path = root / MODEL / "versions" / "2" / "manifest.json"
    path.write_text(path.read_text().replace('"parent_version": 1', '"parent_version": null'))


@pytest.mark.parametrize(
    ("attack", "reason"),
    [(_publish_code_runner, "untrusted_types"), (_edit_a_published_manifest, "tampered_manifest")],
)
def test_an_unsafe_version_is_refused_and_the_old_one_keeps_answering(
    tmp_path: Path, demo_data: Path, attack: Callable[[Registry, Path, Path], None], reason: str
) -> None:
    registry = Registry(str(tmp_path / "registry"), signing_key=KEY)
    train_into(registry, demo_data)
    body = json.dumps({"instances": registry.manifest(MODEL, 1).samples.inputs}).encode()

    async def scenario() -> tuple[int, int, dict]:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        attack(registry, tmp_path / "registry", demo_data)
        await holder.sync()
        plane = DataPlane(holder, Limits())
        answered = await plane.infer(MODEL, body)
        await holder.close()
        return holder.current.version, answered.version, plane.metadata(MODEL)

    serving, answered, metadata = asyncio.run(scenario())
    assert (serving, answered) == (1, 1)
    assert metadata["last_error"]["version"] == 2
    assert metadata["last_error"]["reason"] == reason
    assert KEY.get_secret_value() not in metadata["last_error"]["message"]
