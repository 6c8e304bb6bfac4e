"""The replica's loader actor: versions load in a process of their own, metered by the
replica, and arrive in the replica verified, refusals as the same typed errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import numpy as np
import psutil
import pytest
import ray

from nonstop.errors import LoaderCrashed, LoaderLost, ManifestError
from nonstop.loading import LoadedModel, TrustPolicy, load_version
from nonstop.schema import rows_to_matrix
from nonstop_ops.cluster import lifecycle as local
from serve_app.replica.load_governor import LoadBudget
from serve_app.replica.loader_actor import ModelLoader, OutOfProcessLoader, arrive
from tests.conftest import MODEL
from harness.rollout import Stack

pytestmark = pytest.mark.integration


def test_a_version_loads_in_a_process_of_its_own_and_arrives_verified(served: Stack) -> None:
    version = served.registry.resolve(MODEL, "production")
    assert version is not None
    loader = ModelLoader.remote(served.registry.uri, None, TrustPolicy())
    loaded = arrive(ray.get(loader.load.remote(MODEL, version)))
    here = load_version(served.registry, MODEL, version, TrustPolicy())
    assert isinstance(loaded, LoadedModel)
    assert loaded.manifest == here.manifest
    rows = rows_to_matrix(here.manifest.samples.inputs, here.manifest.features)
    assert loaded.predict(rows) == here.predict(rows) == here.manifest.samples.outputs
    assert ray.get(loader.pid.remote()) != os.getpid()
    ray.kill(loader)


def _running(pids: list[int]) -> list[tuple[psutil.Process, str, str]]:
    """Each process still running, with its name and command line: a loader replaced
    since (a lost node, a kill) may have ended, or be a zombie its parent has yet to reap."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            process = psutil.Process(pid)
            found.append((process, process.name(), " ".join(process.cmdline())))
    return found


def test_replicas_haproxy_and_loaders_run_at_full_priority_and_no_loader_is_left_stopped(served: Stack) -> None:
    """Ray would start its workers at nice 15, behind its own daemons and any client on the
    machine (nonstop_ops/cluster/local_cluster.py sets RAY_worker_niceness). A loader runs at
    serving's priority too, held to its share by its replica's meter, which never leaves it
    stopped between loads (the suite has swapped versions before this runs)."""
    replicas = [pid for _, pid in served.replicas().values()]
    processes = _running(local.cluster_pids(served.cluster))
    haproxy = [p.pid for p, name, _ in processes if name == "haproxy"]
    loaders = [p for p, name, command in processes if "ModelLoader" in name + command]
    assert len(replicas) >= 2 and haproxy and len(loaders) >= len(replicas), (replicas, haproxy, loaders)
    assert {pid: psutil.Process(pid).nice() for pid in replicas + haproxy} == dict.fromkeys(replicas + haproxy, 0)
    assert {p.pid: (p.nice(), p.status()) for p in loaders if p.status() == psutil.STATUS_STOPPED or p.nice()} == {}


def test_a_refusal_crosses_back_as_the_same_typed_error(served: Stack) -> None:
    load = OutOfProcessLoader(served.registry.uri, None, TrustPolicy(), LoadBudget())
    with pytest.raises(ManifestError, match=f"model '{MODEL}' version 999 refused \\(manifest\\)") as refused:
        asyncio.run(load(MODEL, 999))
    assert (refused.value.model, refused.value.version) == (MODEL, 999)


def _loader_node(load: OutOfProcessLoader) -> str:
    return ray.get(load._actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()))


def _lose_loader(load: OutOfProcessLoader) -> None:
    """Kill the loader and return once it is gone (a call sent just after `ray.kill` may
    still be answered: the kill is asynchronous)."""
    actor = load._actor
    ray.kill(actor)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_call__.remote(lambda _: None), timeout=60)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.1)
    raise TimeoutError("the killed loader still answered after 60 s")


