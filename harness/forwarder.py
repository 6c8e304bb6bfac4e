"""A small TCP forwarder standing in for a Kubernetes Service in front of Ray clusters.

A Service routes each new connection to one of its *ready endpoints*: the pods its
selector matches whose readiness is true. This forwarder does the same on loopback:
it holds named endpoints, each pointing at a local port and belonging to a cluster;
the selector names one cluster; a new connection goes round-robin to the ready
endpoints of the selected cluster, and is refused (closed at once, as kube-proxy
rejects a Service without endpoints) when there is none.

As with kube-proxy, a connection stays with the endpoint it was given: changing the
selector, readiness or the endpoints affects new connections only; a connection ends
when either side closes it (a deleted pod's processes exit).

Nothing here decides readiness or the selector: the caller (harness/switchover.py)
changes them only the way KubeRay and the kubelet would.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
BUFFER = 64 * 1024


@dataclass
class Endpoint:
    name: str
    cluster: str
    port: int
    ready: bool = False
    connections: set[asyncio.StreamWriter] = field(default_factory=set)


class Forwarder:
    """Listens on 127.0.0.1:`port` (0: any free port) in a thread of its own; thread-safe setters."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._lock = threading.Lock()
        self._endpoints: dict[str, Endpoint] = {}
        self._selector: str | None = None
        self._turn = itertools.count()
        self.accepted: Counter[str] = Counter()  # connections per cluster
        self.accepted_by_endpoint: Counter[str] = Counter()
        self.refusals: list[float] = []  # time.time() of each connection refused: no ready endpoint
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> Forwarder:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, LOOPBACK, self.port), self._loop
        ).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *_: object) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    @property
    def refused(self) -> int:
        return len(self.refusals)

    # -- what KubeRay (selector) and the kubelet / endpoint controller (readiness) change --

    def select(self, cluster: str | None) -> None:
        with self._lock:
            self._selector = cluster

    @property
    def selector(self) -> str | None:
        with self._lock:
            return self._selector

    def add(self, name: str, cluster: str, port: int) -> None:
        """A new pod: an endpoint that is not ready until its readiness says so."""
        with self._lock:
            self._endpoints[name] = Endpoint(name, cluster, port)

    def set_ready(self, name: str, ready: bool) -> None:
        """A probe that ends after its pod was deleted changes nothing."""
        with self._lock:
            if name in self._endpoints:
                self._endpoints[name].ready = ready

    def remove_cluster(self, cluster: str) -> None:
        """The cluster's pods are being deleted: their endpoints leave the Service at once
        (terminating pods are not ready); connections they carry end when the pods do."""
        with self._lock:
            for name in [e.name for e in self._endpoints.values() if e.cluster == cluster]:
                del self._endpoints[name]

    def remove(self, name: str) -> None:
        """One deleted pod's endpoint leaves the Service (kube-proxy has heard of it); the
        connections it carries end when the pod's processes do."""
        with self._lock:
            self._endpoints.pop(name, None)

    def endpoint_names(self) -> list[str]:
        with self._lock:
            return list(self._endpoints)

    def ready_endpoints(self) -> list[str]:
        with self._lock:
            return [e.name for e in self._endpoints.values() if e.cluster == self._selector and e.ready]

    # -- the data path --

    def _pick(self) -> Endpoint | None:
        with self._lock:
            ready = [e for e in self._endpoints.values() if e.cluster == self._selector and e.ready]
            return ready[next(self._turn) % len(ready)] if ready else None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        endpoint = self._pick()
        if endpoint is None:
            self.refusals.append(time.time())
            writer.transport.abort()  # no endpoint: the connection is refused outright
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, endpoint.port)
        except OSError:
            writer.transport.abort()
            return
        self.accepted[endpoint.cluster] += 1
        self.accepted_by_endpoint[endpoint.name] += 1
        endpoint.connections.update((writer, upstream_writer))
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            endpoint.connections.difference_update((writer, upstream_writer))
            for side in (writer, upstream_writer):
                side.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(BUFFER):
            sink.write(chunk)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        if sink.can_write_eof() and not sink.is_closing():
            try:
                sink.write_eof()
            except (ConnectionError, OSError):
                pass
