"""The routes in-process: httpx over ASGI to the real app, data plane, holder and registry."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from nonstop.loading import TrustPolicy
from nonstop.manifest import Manifest
from nonstop.registry import Registry
from serve_app.config import ModelTarget
from serve_app.replica.batching import Job, Outcome, Outputs, run_batch, settled
from serve_app.replica.dataplane import DataPlane
from serve_app.replica.holder import ModelHolder
from serve_app.rest.api import create_api
from serve_app.wire.limits import Limits
from tests.conftest import MODEL, train_into
from training import demo

PREDICT = f"/v1/models/{MODEL}:predict"


def call(registry: Registry, method: str, path: str, limits: Limits = Limits(), **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(ModelTarget(model=MODEL, poll_interval_s=3600))
        api = create_api(DataPlane(holder), limits)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://test") as client:
            response = await client.request(method, path, **kwargs)
        await holder.close()
        return response

    return asyncio.run(go())


def train_mixed(registry: Registry, tmp_path: Path) -> Manifest:
    """The demo data plus a text column and a nullable integer column, NA in both."""
    frame = demo.day_frame(0)
    rng = np.random.default_rng(0)
    frame["colour"] = pd.array(rng.choice(["red", "green", "blue"], len(frame)), dtype="string")
    frame["visits"] = pd.array(rng.integers(0, 9, len(frame)), dtype="Int64")
    frame.loc[::10, ["colour", "visits"]] = pd.NA
    path = tmp_path / "mixed.parquet"
    frame.to_parquet(path, index=False)
    return train_into(registry, path).manifest


class Batcher:
    """What `serve.batch` does for the deployment (serve_app/app.py `_predict_batch`),
    without Ray: jobs that queue while a batch waits are predicted together by
    `run_batch`, whatever version each is for. `batches` records what went together."""

    def __init__(self, wait_s: float = 0.005) -> None:
        self._wait_s = wait_s
        self._queue: list[tuple[Job, asyncio.Future[Outcome]]] = []
        self.batches: list[list[Job]] = []

    async def __call__(self, job: Job) -> Outputs:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._queue.append((job, future))
        if len(self._queue) == 1:
            loop.call_later(self._wait_s, self._flush)
        return settled(await future)

    def _flush(self) -> None:
        queued, self._queue = self._queue, []
        jobs = [job for job, _ in queued]
        self.batches.append(jobs)
        try:
            outcomes = run_batch(jobs)
        except Exception as exc:  # as serve.batch does: the batch's exception, to every request in it
            for _, future in queued:
                future.set_exception(exc)
            return
        for (_, future), outcome in zip(queued, outcomes, strict=True):
            future.set_result(outcome)
