"""A canary load whose outcomes arrive while it runs: labels posted for the requests answered.

Each request carries one real row of a day's data under a request id of the load's own
making (`x-request-id`), so the row's true label is known; every `post_every_s` the
labels of the requests answered since the last post go to the model's outcomes route, as
a system that learns the truth a little after each prediction would send them; with
`hold`, none is posted and they wait in `held` (the truth arrives the next day:
benchmarks/daily_loop.py posts them then). The rows rotate through the frame; answers
are kept as `CanaryLoad` keeps them (run_rollout reads them). Loopback only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import pandas as pd

from harness.canary import Answer, CanaryLoad
from harness.loadgen import VERSION_HEADER, check_loopback
from serve_app.edge import KEY_HEADER, REQUEST_ID_HEADER


@dataclass
class LabelledLoad(CanaryLoad):
    outcomes_url: str = ""
    rows: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    prefix: str = "labelled"
    post_every_s: float = 1.0
    hold: bool = False
    held: list[tuple[str, int]] = field(default_factory=list)  # (request id, label) answered, not posted
    posted: int = 0
    post_failures: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls, url: str, outcomes_url: str, frame: pd.DataFrame, features: Sequence[str], prefix: str, hold: bool = False
    ) -> LabelledLoad:
        check_loopback(outcomes_url)
        rows = frame[list(features)].to_numpy().tolist()
        labels = [int(v) for v in frame["target"]]
        return cls(url=url, payloads=[], outcomes_url=outcomes_url, rows=rows, labels=labels, prefix=prefix, hold=hold)

    async def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        turns = iter(range(self.max_requests))
        answered: list[tuple[str, int]] = []
        limits = httpx.Limits(max_connections=self.concurrency + 1, max_keepalive_connections=self.concurrency + 1)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def worker() -> None:
                while time.monotonic() < deadline and not self._stop.is_set() and (turn := next(turns, None)) is not None:
                    index, rid = turn % len(self.rows), f"{self.prefix}-{turn}"
                    headers = {"content-type": "application/json", KEY_HEADER: f"client-{turn % self.keys}", REQUEST_ID_HEADER: rid}
                    body = json.dumps({"instances": [self.rows[index]]}).encode()
                    sent, started = time.time(), time.perf_counter()
                    try:
                        response = await client.post(self.url, content=body, headers=headers)
                        version, status = response.headers.get(VERSION_HEADER), response.status_code
                    except httpx.HTTPError:
                        version, status = None, 0
                    self.answers.append(Answer(sent, time.perf_counter() - started, status, int(version) if version else None, rid))
                    if 200 <= status < 300:
                        (self.held if self.hold else answered).append((rid, self.labels[index]))

            async def poster() -> None:
                """The truth arrives a little after each answer."""
                while not self._stop.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(self.post_every_s)
                    batch, answered[:] = list(answered), []
                    if batch:
                        await self._post(client, batch)

            await asyncio.gather(poster(), *(worker() for _ in range(self.concurrency)))

    async def _post(self, client: httpx.AsyncClient, batch: list[tuple[str, int]]) -> None:
        body = {"outcomes": [{"request_id": rid, "label": label} for rid, label in batch]}
        try:
            response = await client.post(self.outcomes_url, json=body)
        except httpx.HTTPError as exc:
            self.post_failures.append(repr(exc))
            return
        if response.status_code == 200:
            self.posted += len(batch)
        else:
            self.post_failures.append(f"{response.status_code}: {response.text[:200]}")
