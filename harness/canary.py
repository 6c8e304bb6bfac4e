"""Rollouts under load: varied rows, request keys, and the ledger's record of each step.

The load here differs from `loadgen`'s in what a canary needs: each request carries
several real rows (so the evidence has rows to compare and bin, and a rescaled feature
shows), rotating through a day's data, and a request key, so stickiness can be checked.
Requests can take turns over every protocol (V1 JSON and Arrow, V2 JSON and binary,
gRPC), the same rows in each. Bounded in time and count, loopback only.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from nonstop.ledger import LedgerEntry
from nonstop.registry import Registry
from serve_app.edge import KEY_HEADER
from serve_app.grpc_v2 import oip_v2_pb2 as pb
from serve_app.grpc_v2.oip_v2_pb2_grpc import GRPCInferenceServiceStub
from serve_app.rollout.moves import Rollouts
from serve_app.rollout.policy import Policy
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_stream
from serve_app.wire.v2_json import BINARY_CONTENT_TYPE, HEADER_LENGTH
from harness.loadgen import VERSION_HEADER, check_loopback, turn_due
from harness.rollout import wait_until
from training.demo import day_frame
from training.publish import publish_model


PROTOCOLS = ("v1_json", "v1_arrow", "v2_json", "v2_binary", "grpc")
_V1_URL = re.compile(r"^(http://[^/]+)/v1/models/([^/:]+):predict$")


@dataclass(frozen=True)
class Answer:
    """`status`: the HTTP status; over gRPC 200 for OK, else the gRPC code's number plus
    1000 (never 2xx), and 0 when no answer came at all."""

    sent_at: float
    latency_s: float
    status: int
    version: int | None
    key: str
    protocol: str = "v1_json"
    error: str = ""

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


# A fragile candidate raises on any row holding this value (log1p(-1) is -inf, which its
# imputer refuses) and answers every other row; the demo model takes it as any number.
POISON = -1.0


def poisoned(payloads: list[bytes]) -> list[bytes]:
    """Every other body with POISON as the first feature of its last row: the fragile
    candidate raises on those requests' rows (log1p of -1), the primary answers them."""
    out = list(payloads)
    for index in range(0, len(out), 2):
        body = json.loads(out[index])
        body["instances"][-1][0] = POISON
        out[index] = json.dumps(body).encode()
    return out


def publish_fragile(registry: Registry, model: str) -> int:
    """A real, trusted Pipeline published unpromoted: a candidate that fails on some inputs."""
    fragile = make_pipeline(FunctionTransformer(np.log1p), SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=1000))
    published = publish_model(fragile, day_frame(0), model=model, label="target", holdout=day_frame(1), registry=registry)
    return published.manifest.version


@dataclass(frozen=True)
class Request:
    """One set of rows as each protocol carries it."""

    rows: list[list[float]]

    def v1_arrow(self, features: Sequence[str]) -> bytes:
        return arrow_stream(pa.table({name: [row[i] for row in self.rows] for i, name in enumerate(features)}))

    def v2_json(self) -> bytes:
        tensor = {"name": "x", "shape": [len(self.rows), len(self.rows[0])], "datatype": "FP64", "data": self.rows}
        return json.dumps({"inputs": [tensor]}).encode()

    def v2_binary(self) -> tuple[bytes, int]:
        """The body and its JSON header's length: the tensor as raw little-endian FP64."""
        raw = np.asarray(self.rows, dtype="<f8").tobytes()
        shape = [len(self.rows), len(self.rows[0])]
        header = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP64", "parameters": {"binary_data_size": len(raw)}}]})
        return header.encode() + raw, len(header.encode())

    def grpc(self, model: str) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=model)
        shape = [len(self.rows), len(self.rows[0])]
        request.inputs.add(name="x", datatype="FP64", shape=shape).contents.fp64_contents.extend(v for row in self.rows for v in row)
        return request


