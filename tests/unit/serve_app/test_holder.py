"""The model holder on a real registry: load, verify, swap, refuse, wait, switch models."""

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

from nonstop.errors import LoaderCrashed, LoaderLost, ModelLoadError, ModelNotReady, UnknownModel
from nonstop.loading import LoadedModel, TrustPolicy, load_version
from nonstop.registry import Registry
from nonstop.schema import rows_to_matrix
from serve_app.config import ModelTarget
from serve_app.replica.dataplane import DataPlane
from serve_app.replica.holder import ModelHolder
from serve_app.replica.loader_actor import arrive, ship
from serve_app.wire.limits import Limits
from serve_app.wire.v1_json import body_matrix
from tests.conftest import MODEL, train_into
from tests.unit.nonstop.test_loading import draft_of
from tests.unit.nonstop.test_signing import KEY
from training import demo

FOLLOW = ModelTarget(model=MODEL, alias="production", poll_interval_s=3600)


def _corrupt(registry_root: Path, version: int) -> None:
    artifact = registry_root / MODEL / "versions" / str(version) / "model.skops"
    artifact.write_bytes(artifact.read_bytes()[:-100])


def served_version(holder: ModelHolder) -> int | None:
    primary = holder.state.primary
    return primary.version if primary else None


@pytest.mark.usefixtures("trained")
def test_first_configure_loads_before_returning(registry: Registry) -> None:
    async def scenario() -> int | None:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        await holder.close()
        return served_version(holder)

    assert asyncio.run(scenario()) == 1


@pytest.mark.usefixtures("trained")
def test_a_refused_first_version_starts_not_ready_and_a_good_one_is_served_later(
    registry: Registry, demo_data: Path, tmp_path: Path
) -> None:
    """A replica never fails its start-up for what the registry holds (Serve would
    restart it, then give the deployment up as DEPLOY_FAILED)."""
    _corrupt(tmp_path / "registry", 1)

    async def scenario() -> None:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        assert not holder.ready and holder.polling
        error = holder.state.last_error
        assert error is not None and (error.version, error.reason) == (1, "integrity")
        with pytest.raises(ModelNotReady, match="no version loaded yet: .*version 1 refused"):
            DataPlane(holder).bind(MODEL)
        registry.promote(MODEL, train_into(registry, demo_data, promote=False).manifest.version)
        await holder.sync()
        assert served_version(holder) == 2
        await holder.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("target", [FOLLOW, ModelTarget(model=MODEL, version=1, poll_interval_s=3600)])
def test_an_empty_registry_starts_not_ready_and_serves_once_a_version_appears(
    registry: Registry, demo_data: Path, target: ModelTarget
) -> None:
    """Nothing published yet (no alias, or a pinned version not published yet): not a
    refusal to remember, but a reason to look again at the next poll."""

    async def scenario() -> None:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(target)
        assert not holder.ready
        error = holder.state.last_error
        assert error is not None and error.version is None
        assert error.reason == ("alias_not_found" if target.version is None else "model_not_found")
        metadata = DataPlane(holder).metadata(MODEL)
        assert (metadata.ready, metadata.version, metadata.features) == (False, None, [])
        await holder.sync()  # still nothing: the same failure, reported once
        assert holder.state.last_error is error
        train_into(registry, demo_data)
        await holder.sync()
        assert served_version(holder) == 1 and holder.ready
        await holder.close()

    asyncio.run(scenario())


@pytest.mark.usefixtures("trained")
def test_a_pinned_version_not_published_yet_is_loaded_once_it_is(registry: Registry, demo_data: Path) -> None:

    async def scenario() -> None:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        await holder.configure(ModelTarget(model=MODEL, version=2, poll_interval_s=3600))
        await holder._pending
        error = holder.state.last_error
        assert served_version(holder) == 1 and error is not None and error.reason == "version_not_found"
        train_into(registry, demo_data, promote=False)
        await holder.sync()
        assert served_version(holder) == 2
        await holder.close()

    asyncio.run(scenario())


