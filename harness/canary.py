"""Rollouts under load: varied rows, request keys, and the ledger's record of each step.

The load here differs from `loadgen`'s in what a canary needs: each request carries
several real rows (so the evidence has rows to compare and bin, and a rescaled feature
shows), rotating through a day's data, and a request key, so stickiness can be checked.
Bounded in time and count, loopback only.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pandas as pd

from nonstop.ledger import LedgerEntry
from nonstop.registry import Registry
from serve_app.edge import KEY_HEADER
from serve_app.rollout.moves import Rollouts
from serve_app.rollout.policy import Policy
from harness.loadgen import VERSION_HEADER, check_loopback
from harness.rollout import wait_until


@dataclass(frozen=True)
class Answer:
    sent_at: float
    latency_s: float
    status: int
    version: int | None
    key: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def bodies(frame: pd.DataFrame, features: Sequence[str], rows: int, rescale: dict[str, float] | None = None) -> list[bytes]:
    """JSON bodies of `rows` rows each, in schema order, some features multiplied."""
    frame = frame[list(features)].copy()
    for name, factor in (rescale or {}).items():
        frame[name] = frame[name] * factor
    values = frame.to_numpy().tolist()
    return [json.dumps({"instances": values[i : i + rows]}).encode() for i in range(0, len(values) - rows + 1, rows)]


@dataclass
class CanaryLoad:
    """Closed-loop clients in a thread; `keys` distinct request keys cycle over requests."""

    url: str
    payloads: list[bytes]
    concurrency: int = 4
    max_seconds: float = 300.0
    max_requests: int = 200_000
    keys: int = 500
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_loopback(self.url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> CanaryLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> list[Answer]:
        self._stop.set()
        self._thread.join(timeout=60)
        return self.answers

    async def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        turns = iter(range(self.max_requests))
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def worker() -> None:
                while time.monotonic() < deadline and not self._stop.is_set() and (turn := next(turns, None)) is not None:
                    key = f"client-{turn % self.keys}"
                    headers = {"content-type": "application/json", KEY_HEADER: key}
                    sent, started = time.time(), time.perf_counter()
                    try:
                        response = await client.post(self.url, content=self.payloads[turn % len(self.payloads)], headers=headers)
                        version = response.headers.get(VERSION_HEADER)
                        status = response.status_code
                    except httpx.HTTPError:
                        version, status = None, 0
                    self.answers.append(Answer(sent, time.perf_counter() - started, status, int(version) if version else None, key))

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))


@dataclass(frozen=True)
class RolloutRun:
    candidate: int
    primary: int
    answers: list[Answer]
    entries: list[LedgerEntry]
    started: datetime
    ended: datetime

    @property
    def outcome(self) -> LedgerEntry:
        """The entry that ended the rollout: a rollback, an abort, or the alias move."""
        return next(e for e in reversed(self.entries) if e.action in ("rollback", "abort") or e.kind == "alias_move")

    def answered_by(self, version: int) -> int:
        return sum(1 for a in self.answers if a.version == version)

    @property
    def failed(self) -> list[Answer]:
        return [a for a in self.answers if not a.ok]


def run_rollout(
    registry: Registry, model: str, candidate: int, policy: Policy, load: CanaryLoad, *, settle_s: float, timeout_s: float,
    trigger: Callable[[], object] | None = None, during: Callable[[LedgerEntry], object] | None = None,
) -> RolloutRun:
    """Start the rollout under `load` (through the ledger, or by `trigger`, e.g. a deploy
    of a config with a canary block), call `during` with its start entry, wait until the
    ledger says it ended, keep loading `settle_s` more (the replicas follow), and return
    what the clients saw."""
    rollouts = Rollouts(registry, model, "production")
    ledger = registry.ledger(model)
    primary = registry.resolve(model, "production")
    if primary is None:
        raise ValueError(f"{model}@production points at nothing")
    before = ledger.entries()[-1].seq if ledger.entries() else 0
    with load:
        time.sleep(settle_s)
        if trigger is None:
            rollouts.start(candidate, policy, actor="integration test")
        else:
            trigger()

        def started() -> LedgerEntry | None:
            return next((e for e in ledger.since_seq(before) if e.action == "start" and e.candidate == candidate), None)

        wait_until(lambda: started() is not None, timeout_s, f"rollout of v{candidate} to start")
        first = started()
        if first is None:
            raise AssertionError("unreachable: the start was just seen")
        if during is not None:
            during(first)
        wait_until(lambda: not rollouts.state().active, timeout_s, f"rollout of v{candidate} to end")
        ended = datetime.now(UTC)
        time.sleep(settle_s)
    entries = [e for e in ledger.entries() if e.seq >= first.seq]
    return RolloutRun(candidate, primary, load.answers, entries, first.at, ended)
