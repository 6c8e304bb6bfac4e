"""Load over many models at once, and what a many-models benchmark reads of the replicas.

`harness.loadgen` drives one URL; a many-models run sends each request to the next model
of a list (a hot set, a sweep over all of them, a background load while all are
retrained), so what is recorded per request is the model asked for beside the one that
answered. A 503 with `Retry-After` is the documented answer of a model whose load passed
the request's bounded wait (or of Serve's backpressure): a client retries it, so it is
counted apart from failures (`classify`). Replica memory is sampled by pid from outside
(`RssSampler`), the way an operator's node exporter would see it.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx
import numpy as np
import psutil

from harness.loadgen import MODEL_HEADER, VERSION_HEADER, check_loopback
from harness.small_models import ROW

BODY = json.dumps({"instances": [ROW]}).encode()
Outcome = Literal["ok", "retry_after", "failed"]


def classify(status: int, retry_after: str | None, error: str | None = None) -> Outcome:
    """A 2xx is an answer; a 503 with Retry-After is the documented "not yet, retry" (a
    load past the bounded wait, or Serve shedding past max_queued_requests); anything
    else, a connection error included, is a failure."""
    if error is None and 200 <= status < 300:
        return "ok"
    if error is None and status == 503 and retry_after is not None and retry_after.strip().isdigit():
        return "retry_after"
    return "failed"


@dataclass(frozen=True)
class Answer:
    model: str  # asked for
    sent_at: float
    latency_s: float
    status: int
    answered_by: str | None = None  # x-model-name
    version: str | None = None
    retry_after: str | None = None
    error: str | None = None
    detail: str | None = None  # the body of an answer that is not 2xx, clipped

    @property
    def outcome(self) -> Outcome:
        return classify(self.status, self.retry_after, self.error)


def percentile_ms(latencies_s: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(latencies_s) * 1e3, q)) if len(latencies_s) else None


def tally(answers: Sequence[Answer]) -> dict[str, Any]:
    """Counts by outcome, answers naming another model than asked, latency of the 2xx."""
    outcomes = Counter(a.outcome for a in answers)
    ok = [a.latency_s for a in answers if a.outcome == "ok"]
    return {
        "requests": len(answers), "ok": outcomes["ok"], "retry_after_503": outcomes["retry_after"], "failed": outcomes["failed"],
        "wrong_model": sum(1 for a in answers if a.outcome == "ok" and a.answered_by != a.model),
        "p50_ms": percentile_ms(ok, 50), "p99_ms": percentile_ms(ok, 99),
        "failures": [asdict(a) for a in answers if a.outcome == "failed"][:10],
    }  # fmt: skip


def predict_path(model: str) -> str:
    return f"/v1/models/{model}:predict"


async def _post(client: httpx.AsyncClient, base_url: str, model: str) -> Answer:
    sent, started = time.time(), time.perf_counter()
    try:
        response = await client.post(f"{base_url}{predict_path(model)}", content=BODY, headers={"content-type": "application/json"})
    except httpx.HTTPError as exc:
        return Answer(model, sent, time.perf_counter() - started, 0, error=f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - started
    detail = None if response.is_success else response.text[:300]
    return Answer(
        model, sent, latency, response.status_code, response.headers.get(MODEL_HEADER), response.headers.get(VERSION_HEADER),
        response.headers.get("retry-after"), detail=detail,
    )  # fmt: skip


async def drive(
    base_url: str, models: Sequence[str], *, concurrency: int, seconds: float | None = None, once: bool = False,
    stop: threading.Event | None = None,
) -> list[Answer]:
    """`concurrency` closed-loop clients, each taking the next model of `models` in turn:
    round and round until `seconds` pass (or `stop` is set), or each model once (`once`)."""
    check_loopback(base_url)
    answers: list[Answer] = []
    deadline = time.monotonic() + (seconds if seconds is not None else 86400.0)
    turn = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal turn
            while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
                if once and turn >= len(models):
                    return
                model, turn = models[turn % len(models)], turn + 1
                answers.append(await _post(client, base_url, model))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


class BackgroundDrive:
    """`drive` in a thread of its own, until stopped: the load a retrain runs under."""

    def __init__(self, base_url: str, models: Sequence[str], concurrency: int) -> None:
        self._stop = threading.Event()
        self._answers: list[Answer] | None = None
        self._args = (base_url, list(models), concurrency)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        url, models, concurrency = self._args
        self._answers = asyncio.run(drive(url, models, concurrency=concurrency, stop=self._stop))

    def start(self) -> BackgroundDrive:
        self._thread.start()
        return self

    def stop(self) -> list[Answer]:
        self._stop.set()
        self._thread.join(timeout=120)
        if self._answers is None:
            raise RuntimeError("the background load did not finish")
        return self._answers


@dataclass
class RssSampler:
    """The resident memory of named processes, and the machine's load average, every
    `every_s`, in a thread: replica memory over the whole run, not at a few points."""

    pids: dict[str, int]  # label -> pid
    every_s: float = 1.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> dict[str, Any]:
        row: dict[str, Any] = {"t": time.time(), "load1": os.getloadavg()[0]}
        for label, pid in self.pids.items():
            try:
                row[label] = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                row[label] = None  # gone: a restarted replica would show as a gap
        self.samples.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def start(self) -> RssSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def peak(self, label: str, since: float = 0.0) -> int | None:
        values = [s[label] for s in self.samples if s["t"] >= since and s.get(label) is not None]
        return max(values) if values else None

    def last(self, label: str) -> int | None:
        values = [s[label] for s in self.samples if s.get(label) is not None]
        return values[-1] if values else None


def memory_verdict(baseline: int, peak: int, budget_bytes: int, overhead_bytes: int) -> dict[str, Any]:
    """A replica's peak RSS against its limit: its RSS before the many-models load (the
    interpreter, Ray, Serve, the app and a first model) plus the byte budget plus a stated
    overhead (the Python objects around each held version that the byte estimate leaves
    out, and the allocator's slack after hundreds of loads and evictions)."""
    limit = baseline + budget_bytes + overhead_bytes
    return {"baseline": baseline, "peak": peak, "growth": peak - baseline, "limit": limit, "within": peak <= limit}


def cold_loads(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Model -> its load time, for every model whose load count went up between two
    reads of the replicas' per-model lines (replica -> model -> {loads, load_seconds}).
    A model touched once between the reads loaded at most once, on one replica: the line
    whose count went up holds that load's time."""
    loaded: dict[str, float | None] = {}
    for replica, lines in after.items():
        was = before.get(replica, {})
        for model, line in lines.items():
            if line["loads"] > was.get(model, {}).get("loads", 0):
                loaded[model] = line["load_seconds"]
    return loaded