@dataclass
class CanaryLoad:
    """Clients in a thread, closed loop, or open loop at `rate` requests per second
    (`concurrency` at most in flight); `keys` distinct request keys cycle over requests,
    and requests take turns over `protocols` (V1 JSON alone unless told; gRPC needs
    `grpc_address`, Arrow needs `features`)."""

    url: str
    payloads: list[bytes]
    concurrency: int = 4
    max_seconds: float = 300.0
    max_requests: int = 200_000
    keys: int = 500
    protocols: tuple[str, ...] = ("v1_json",)
    features: tuple[str, ...] = ()
    grpc_address: str | None = None
    rate: float | None = None
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_loopback(self.url)
        matched = _V1_URL.match(self.url)
        unknown = set(self.protocols) - set(PROTOCOLS)
        if unknown or not self.protocols:
            raise ValueError(f"protocols {sorted(unknown) or '(none)'}: not among {PROTOCOLS}")
        if "grpc" in self.protocols and (self.grpc_address is None or not self.grpc_address.startswith("127.0.0.1:")):
            raise ValueError(f"gRPC load needs a loopback grpc_address, not {self.grpc_address!r}")
        if "v1_arrow" in self.protocols and not self.features:
            raise ValueError("Arrow load needs the feature names")
        if matched is None and set(self.protocols) != {"v1_json"}:
            raise ValueError(f"{self.url} is not a V1 predict URL to derive the others from")
        self._base, self._model = matched.groups() if matched else (self.url, "")
        self._requests = [Request(json.loads(p)["instances"]) for p in self.payloads] if self.protocols != ("v1_json",) else []
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

    def by_protocol(self) -> dict[str, list[Answer]]:
        return {p: [a for a in self.answers if a.protocol == p] for p in self.protocols}

    async def _http(self, client: httpx.AsyncClient, protocol: str, turn: int, key: str) -> tuple[int, int | None, str]:
        headers = {KEY_HEADER: key}
        if protocol == "v1_json":
            url, content, headers["content-type"] = self.url, self.payloads[turn % len(self.payloads)], "application/json"
        else:
            request, url = self._requests[turn % len(self._requests)], f"{self._base}/v2/models/{self._model}/infer"
            if protocol == "v1_arrow":
                url, content, headers["content-type"] = self.url, request.v1_arrow(self.features), ARROW_STREAM
            elif protocol == "v2_json":
                content, headers["content-type"] = request.v2_json(), "application/json"
            else:
                content, length = request.v2_binary()
                headers["content-type"], headers[HEADER_LENGTH] = BINARY_CONTENT_TYPE, str(length)
        response = await client.post(url, content=content, headers=headers)
        version = response.headers.get(VERSION_HEADER)
        if version is None and protocol.startswith("v2") and response.status_code == 200:
            header = response.content[: int(response.headers.get(HEADER_LENGTH, len(response.content)))]
            version = json.loads(header).get("model_version")
        return response.status_code, int(version) if version else None, "" if response.status_code == 200 else response.text[:300]

    async def _grpc(self, stub: GRPCInferenceServiceStub, turn: int, key: str) -> tuple[int, int | None, str]:
        request = self._requests[turn % len(self._requests)].grpc(self._model)
        try:
            reply = await stub.ModelInfer(request, metadata=((KEY_HEADER, key),), timeout=30)
        except grpc.aio.AioRpcError as exc:
            return 1000 + exc.code().value[0], None, f"{exc.code().name}: {exc.details()}"[:300]
        return 200, int(reply.model_version), ""

    async def _run(self) -> None:
        began = time.monotonic()
        deadline = began + self.max_seconds
        turns = iter(range(self.max_requests))
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        channel = grpc.aio.insecure_channel(self.grpc_address) if self.grpc_address else None
        stub = GRPCInferenceServiceStub(channel) if channel is not None else None
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def worker() -> None:
                while time.monotonic() < deadline and not self._stop.is_set() and (turn := next(turns, None)) is not None:
                    if not await turn_due(turn, began, deadline, self.rate, self._stop):
                        break
                    key, protocol = f"client-{turn % self.keys}", self.protocols[turn % len(self.protocols)]
                    sent, started = time.time(), time.perf_counter()
                    try:
                        if protocol == "grpc" and stub is not None:
                            status, version, error = await self._grpc(stub, turn, key)
                        else:
                            status, version, error = await self._http(client, protocol, turn, key)
                    except (httpx.HTTPError, grpc.RpcError) as exc:
                        status, version, error = 0, None, repr(exc)[:300]
                    self.answers.append(Answer(sent, time.perf_counter() - started, status, version, key, protocol, error))

            try:
                await asyncio.gather(*(worker() for _ in range(self.concurrency)))
            finally:
                if channel is not None:
                    await channel.close()


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
