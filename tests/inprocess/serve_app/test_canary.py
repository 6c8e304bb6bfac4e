"""Canary by weight inside one replica, in process: a real holder, registry, ledger and models."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from nonstop.loading import TrustPolicy
from nonstop.registry import Registry
from nonstop.schema import frame_to_matrix
from serve_app.config import ModelTarget
from serve_app.edge import KEY_HEADER
from serve_app.grpc_v2 import oip_v2_pb2 as pb
from serve_app.grpc_v2.servicer import GrpcV2
from serve_app.replica.dataplane import DataPlane
from serve_app.replica.holder import ModelHolder
from serve_app.replica.state import Role
from serve_app.rest.api import create_api
from serve_app.rollout.canary import Canary, share_of
from serve_app.rollout.moves import Rollouts
from serve_app.rollout.policy import Policy
from serve_app.wire.limits import Limits
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
        canary = Canary(registry, TrustPolicy(), holder.hold, lambda m, a, t: reports.append((m, a, t)))
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
    assert tallies[primary]["requests"] == answered[primary] and tallies[primary]["input_rows"] == answered[primary]


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
        canary = Canary(registry, TrustPolicy(), holder.hold, lambda *_: None)
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
