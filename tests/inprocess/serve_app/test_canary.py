"""Canary by weight inside one replica, in process: a real holder, registry, ledger and models."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from nonstop.loading import LoadedModel, TrustPolicy, load_version
from nonstop.registry import Registry
from nonstop.schema import frame_to_matrix
from serve_app.config import ModelTarget
from serve_app.edge import KEY_HEADER
from serve_app.grpc_v2 import oip_v2_pb2 as pb
from serve_app.grpc_v2.servicer import GrpcV2
from serve_app.replica.dataplane import DataPlane
from serve_app.replica.holder import ModelHolder
from serve_app.replica.state import ReplicaStatus, Role, ServingState
from serve_app.rest.api import create_api
from serve_app.rollout.canary import Canary, share_of
from serve_app.rollout.moves import Rollouts
from serve_app.rollout.policy import Policy
from serve_app.wire.limits import Limits
from nonstop_ops.commands.stack import _describe
from tests.conftest import MODEL, train_into
from training import demo

FOLLOW = ModelTarget(model=MODEL, alias="production", poll_interval_s=3600)


def test_a_key_keeps_its_version_and_stays_on_the_candidate_as_the_share_grows() -> None:
    keys = [f"user-{i}" for i in range(4000)]
    at_5 = {k for k in keys if share_of(k, 7) < 0.05}
    at_25 = {k for k in keys if share_of(k, 7) < 0.25}
    assert at_5 < at_25
    assert 0.03 < len(at_5) / len(keys) < 0.07 and 0.22 < len(at_25) / len(keys) < 0.28
    assert share_of("user-1", 7) == share_of("user-1", 7) != share_of("user-1", 8)


@pytest.mark.usefixtures("trained")
def test_a_replica_follows_the_rollout_answers_by_weight_and_tallies(registry: Registry, demo_data: Path) -> None:
    primary = registry.manifest(MODEL, 1).version
    candidate = train_into(registry, demo_data, promote=False).manifest.version
    reports: list[tuple[str, str, dict[int, dict[str, Any]]]] = []
    frame = demo.day_frame(5)

    skipped: list[int] = []

    async def scenario() -> tuple[dict[int, int], Role | None, Role | None]:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        canary = Canary(registry, holder.hold_candidate, lambda m, a, t: reports.append((m, a, t)))
        plane = DataPlane(holder, canary=canary)
        await canary.sync(holder.state)
        assert holder.state.held(Role.CANDIDATE) is None and plane.bind(MODEL).assignment is None  # no rollout: no routing
        Rollouts(registry, MODEL, "production").start(candidate, Policy(steps=(0.25, 1.0)), actor="test")
        await canary.sync(holder.state)
        during = holder.state.held(Role.CANDIDATE)
        answered: dict[int, int] = {}
        for index in range(400):
            binding = plane.bind(MODEL, key=f"k{index}")
            rows = frame.iloc[[index % len(frame)]]
            result = await plane.infer(binding, frame_to_matrix(rows, binding.features))
            answered[result.version] = answered.get(result.version, 0) + 1
            # as between requests of a server: off-path work gets its turn, and the in-process
            # scorer never suspends, so this request's comparison is done when this returns
            await asyncio.sleep(0)
        skipped.append(canary.skipped)
        canary._last_report = 0.0
        await canary.sync(holder.state)  # reports the tallies
        Rollouts(registry, MODEL, "production").rollback("test", "enough", kind="override")
        await canary.sync(holder.state)
        after = holder.state.held(Role.CANDIDATE)
        await holder.close()
        return answered, during and Role.CANDIDATE, after and Role.CANDIDATE

    answered, during, after = asyncio.run(scenario())
    assert during is Role.CANDIDATE and after is None
    assert 60 < answered[candidate] < 140 and answered[primary] + answered[candidate] == 400
    model, alias, tallies = reports[-1]
    assert (model, alias) == (MODEL, "production")
    assert tallies[candidate]["requests"] == answered[candidate]
    # the primary scored the candidate's answers off the path, but for those skipped as over the bound
    assert tallies[candidate]["compared"] + skipped[0] == answered[candidate]
    assert tallies[candidate]["compared"] >= 0.8 * answered[candidate]
    assert tallies[candidate]["agreed"] >= 0.9 * tallies[candidate]["compared"]
    assert tallies[primary]["requests"] == answered[primary]
    # inputs are the traffic's: every request's row is tallied on both versions' profiles
    assert tallies[primary]["input_rows"] == tallies[candidate]["input_rows"] == 400


@pytest.mark.usefixtures("trained")
def test_a_key_gets_the_same_version_through_v1_v2_and_grpc(registry: Registry, demo_data: Path) -> None:
    """`x-request-key` (a header over HTTP, metadata over gRPC) picks the same side of the
    split whatever protocol the client speaks."""
    candidate = train_into(registry, demo_data, promote=False).manifest.version
    rows = registry.manifest(MODEL, candidate).samples.inputs[:1]
    keys = [f"user-{i}" for i in range(40)]

    async def scenario() -> dict[str, list[str]]:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        canary = Canary(registry, holder.hold_candidate, lambda *_: None)
        plane = DataPlane(holder, canary=canary)
        Rollouts(registry, MODEL, "production").start(candidate, Policy(steps=(0.5, 1.0)), actor="test")
        await canary.sync(holder.state)
        grpc_v2 = GrpcV2(plane, Limits())
        answers: dict[str, list[str]] = {"v1": [], "v2": [], "grpc": []}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(plane, Limits())), base_url="http://t") as client:
            for key in keys:
                headers = {KEY_HEADER: key}
                v1 = await client.post(f"/v1/models/{MODEL}:predict", json={"instances": rows}, headers=headers)
                answers["v1"].append(v1.json()["model_version"])
                tensor = {"name": "x", "shape": [1, len(rows[0])], "datatype": "FP64", "data": rows}
                v2 = await client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [tensor]}, headers=headers)
                answers["v2"].append(v2.json()["model_version"])
                request = pb.ModelInferRequest(model_name=MODEL)
                request.inputs.add(name="x", datatype="FP64", shape=[1, len(rows[0])]).contents.fp64_contents.extend(rows[0])
                answers["grpc"].append((await grpc_v2.model_infer(request, key=key)).model_version)
        await holder.close()
        return answers

    answers = asyncio.run(scenario())
    expected = [str(candidate) if share_of(k, candidate) < 0.5 else str(candidate - 1) for k in keys]
    assert answers == {"v1": expected, "v2": expected, "grpc": expected}
    assert len(set(expected)) == 2


@pytest.mark.usefixtures("trained")
def test_a_replica_never_acts_on_a_copied_entry_and_drops_the_candidate(registry: Registry, demo_data: Path) -> None:
    """Reported: a signed `start` entry copied to a new number after an abort gave the
    aborted candidate its share back on the replicas. Now the replica finds the ledger
    does not verify, drops the candidate (the primary answers everything) and says why."""
    candidate = train_into(registry, demo_data, promote=False).manifest.version
    rollouts = Rollouts(registry, MODEL, "production")
    folder = Path(registry.uri) / MODEL / "ledger"

    async def scenario() -> tuple[Role | None, Role | None, str | None]:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        canary = Canary(registry, holder.hold_candidate, lambda m, a, t: None)
        start = rollouts.start(candidate, Policy(steps=(0.5, 1.0)), actor="test")
        await canary.sync(holder.state)
        during = holder.state.held(Role.CANDIDATE)
        copied = folder / f"{start.seq + 1:012d}.json"
        copied.write_bytes((folder / f"{start.seq:012d}.json").read_bytes())  # copied before the abort can take the number
        await canary.sync(holder.state)
        after = holder.state.held(Role.CANDIDATE)
        blocked = canary.blocked
        await holder.close()
        return during and Role.CANDIDATE, after and Role.CANDIDATE, blocked

    during, after, blocked = asyncio.run(scenario())
    assert during is Role.CANDIDATE and after is None
    assert blocked is not None and "claims to be entry" in blocked
    assert registry.resolve(MODEL, "production") == 1


@pytest.mark.usefixtures("trained")
def test_a_snapshot_holds_primary_candidate_and_share_together(registry: Registry, demo_data: Path) -> None:
    """Every state the holder assigns through a rollout pairs the candidate with its own
    step's share, and a request's snapshot keeps its answer whatever changes after it."""
    candidate = train_into(registry, demo_data, promote=False).manifest.version
    moves = Rollouts(registry, MODEL, "production")
    key = next(f"user-{i}" for i in range(1000) if 0.25 <= share_of(f"user-{i}", candidate) < 0.5)
    seen: list[ServingState] = []

    async def scenario() -> None:
        holder = ModelHolder(registry, TrustPolicy(), on_change=lambda: seen.append(holder.state))
        await holder.configure(FOLLOW)
        canary = Canary(registry, holder.hold_candidate, lambda *_: None)
        moves.start(candidate, Policy(steps=(0.25, 0.5, 1.0)), actor="test")
        await canary.sync(holder.state)
        at_25 = holder.state
        moves.advance("test", "next step")
        await canary.sync(holder.state)
        # the snapshot a request read before the step still sends this key to the primary
        before, after = canary.assign(at_25, key), canary.assign(holder.state, key)
        assert before is not None and not before.by_candidate and after is not None and after.by_candidate
        moves.advance("test", "promote")
        await canary.sync(holder.state)  # promoted: the candidate answers everything
        await holder.sync()  # the alias moved: the candidate becomes the primary
        await canary.sync(holder.state)  # and is no longer held as a candidate
        await holder.close()

    asyncio.run(scenario())

    def version(loaded: LoadedModel | None) -> int | None:
        return loaded.version if loaded else None

    held = [(version(s.primary), version(s.held(Role.CANDIDATE)), s.weight) for s in seen]
    old = candidate - 1
    assert held == [
        (old, None, 0.0),
        (old, candidate, 0.25),
        (old, candidate, 0.5),
        (old, candidate, 1.0),
        (candidate, candidate, 1.0),
        (candidate, None, 0.0),
    ]


@pytest.mark.usefixtures("trained")
def test_a_new_candidate_replaces_the_old_one_which_stops_answering_before_the_load(registry: Registry, demo_data: Path) -> None:
    """A rollback and the next rollout's start read in one poll: the old candidate must not
    answer its share while the new one loads (it was rolled back; the ledger says so)."""
    first, second = (train_into(registry, demo_data, promote=False).manifest.version for _ in range(2))
    during: list[tuple[int | None, float]] = []

    async def scenario() -> tuple[int | None, float]:
        gate, entered = asyncio.Event(), asyncio.Event()
        gate.set()

        async def gated(model: str, version: int, beside: bool) -> LoadedModel:
            entered.set()
            await gate.wait()
            return await asyncio.to_thread(load_version, registry, model, version, TrustPolicy())

        holder = ModelHolder(registry, TrustPolicy(), load=gated)
        await holder.configure(FOLLOW)
        held = await holder.hold_candidate(first, 0.5)
        assert held is not None and holder.state.weight == 0.5
        gate.clear()
        entered.clear()
        loading = asyncio.create_task(holder.hold_candidate(second, 0.1))
        await entered.wait()
        candidate = holder.state.held(Role.CANDIDATE)
        during.append((candidate.version if candidate else None, holder.state.weight))
        gate.set()
        await loading
        candidate = holder.state.held(Role.CANDIDATE)
        await holder.close()
        return (candidate.version if candidate else None), holder.state.weight

    assert asyncio.run(scenario()) == (second, 0.1)
    assert during == [(None, 0.0)]


@pytest.mark.usefixtures("trained")
def test_a_replica_started_mid_rollout_holds_the_candidate_before_its_first_request(registry: Registry, demo_data: Path) -> None:
    """A replacement replica (a crash, a scale-up) answers a key as the others do from its
    first request: the step's candidate is loaded before `configure` returns, not at the
    first poll (an hour away here)."""
    candidate = train_into(registry, demo_data, promote=False).manifest.version
    Rollouts(registry, MODEL, "production").start(candidate, Policy(steps=(0.25, 1.0)), actor="test")

    async def scenario() -> tuple[int | None, float]:
        holder = ModelHolder(registry, TrustPolicy())
        holder.follow(Canary(registry, holder.hold_candidate, lambda *_: None).sync)
        await holder.configure(FOLLOW)
        held = holder.state.held(Role.CANDIDATE)
        await holder.close()
        return (held.version if held else None), holder.state.weight

    assert asyncio.run(scenario()) == (candidate, 0.25)


def _wider(registry: Registry, tmp_path: Path) -> int:
    """A candidate taking one feature more than the primary."""
    wider = tmp_path / "wider.csv"
    demo.day_frame(1).assign(extra_feature=1.0).to_csv(wider, index=False)
    return train_into(registry, wider, promote=False).manifest.version


def _corrupt(registry: Registry, tmp_path: Path, demo_data: Path) -> int:
    """A candidate whose artifact fails its integrity check."""
    version = train_into(registry, demo_data, promote=False).manifest.version
    artifact = tmp_path / "registry" / MODEL / "versions" / str(version) / "model.skops"
    artifact.write_bytes(artifact.read_bytes()[:-100])
    return version


@pytest.mark.usefixtures("trained")
@pytest.mark.parametrize(("make", "reason"), [("corrupt", "integrity"), ("wider", "schema_mismatch")])
def test_a_refused_candidate_shows_in_the_replica_status(
    registry: Registry, demo_data: Path, tmp_path: Path, make: str, reason: str
) -> None:
    """The holder refuses a candidate as it refuses a primary, and says so in the state
    every answer and `nonstop status` show; the primary serves on. A candidate must take
    the primary's features even where the target allows a schema change."""
    bad = _corrupt(registry, tmp_path, demo_data) if make == "corrupt" else _wider(registry, tmp_path)
    target = ModelTarget(model=MODEL, alias="production", poll_interval_s=0.1, allow_schema_change=True)
    ticks: list[ServingState] = []
    loads: list[int] = []

    async def load(model: str, version: int, beside: bool) -> LoadedModel:
        loads.append(version)
        return await asyncio.to_thread(load_version, registry, model, version, TrustPolicy())

    async def scenario() -> tuple[ReplicaStatus, bool]:
        holder = ModelHolder(registry, TrustPolicy(), load=load)
        await holder.configure(target)
        canary = Canary(registry, holder.hold_candidate, lambda *_: None)

        async def follow(state: ServingState) -> None:
            ticks.append(state)
            await canary.sync(state)

        holder.follow(follow)  # the replica's one poller follows the rollout too
        Rollouts(registry, MODEL, "production").start(bad, Policy(steps=(0.5, 1.0)), actor="test")
        for _ in range(3000):  # an eventually-style wait for the poller's ticks
            if holder.state.last_error is not None:
                break
            await asyncio.sleep(0.05)
        refusal, seen = holder.state.last_error, len(ticks)
        while len(ticks) < seen + 3:  # three ticks more: refused once, not loaded again
            await asyncio.sleep(0.05)
        routed = DataPlane(holder, canary=canary).bind(MODEL, key="k").assignment is not None
        status = holder.state.status("replica-1", 1, datetime.now(UTC))
        assert holder.state.last_error is refusal and holder.polling and loads.count(bad) == 1
        await holder.close()
        return status, routed

    status, routed = asyncio.run(scenario())
    assert status.last_error is not None and (status.last_error.version, status.last_error.reason) == (bad, reason)
    assert status.held(Role.CANDIDATE) is None and status.serves(MODEL, bad - 1) and not routed
    assert f"last error: {status.last_error.message}" in _describe(status)  # the line `nonstop status` prints
