"""A failure of one version or one request never fails another request, in process.

A canary's candidate is a real published Pipeline (log1p in front of the usual steps) that
raises on any row holding -1.0 and answers every other row. Under concurrent load over
V1 JSON, V1 Arrow, V2 REST and gRPC, through the batched path (jobs of both versions and
of many requests in one batch, comparisons included) and the inline path: every request
is answered, a request the candidate cannot answer is answered by the primary, and the
failures are tallied against the candidate alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from nonstop.errors import NonstopError
from nonstop.loading import LoadedModel, TrustPolicy
from nonstop.registry import Registry
from serve_app.config import ModelTarget
from serve_app.edge import KEY_HEADER
from serve_app.grpc_v2 import oip_v2_pb2 as pb
from serve_app.grpc_v2.servicer import GrpcV2
from serve_app.replica.batching import Job, Output, run_batch
from serve_app.replica.dataplane import DataPlane
from serve_app.replica.holder import ModelHolder
from serve_app.rest.api import create_api
from serve_app.rollout.canary import Canary, share_of
from serve_app.rollout.moves import Rollouts
from serve_app.rollout.policy import Policy
from serve_app.wire.limits import Limits
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_stream
from tests.conftest import MODEL
from harness.canary import POISON, publish_fragile
from tests.inprocess.serve_app.inprocess import Batcher

FOLLOW = ModelTarget(model=MODEL, alias="production", poll_interval_s=3600)
REQUESTS = 160
PROTOCOLS = ("v1_json", "v1_arrow", "v2_json", "grpc")


def publish_fragile_candidate(registry: Registry) -> int:
    return publish_fragile(registry, MODEL)


def request_rows(registry: Registry, index: int, poisoned: bool) -> list[list[Any]]:
    samples = registry.manifest(MODEL, 1).samples.inputs
    rows = [list(samples[index % len(samples)]), list(samples[(index + 1) % len(samples)])]
    if poisoned:
        rows[1][0] = POISON
    return rows


async def send(protocol: str, client: httpx.AsyncClient, grpc_v2: GrpcV2, names: list[str], rows: list[list[Any]], key: str) -> str:
    """The answering version, or what the client saw instead."""
    headers = {KEY_HEADER: key}
    if protocol == "grpc":
        request = pb.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="x", datatype="FP64", shape=[len(rows), len(rows[0])]).contents.fp64_contents.extend(
            v for row in rows for v in row
        )
        try:
            return (await grpc_v2.model_infer(request, key=key)).model_version
        except Exception as exc:  # a refusal or a fault: either is a failed request here
            return f"grpc failed: {exc!r}"
    if protocol == "v1_json":
        response = await client.post(f"/v1/models/{MODEL}:predict", json={"instances": rows}, headers=headers)
    elif protocol == "v1_arrow":
        table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})
        response = await client.post(
            f"/v1/models/{MODEL}:predict", content=arrow_stream(table), headers={**headers, "content-type": ARROW_STREAM}
        )
    else:
        tensor = {"name": "x", "shape": [len(rows), len(rows[0])], "datatype": "FP64", "data": rows}
        response = await client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [tensor]}, headers=headers)
    return str(response.json()["model_version"]) if response.status_code == 200 else f"{response.status_code}: {response.text}"


@pytest.mark.usefixtures("trained")
@pytest.mark.parametrize("path", ["batched", "inline"])
@pytest.mark.parametrize("fails_on", ["some", "every"])
def test_a_candidate_that_raises_fails_no_request_and_is_counted_alone(registry: Registry, path: str, fails_on: str) -> None:
    primary = registry.resolve(MODEL, "production")
    candidate = publish_fragile_candidate(registry)
    names = registry.manifest(MODEL, primary).feature_names
    poisoned = [fails_on == "every" or (i // len(PROTOCOLS)) % 2 == 0 for i in range(REQUESTS)]
    reports: list[dict[int, dict[str, Any]]] = []
    batcher = Batcher()

    async def through_batches(loaded: LoadedModel, matrix: np.ndarray) -> list[Any]:
        return (await batcher(Job(loaded, matrix)))[Output.PREDICTIONS]  # comparisons join the batches, as in the deployment

    async def scenario() -> list[str]:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(FOLLOW)
        batched = path == "batched"
        canary = Canary(registry, holder.hold_candidate, lambda m, a, t: reports.append(t), **({"score": through_batches} if batched else {}))
        plane = DataPlane(holder, batcher if batched else None, canary=canary)
        Rollouts(registry, MODEL, "production").start(candidate, Policy(steps=(0.5, 1.0)), actor="test")
        await canary.sync(holder.state)
        grpc_v2 = GrpcV2(plane, Limits())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(plane, Limits())), base_url="http://t") as client:
            answers = await asyncio.gather(*(
                send(PROTOCOLS[i % len(PROTOCOLS)], client, grpc_v2, names, request_rows(registry, i, poisoned[i]), f"k{i}")
                for i in range(REQUESTS)
            ))  # fmt: skip
            while canary._off_path:  # the comparisons still running off the path
                await asyncio.sleep(0.01)
        canary._last_report = 0.0
        await canary.sync(holder.state)  # reports the tallies
        await holder.close()
        return answers

    answers = asyncio.run(scenario())
    routed = [share_of(f"k{i}", candidate) < 0.5 for i in range(REQUESTS)]
    expected = [str(primary if poisoned[i] or not routed[i] else candidate) for i in range(REQUESTS)]
    assert answers == expected  # every request answered: a candidate's failure by the primary
    failures = sum(r and p for r, p in zip(routed, poisoned, strict=True))
    assert failures > 0 and (fails_on == "every" or failures < sum(routed))
    tallies = reports[-1]
    assert tallies[candidate]["errors"] == failures
    assert tallies[primary]["errors"] == 0 and tallies[primary]["requests"] == routed.count(False)
    if path == "batched":  # versions and requests did share batches, failing ones included
        assert any(len({job.loaded.version for job in batch}) == 2 for batch in batcher.batches)


@pytest.mark.usefixtures("trained")
def test_a_failing_job_fails_alone_in_a_batch_of_two_versions(registry: Registry) -> None:
    """`run_batch` itself: one call per version while all goes well, and a failing
    request's exception handed to it alone, its version's other requests answered."""
    from nonstop.loading import load_version

    candidate = publish_fragile_candidate(registry)
    primary, fragile = (load_version(registry, MODEL, v, TrustPolicy()) for v in (1, candidate))
    rows = np.asarray(request_rows(registry, 0, False), dtype=np.float64)
    bad = rows.copy()
    bad[0, 0] = POISON
    jobs = [Job(primary, bad), Job(fragile, rows), Job(fragile, bad), Job(primary, rows), Job(fragile, rows)]
    outcomes = run_batch(jobs)
    assert isinstance(outcomes[2], ValueError) and "infinity" in str(outcomes[2])
    for job, outcome in zip(jobs, outcomes, strict=True):
        if outcome is not outcomes[2]:
            assert outcome == {Output.PREDICTIONS: job.loaded.predict(job.matrix)}
    assert not isinstance(outcomes[2], NonstopError)