@pytest.mark.usefixtures("trained")
def test_reconfigure_returns_at_once_and_swaps_in_the_background(registry: Registry, demo_data: Path) -> None:
    train_into(registry, demo_data, promote=False)

    async def scenario() -> tuple[int, int]:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        await holder.configure(ModelTarget(model=MODEL, version=2))
        during = served_version(holder)
        assert holder._pending is not None
        await holder._pending
        return during, served_version(holder)

    assert asyncio.run(scenario()) == (1, 2)


@pytest.mark.usefixtures("trained")
def test_alias_move_is_followed_and_old_model_object_is_untouched(registry: Registry, demo_data: Path) -> None:

    async def scenario() -> None:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        old = holder.state.primary
        train_into(registry, demo_data)
        await holder.sync()
        assert served_version(holder) == 2
        assert old is not None and old.version == 1 and old is not holder.state.primary
        await holder.close()

    asyncio.run(scenario())


@pytest.mark.usefixtures("trained")
def test_a_refused_version_keeps_the_old_one_and_is_not_retried(registry: Registry, demo_data: Path, tmp_path: Path) -> None:
    changes: list[int] = []

    async def scenario() -> None:
        holder = ModelHolder(registry, TrustPolicy(), on_change=lambda: changes.append(1))
        await holder.configure(FOLLOW)
        train_into(registry, demo_data)
        _corrupt(tmp_path / "registry", 2)
        await holder.sync()
        assert served_version(holder) == 1
        first_failure = holder.state.last_error
        assert first_failure is not None and (first_failure.version, first_failure.reason) == (2, "integrity")
        await holder.sync()
        assert holder.state.last_error is first_failure  # not loaded again
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
        error = holder.state.last_error
        return served_version(holder), error.reason if error else None

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
        plane = DataPlane(holder)
        binding = plane.bind(MODEL)
        answered = await plane.infer(binding, body_matrix(body, None, binding.features, Limits()))
        await holder.close()
        return served_version(holder), answered.version, plane.metadata(MODEL)

    serving, answered, metadata = asyncio.run(scenario())
    assert (serving, answered) == (1, 1)
    assert metadata.last_error is not None
    assert (metadata.last_error.version, metadata.last_error.reason) == (2, reason)
    assert KEY.get_secret_value() not in metadata.last_error.message


@pytest.mark.usefixtures("trained")
def test_a_change_of_model_serves_only_the_new_model(registry: Registry, demo_data: Path, tmp_path: Path) -> None:
    """Schema continuity is a rule within one model's versions: another model with other
    features is served at once, the old name is unknown, and no request for the new name
    can reach the old model's estimator, even during the switch."""
    wider = tmp_path / "wider.csv"
    demo.day_frame(1).assign(extra_feature=1.0).to_csv(wider, index=False)
    other = train_into(registry, wider, model="other_model").manifest
    body = json.dumps({"instances": other.samples.inputs}).encode()

    async def scenario() -> None:
        holder = ModelHolder(registry, TrustPolicy())
        plane = DataPlane(holder)
        await holder.configure(FOLLOW)
        with pytest.raises(UnknownModel):
            plane.bind("other_model")
        await holder.configure(ModelTarget(model="other_model", poll_interval_s=3600))
        assert [v.loaded.manifest.model for v in holder.state.versions] == ["other_model"]
        assert holder.state.last_error is None
        with pytest.raises(UnknownModel):
            plane.bind(MODEL)
        binding = plane.bind("other_model")
        result = await plane.infer(binding, body_matrix(body, None, binding.features, Limits()))
        assert (result.model, result.version, result.predictions) == ("other_model", 1, other.samples.outputs)
        metadata = plane.metadata("other_model")
        assert [f.name for f in metadata.features] == other.feature_names and metadata.version == "1"
        await holder.close()

    asyncio.run(scenario())


