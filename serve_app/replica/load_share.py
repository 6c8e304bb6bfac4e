"""One load of a version serves every replica of an app on a node.

An app's replicas follow the same alias, so they load a new version at about the same
moment (within a poll interval), each in its own loader: on a node with N replicas the
artifact is read, audited, rebuilt and verified N times, N times the CPU taken from
serving, for one result. Here the first replica to load a version beside the one it
serves offers that load, still in flight, on the node's board (a small actor per app,
registry and trust policy, on that node); the others await its result instead of starting
their own. The result is the loader's shipped model (serve_app/replica/loader_actor.py
`ship`), made with the same registry and trust policy (the board's name carries both), so
what a replica receives is what its own loader would have made; it is checked on arrival
as its own loader's would be.

The board is a saving, never a dependency: a board that is gone, a shared load that ends
with its loader's or its replica's death, an expired entry each send a replica to its own
loader, as if there were no board. Ray tracks the shared load itself (the board hands out
its object reference), so a replica waiting on a loader that died learns it from Ray, not
from a timeout. Only loads beside a serving version share: a replica with nothing to serve
yet loads at full speed on its own rather than wait on a metered load.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import ray
from ray import ObjectRef
from ray.actor import ActorHandle
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

if TYPE_CHECKING:  # the board's process imports this module: it stays free of the model libraries
    from pydantic import SecretStr

    from nonstop.loading import TrustPolicy

log = logging.getLogger("nonstop.loads")

OFFER_TTL_S = 120.0  # long past the other replicas' next poll; a later load starts afresh
MOST_OFFERS = 16  # each holds a shipped model in the object store while it is offered
FILL_WAIT_S = 10.0  # a claimer sends its load's reference at once; past this, it never will
Key = tuple[str, int]  # (model, version)


@dataclass
class _Offer:
    at: float = field(default_factory=time.monotonic)
    filled: asyncio.Event = field(default_factory=asyncio.Event)
    load: list[ObjectRef] | None = None  # in a list: Ray passes it on as a reference, unresolved


@ray.remote(num_cpus=0)
class LoadBoard:
    """The node's offers: the first claim of a version is told to load it and fill in its
    load; later claims get that load (module doc)."""

    def __init__(self) -> None:
        self._offers: dict[Key, _Offer] = {}

    async def claim(self, model: str, version: int) -> list[ObjectRef] | None:
        """The load to await, or None: load it yourself (and `fill` it in if you were first)."""
        now = time.monotonic()
        for key in [k for k, o in self._offers.items() if now - o.at > OFFER_TTL_S]:
            del self._offers[key]
        offer = self._offers.get((model, version))
        if offer is None:
            if len(self._offers) >= MOST_OFFERS:
                del self._offers[min(self._offers, key=lambda k: self._offers[k].at)]
            self._offers[(model, version)] = _Offer()
            return None
        try:
            await asyncio.wait_for(offer.filled.wait(), FILL_WAIT_S)
        except TimeoutError:
            return None
        return offer.load

    def fill(self, model: str, version: int, load: list[ObjectRef] | None) -> None:
        """The first claimer's load (None: it could not start one, so nobody waits on it)."""
        offer = self._offers.get((model, version))
        if offer is None or offer.filled.is_set():
            return
        if load is None:
            del self._offers[(model, version)]
        offer.load = load
        offer.filled.set()


def board_name(app: str, registry_uri: str, signing_key: SecretStr | None, policy: TrustPolicy, node: str) -> str:
    """Replicas share loads only within one app, with the same registry, key and trust
    policy, on one node."""
    key = signing_key.get_secret_value() if signing_key is not None else ""
    identity = "\0".join([app, registry_uri, hashlib.sha256(key.encode()).hexdigest(), policy.model_dump_json(), node])
    return f"nonstop-loads-{hashlib.sha256(identity.encode()).hexdigest()[:32]}"


class LoadShare:
    """A replica's side of its node's board; every failure of the board reads as 'load it
    yourself'. The board is started with the replica, so its process's start-up is not
    paid during a swap."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._board: ActorHandle | None = None
        with contextlib.suppress(RayError):
            self._here()

    def _here(self) -> ActorHandle:
        if self._board is None:
            here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
            self._board = LoadBoard.options(name=self._name, get_if_exists=True, scheduling_strategy=here).remote()
        return self._board

    async def claim(self, model: str, version: int) -> ObjectRef | None:
        try:
            load = await self._here().claim.remote(model, version)
        except RayError as exc:
            log.info("load board %s unavailable (%s): loading %s v%d here", self._name, exc, model, version)
            self._board = None
            return None
        return load[0] if load else None

    def fill(self, model: str, version: int, load: ObjectRef | None) -> None:
        try:
            self._here().fill.remote(model, version, [load] if load is not None else None)
        except RayError:
            self._board = None
