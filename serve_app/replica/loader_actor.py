"""Candidate versions are loaded outside the serving process, within a metered CPU share.

Loading a large model is seconds of Python (skops rebuilds a forest tree by tree). In the
replica's own process that work holds the GIL its event loop needs, so a busy replica
serves a fraction of its rate for the whole load, and on a machine without a spare core
the load takes CPU from every replica. Here each replica owns a loader actor: a process of
its own, metered by the replica (serve_app/replica/load_governor.py: a bounded share of a
CPU, guaranteed while it loads), that reads, audits, loads and verifies a version with exactly the
replica's registry and trust policy (`nonstop.loading.load_version`), and hands the
verified model back through Ray's object transfer, which costs the replica far less than
rebuilding the model would: the object arrives built. The artifact's
bytes are parsed by skops only, in the loader; what crosses to the replica is the
verified object, serialized by Ray as every message between the app's processes is.
The actor is owned by the replica and ends with it. It runs on the replica's node: a
worker node may go (the autoscaler, a spot reclaim) and must not take the loader of a
replica elsewhere with it. Should the loader end all the same (killed, or native code
crashing in a load), the replica starts a fresh one: that load is retried at the next
poll, and a version whose load ends a fresh loader too is refused (nonstop/errors.py
`LoaderLost`, `LoaderCrashed`), so no loader is lost for good and no crash repeats forever.

The model crosses as one pickled blob of the loader's own making, not as the object: Ray
hands numpy arrays over zero-copy from its object store, read-only, and native code that
takes writable buffers then fails on them (libsvm's `predict_proba` for an SVC: predictions
served, probabilities a 500). Unpickling the blob in the replica builds writable arrays.
This pickle is the loader's, made from a model it has just audited and verified, and
travels only between the replica's own processes as every Ray message does; artifacts are
never read with pickle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle

import ray
from ray import cloudpickle
from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from pydantic import SecretStr

from nonstop.errors import LoaderCrashed, LoaderLost, NonstopError
from nonstop.loading import LoadedModel, TrustPolicy, load_version
from nonstop.registry import Registry
from serve_app.replica.load_governor import LoadBudget, LoadGovernor
from serve_app.replica.load_share import LoadShare, board_name

log = logging.getLogger("nonstop.loads")
# Different models load at once (serve_app/replica/models.py, `budget.max_concurrent_loads`
# bounds how many); one model's versions are loaded one at a time by its holder's lock.
MAX_CONCURRENT_LOADS = 4


@ray.remote(num_cpus=0, max_concurrency=MAX_CONCURRENT_LOADS)
class ModelLoader:
    def __init__(self, registry_uri: str, signing_key: SecretStr | None, policy: TrustPolicy) -> None:
        self._registry = Registry(registry_uri, signing_key=signing_key)
        self._policy = policy

    def pid(self) -> int:
        """The process its replica meters."""
        return os.getpid()

    def load(self, model: str, version: int) -> bytes | NonstopError:
        """The loaded model shipped (`ship`), or the refusal as a value (Ray would wrap a
        raised one)."""
        try:
            return ship(load_version(self._registry, model, version, self._policy))
        except NonstopError as exc:
            return exc


def ship(loaded: LoadedModel) -> bytes:
    """The model as the replica receives it: in-band, so its arrays arrive writable.
    Ray's cloudpickle, as for every Ray message: the checked numpy path (a closure,
    nonstop/compiled.py) travels with the model."""
    return cloudpickle.dumps(loaded, protocol=pickle.HIGHEST_PROTOCOL)


def arrive(shipped: bytes) -> LoadedModel:
    """What `ship` sent, rebuilt in the replica with arrays of its own."""
    loaded = pickle.loads(shipped)  # noqa: S301 - the replica's own loader made it (module docstring)
    if not isinstance(loaded, LoadedModel):
        raise TypeError(f"the loader sent a {type(loaded).__name__}, not a LoadedModel")
    return loaded


class OutOfProcessLoader:
    """The holder's `load`: starts the replica's loader actor on this node and awaits its
    answers, with a fresh actor whenever the last one ended (module doc), each load beside
    a serving version within the budget's share of a CPU, and shared with the app's other
    replicas on the node when `share` names the app (serve_app/replica/load_share.py)."""

    def __init__(
        self, registry_uri: str, signing_key: SecretStr | None, policy: TrustPolicy, budget: LoadBudget, share: str | None = None
    ) -> None:
        self._args = (registry_uri, signing_key, policy)
        self._lost: set[tuple[str, int]] = set()  # versions whose load a loader did not survive
        self._governor = LoadGovernor(budget)
        self._metered: ActorHandle | None = None  # the actor whose process the governor meters
        node = ray.get_runtime_context().get_node_id()
        self._share = LoadShare(board_name(share, registry_uri, signing_key, policy, node)) if share is not None else None
        self._actor = self._start()

    def close(self) -> None:
        """The loader is never left stopped by its replica's meter."""
        self._governor.close()

    def _start(self) -> ActorHandle:
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        return ModelLoader.options(scheduling_strategy=here).remote(*self._args)

    async def __call__(self, model: str, version: int, beside: bool = True) -> LoadedModel:
        """`beside`: a version of the model already answers, so the load is background work,
        held to the budget and shared; without one, requests wait for it and it runs at full
        speed on this replica's own loader."""
        share = self._share if beside else None
        if share is not None and (offered := await share.claim(model, version)) is not None:
            try:
                return self._outcome(model, version, await offered)
            except RayError as exc:  # the shared load's loader or replica ended: load here instead
                log.info("the shared load of %s v%d ended (%s): loading it here", model, version, exc)
        return self._outcome(model, version, await self._own(model, version, beside, share))

    async def _own(self, model: str, version: int, beside: bool, share: LoadShare | None) -> bytes | NonstopError:
        actor, offered = self._actor, False
        try:
            if self._metered is not actor:
                self._governor.attach(await actor.pid.remote())
                self._metered = actor
            load = actor.load.remote(model, version)
            if share is not None:
                share.fill(model, version, load)
                offered = True
            with self._governor.loading() if beside else contextlib.nullcontext():
                result = await load
        except RayActorError as exc:
            if share is not None and not offered:
                share.fill(model, version, None)
            if self._actor is actor:  # loads in flight on the same loader replace it once
                self._actor = self._start()
            if (model, version) in self._lost:
                raise LoaderCrashed(model, version, f"its load ended a fresh loader process too ({exc})") from exc
            self._lost.add((model, version))
            raise LoaderLost(model, version, f"the loader process ended during the load; a fresh one retries it at the next poll ({exc})") from exc
        self._lost.discard((model, version))
        return result

    @staticmethod
    def _outcome(model: str, version: int, result: bytes | NonstopError) -> LoadedModel:
        """The refusal raised, or the model rebuilt here; a shared load is checked to be the
        version asked for, as any answer of a loader."""
        if isinstance(result, NonstopError):
            raise result
        loaded = arrive(result)
        if (loaded.manifest.model, loaded.version) != (model, version):
            raise TypeError(f"the loader sent {loaded.manifest.model} v{loaded.version} for {model} v{version}")
        return loaded