def test_a_lost_loader_is_replaced_on_its_node_and_a_version_that_ends_two_is_refused(served: Stack) -> None:
    """A loader that ends (its node gone, killed) never leaves its replica unable to load:
    the load in flight fails as retried, a fresh loader on the replica's node takes the
    next; a version whose load a fresh loader does not survive either is refused."""
    version = served.registry.resolve(MODEL, "production")
    assert version is not None
    load = OutOfProcessLoader(served.registry.uri, None, TrustPolicy(), LoadBudget())
    here = ray.get_runtime_context().get_node_id()
    assert _loader_node(load) == here
    _lose_loader(load)
    with pytest.raises(LoaderLost, match=f"version {version} refused \\(loader_lost\\)"):
        asyncio.run(load(MODEL, version))
    assert asyncio.run(load(MODEL, version)).version == version  # a fresh loader, and the version is cleared
    assert _loader_node(load) == here
    _lose_loader(load)
    with pytest.raises(LoaderLost):
        asyncio.run(load(MODEL, version))
    _lose_loader(load)
    with pytest.raises(LoaderCrashed, match="\\(loader_crashed\\): its load ended a fresh loader process too"):
        asyncio.run(load(MODEL, version))
    ray.kill(load._actor)


def test_an_svc_loaded_by_the_actor_gives_probabilities_in_the_replica(served: Stack) -> None:
    """Ray hands arrays over read-only; libsvm's predict_proba needs writable ones. The
    loader ships the model in-band so the replica's copy predicts every output."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from training.demo import day_frame
    from training.publish import publish_model

    frame = day_frame(0)
    model = make_pipeline(StandardScaler(), SVC(probability=True, random_state=0))
    manifest = publish_model(model, frame, model="svc", label="target", registry=served.registry).manifest
    load = OutOfProcessLoader(served.registry.uri, None, TrustPolicy(), LoadBudget())
    loaded = asyncio.run(load("svc", manifest.version))
    rows = day_frame(1).drop(columns="target").head(5)
    matrix = rows_to_matrix(rows.to_numpy().tolist(), manifest.features)
    assert loaded.predict(matrix) == model.predict(rows).tolist()
    np.testing.assert_allclose(loaded.predict_proba(matrix), model.predict_proba(rows), rtol=1e-9)


def test_replicas_loading_the_same_version_beside_share_one_load_and_fall_back_to_their_own(served: Stack) -> None:
    """An app's replicas on a node load a new version once between them: here the second
    loader is dead, yet it receives the version, through the first one's load (its own
    next load proves it dead). A shared load that could not start sends the others to
    their own loaders; a replica with nothing served yet never waits on a shared load."""
    version = served.registry.resolve(MODEL, "production")
    assert version is not None
    first, second = (OutOfProcessLoader(served.registry.uri, None, TrustPolicy(), LoadBudget(), share="share-test") for _ in range(2))
    _lose_loader(second)

    async def both() -> tuple[LoadedModel, LoadedModel]:
        loading = asyncio.create_task(first(MODEL, version))
        await asyncio.sleep(0.5)  # the first claims the version before the second asks
        return await loading, await second(MODEL, version)

    by_first, by_second = asyncio.run(both())
    assert by_first.version == by_second.version == version
    assert by_second.estimator is not by_first.estimator  # rebuilt in its own process from the shipped bytes
    with pytest.raises(LoaderLost):
        asyncio.run(second(MODEL, version, beside=False))  # its own loader: dead, so the share answered above

    _lose_loader(first)  # now the first claimer of another version cannot start its load
    from sklearn.linear_model import LogisticRegression

    from training.demo import day_frame
    from training.publish import publish_model

    other = publish_model(LogisticRegression(max_iter=500), day_frame(0), model="shared", label="target", registry=served.registry).manifest.version
    third = OutOfProcessLoader(served.registry.uri, None, TrustPolicy(), LoadBudget(), share="share-test")

    async def fallback() -> LoadedModel:
        failing = asyncio.create_task(first("shared", other))
        await asyncio.sleep(0.5)
        with pytest.raises(LoaderLost):
            await failing
        return await third("shared", other)

    assert asyncio.run(fallback()).version == other
    for loader in (first, second, third):
        loader.close()
