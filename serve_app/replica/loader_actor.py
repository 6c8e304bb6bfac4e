"""Candidate versions are loaded outside the serving process, at the lowest CPU priority.

Loading a large model is seconds of Python (skops rebuilds a forest tree by tree). In the
replica's own process that work holds the GIL its event loop needs, so a busy replica
serves a fraction of its rate for the whole load, and on a machine without a spare core
the load takes CPU from every replica. Here each replica owns a loader actor: a process of
its own, niced to 19, that reads, audits, loads and verifies a version with exactly the
replica's registry and trust policy (`nonstop.loading.load_version`), and hands the
verified model back through Ray's object transfer, which costs the replica far less than
rebuilding the model would: the object arrives built. The artifact's
bytes are parsed by skops only, in the loader; what crosses to the replica is the
verified object, serialized by Ray as every message between the app's processes is.
The actor is owned by the replica and ends with it.
"""

from __future__ import annotations

import os

import ray
from pydantic import SecretStr

from nonstop.errors import NonstopError
from nonstop.loading import LoadedModel, TrustPolicy, load_version
from nonstop.registry import Registry

LOADER_NICENESS = 19  # the lowest priority: the load runs on CPU nobody serving wants


@ray.remote(num_cpus=0, max_concurrency=1)
class ModelLoader:
    def __init__(self, registry_uri: str, signing_key: SecretStr | None, policy: TrustPolicy) -> None:
        os.nice(LOADER_NICENESS - os.nice(0))
        self._registry = Registry(registry_uri, signing_key=signing_key)
        self._policy = policy

    def load(self, model: str, version: int) -> LoadedModel | NonstopError:
        """The loaded model, or the refusal as a value (Ray would wrap a raised one)."""
        try:
            return load_version(self._registry, model, version, self._policy)
        except NonstopError as exc:
            return exc


class OutOfProcessLoader:
    """The holder's `load`: starts the replica's loader actor and awaits its answers."""

    def __init__(self, registry_uri: str, signing_key: SecretStr | None, policy: TrustPolicy) -> None:
        self._actor = ModelLoader.remote(registry_uri, signing_key, policy)

    async def __call__(self, model: str, version: int) -> LoadedModel:
        result = await self._actor.load.remote(model, version)
        if isinstance(result, NonstopError):
            raise result
        return result
