"""A bounded asynchronous load driver that records every request.

Used by the tests, the rollout report and the benchmarks to measure an upgrade as a
client sees it: each request's send time, latency, status and the version that answered.
It refuses any target but loopback, and stops at a request count or a duration,
whichever comes first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx

VERSION_HEADER = "x-model-version"
MODEL_HEADER = "x-model-name"
REQUEST_ID_HEADER = "x-request-id"


@dataclass(frozen=True)
class Sample:
    sent_at: float
    latency_s: float
    status: int
    version: str | None
    error: str | None = None
    request_id: str | None = None  # as the server answered it (serve_app/edge.py)
    model: str | None = None  # the model that answered, as the server named it

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300


class Timed(Protocol):
    """A request as a load driver recorded it (`Sample`, `harness.canary.Answer`)."""

    sent_at: float
    latency_s: float

    @property
    def ok(self) -> bool: ...


T = TypeVar("T", bound=Timed)


def failed_beyond(answers: Iterable[T], fault_at: float, burst_s: float) -> list[T]:
    """The failures a fault at `fault_at` does not explain. A kill -9 fails the requests
    the killed process held and those HAProxy sends it before it sees its connections
    close (HAProxy retries a failed connect, not a request sent), so their count follows
    the load's rate, not its clients: the failures answered after the fault and sent
    within `burst_s` of it are the fault's; any other failure is returned."""
    return [a for a in answers if not a.ok and not (a.sent_at + a.latency_s >= fault_at and a.sent_at <= fault_at + burst_s)]


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)

    @property
    def failed(self) -> list[Sample]:
        return [s for s in self.samples if not s.ok]

    def versions(self) -> set[str]:
        return {s.version for s in self.samples if s.version is not None}


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"load is only ever sent to loopback, not to {host!r}")


async def turn_due(turn: int, began: float, deadline: float, rate: float | None, stop: threading.Event | None) -> bool:
    """Open loop: request `turn` is due `turn / rate` seconds after `began` (closed loop
    without `rate`: at once). Sleeps until then; False if the run ends first."""
    if rate is None:
        return True
    due = began + turn / rate
    if due > deadline:
        return False
    if (wait := due - time.monotonic()) > 0:
        await asyncio.sleep(wait)
    return not (stop and stop.is_set())


async def run_load(
    url: str,
    body: dict[str, Any] | bytes,
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    stop: threading.Event | None = None,
    content_type: str = "application/json",
    rate: float | None = None,
    extra_headers: dict[str, str] | None = None,
) -> LoadResult:
    """`body` is sent as JSON, or as it is (bytes) with `content_type`.

    Without `rate`, each client sends its next request when the last one is answered, so
    the load follows the server's capacity. With `rate`, requests are due on a fixed
    schedule (open loop, `concurrency` at most in flight): a server that keeps up
    answers `rate` per second whatever else it is doing, and one that falls behind shows
    it as latency and as a rate below the offer."""
    check_loopback(url)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": content_type, **(extra_headers or {})}
    result = LoadResult()
    began = time.monotonic()
    deadline = began + max_seconds
    budget = iter(range(max_requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            while time.monotonic() < deadline and not (stop and stop.is_set()) and (turn := next(budget, None)) is not None:
                if not await turn_due(turn, began, deadline, rate, stop):
                    break
                sent = time.time()
                started = time.perf_counter()
                try:
                    response = await client.post(url, content=content, headers=headers)
                    result.samples.append(
                        Sample(
                            sent, time.perf_counter() - started, response.status_code, response.headers.get(VERSION_HEADER),
                            request_id=response.headers.get(REQUEST_ID_HEADER), model=response.headers.get(MODEL_HEADER),
                        )  # fmt: skip
                    )
                except httpx.HTTPError as exc:
                    result.samples.append(Sample(sent, time.perf_counter() - started, 0, None, f"{type(exc).__name__}: {exc}"))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


class BackgroundLoad:
    """Load in a thread of its own while a test or a scenario triggers an upgrade."""

    def __init__(
        self,
        url: str,
        body: dict[str, Any],
        *,
        concurrency: int = 4,
        max_requests: int = 50_000,
        max_seconds: float = 120,
        rate: float | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        check_loopback(url)
        self._stop = threading.Event()
        self._result: LoadResult | None = None
        self._args = (url, body)
        self._kwargs = {
            "concurrency": concurrency, "max_requests": max_requests, "max_seconds": max_seconds, "rate": rate,
            "extra_headers": extra_headers,
        }  # fmt: skip
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._result = asyncio.run(run_load(*self._args, stop=self._stop, **self._kwargs))  # type: ignore[arg-type]

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join(timeout=60)
        assert self._result is not None, "load thread did not finish"
        return self._result