@pytest.mark.usefixtures("trained")
def test_a_change_to_a_model_not_published_yet_leaves_nothing_of_the_old_one(registry: Registry, demo_data: Path) -> None:

    async def scenario() -> None:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        await holder.configure(ModelTarget(model="later", poll_interval_s=3600))
        assert holder.state.versions == () and not holder.ready
        with pytest.raises(ModelNotReady):
            DataPlane(holder).bind("later")
        train_into(registry, demo_data, model="later")
        await holder.sync()
        assert holder.state.primary is not None and holder.state.primary.manifest.model == "later"
        await holder.close()

    asyncio.run(scenario())


@pytest.mark.usefixtures("trained")
def test_candidates_load_where_the_holder_is_told(registry: Registry, demo_data: Path) -> None:
    """The deployment hands the holder its out-of-process loader; every load goes there,
    told whether a version already answers (then the load is metered background work; the
    first one, which requests wait for, is not)."""
    asked: list[tuple[str, int, bool]] = []

    async def load(model: str, version: int, beside: bool) -> LoadedModel:
        asked.append((model, version, beside))
        return await asyncio.to_thread(load_version, registry, model, version, TrustPolicy())

    async def scenario() -> int | None:
        holder = ModelHolder(registry, TrustPolicy(), load=load)
        await holder.configure(FOLLOW)
        train_into(registry, demo_data)
        await holder.sync()
        await holder.close()
        return served_version(holder)

    assert asyncio.run(scenario()) == 2
    assert asked == [(MODEL, 1, False), (MODEL, 2, True)]


@pytest.mark.usefixtures("trained")
def test_an_unreadable_artifact_is_reported_once_and_served_once_storage_is_back(
    registry: Registry, demo_data: Path, tmp_path: Path
) -> None:
    """Storage can come back (an object store that was unreachable, a file restored): not
    a refusal to remember, unlike a version refused for what it holds."""
    artifact = tmp_path / "registry" / MODEL / "versions" / "2" / "model.skops"

    async def scenario() -> None:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        train_into(registry, demo_data)
        saved = artifact.read_bytes()
        artifact.unlink()
        await holder.sync()
        failure = holder.state.last_error
        assert served_version(holder) == 1 and failure is not None and (failure.version, failure.reason) == (2, "storage")
        await holder.sync()
        assert holder.state.last_error is failure  # reported once
        artifact.write_bytes(saved)
        await holder.sync()
        assert served_version(holder) == 2
        await holder.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(("lost", "retried"), [(LoaderLost, True), (LoaderCrashed, False)])
@pytest.mark.usefixtures("trained")
def test_a_lost_loader_is_retried_at_the_next_poll_and_a_crashed_one_refuses_the_version(
    registry: Registry, demo_data: Path, lost: type[ModelLoadError], retried: bool
) -> None:
    """A loader lost with its node is no verdict on the version: the next poll loads it
    (serve_app/replica/loader_actor.py); a version whose load ended a fresh loader too is."""
    failures = [lost]

    async def load(model: str, version: int, beside: bool) -> LoadedModel:
        if version == 2 and failures:
            raise failures.pop()(model, version, "the loader process ended")
        return await asyncio.to_thread(load_version, registry, model, version, TrustPolicy())

    async def scenario() -> tuple[str | None, int | None]:
        holder = ModelHolder(registry, TrustPolicy(), load=load)
        await holder.configure(FOLLOW)
        train_into(registry, demo_data)
        await holder.sync()
        reason = holder.state.last_error.reason if holder.state.last_error else None
        await holder.sync()
        await holder.close()
        return reason, served_version(holder)

    reason, served = asyncio.run(scenario())
    assert reason == lost.reason
    assert served == (2 if retried else 1)


@pytest.mark.usefixtures("trained")
def test_a_model_with_its_checked_numpy_path_crosses_the_loader_boundary(registry: Registry) -> None:
    """The demo pipeline (scaler + logistic regression) carries a compiled numpy path, a
    closure: the loader's `ship` must carry it, or every replica fails to start."""
    loaded = load_version(registry, MODEL, 1, TrustPolicy())
    assert loaded.fast is not None
    rebuilt = arrive(ship(loaded))
    rows = rows_to_matrix(loaded.manifest.samples.inputs, loaded.manifest.features)
    assert rebuilt.fast is not None and rebuilt.predict(rows) == loaded.predict(rows)
