"""Holds the model a replica serves and replaces it without a request ever waiting.

A candidate is loaded and verified off the event loop; only then is the reference to the
immutable `LoadedModel` replaced, in one assignment. A request reads that reference once,
so it runs wholly on the old model or wholly on the new one. A refused candidate leaves
the current model in place and is remembered, so the poller does not retry it forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from nonstop.errors import AliasNotFound, ModelLoadError, NonstopError, SchemaMismatchError
from nonstop.loading import LoadedModel, TrustPolicy, load_version
from nonstop.registry import Registry
from serve_app.config import ModelTarget

log = logging.getLogger("nonstop.holder")


def stagger_s(rank: int, load_seconds: float) -> float:
    """Replicas load one after another, rank by rank, each waiting for the loads before it
    to end (judged by its own last load time): loading costs CPU, and while one replica
    loads, the others keep their full capacity."""
    return rank * (load_seconds * 1.5 + 0.2)


@dataclass(frozen=True)
class LoadFailure:
    version: int | None
    reason: str
    message: str
    at: datetime


class ModelHolder:
    def __init__(
        self,
        registry: Registry,
        policy: TrustPolicy,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.current: LoadedModel | None = None
        self.target: ModelTarget | None = None
        self.last_error: LoadFailure | None = None
        self._registry = registry
        self._policy = policy
        self._on_change = on_change
        self._refused: set[int] = set()
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._pending: asyncio.Task[None] | None = None
        self.rank = 0

    @property
    def ready(self) -> bool:
        return self.current is not None

    async def configure(self, target: ModelTarget) -> None:
        """Apply a new target. Only a replica with nothing to serve waits for the load.

        Ray Serve sends no traffic to a replica while its `reconfigure` runs, so a
        blocking load would take the replica out of rotation for the whole load.
        """
        self.target = target
        self._refused.clear()
        self._restart_poller(target)
        if self.current is None:
            await self.sync(raise_errors=True)
        else:
            self._pending = asyncio.create_task(self.sync())

    async def sync(self, raise_errors: bool = False) -> None:
        """Bring the served model in line with the target, if it is not already."""
        async with self._lock:
            target = self.target
            if target is None:
                return
            try:
                version = await asyncio.to_thread(self._resolve, target)
                if self.current and self.current.manifest.model == target.model and self.current.version == version:
                    return
                if version in self._refused:
                    return
                await asyncio.sleep(self._stagger_s())
                candidate = await asyncio.to_thread(load_version, self._registry, target.model, version, self._policy)
                self._check_schema(target, candidate)
            except NonstopError as exc:
                self._fail(exc)
                if raise_errors:
                    raise
                return
            previous, self.current = self.current, candidate
            log.info(
                "serving %s v%d (was %s), loaded in %.3fs",
                target.model,
                candidate.version,
                f"v{previous.version}" if previous else "nothing",
                candidate.load_seconds,
            )
        self._on_change()

    def _stagger_s(self) -> float:
        return 0.0 if self.current is None else stagger_s(self.rank, self.current.load_seconds)

    def _resolve(self, target: ModelTarget) -> int:
        if target.version is not None:
            self._registry.manifest(target.model, target.version)
            return target.version
        alias = target.followed_alias
        assert alias is not None
        version = self._registry.resolve(target.model, alias)
        if version is None:
            raise AliasNotFound(f"model {target.model!r} has no alias {alias!r} to follow")
        return version

    def _check_schema(self, target: ModelTarget, candidate: LoadedModel) -> None:
        current = self.current
        if current is None or target.allow_schema_change or current.manifest.same_schema(candidate.manifest):
            return
        ours = set(current.manifest.feature_names)
        theirs = set(candidate.manifest.feature_names)
        raise SchemaMismatchError(
            target.model,
            candidate.version,
            f"features differ from served v{current.version} "
            f"(missing: {sorted(ours - theirs) or 'none'}, new: {sorted(theirs - ours) or 'none'}); "
            "set allow_schema_change in user_config to serve it",
        )

    def _fail(self, exc: NonstopError) -> None:
        """Record why; a failure that repeats at every poll (a forged alias, say) is
        reported once, with the time it was first seen."""
        version = exc.version if isinstance(exc, ModelLoadError) and exc.version else None
        if version is not None:
            self._refused.add(version)
        if self.last_error is not None and self.last_error.message == exc.message:
            return
        self.last_error = LoadFailure(
            version=version,
            reason=getattr(exc, "reason", type(exc).__name__),
            message=exc.message,
            at=datetime.now(UTC),
        )
        log.warning("load refused: %s", exc.message)
        self._on_change()

    def _restart_poller(self, target: ModelTarget) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if target.followed_alias is not None:
            self._poller = asyncio.create_task(self._poll(target.poll_interval_s))

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sync()
            except Exception:  # the poller must outlive any surprise; the next tick retries
                log.exception("alias poll failed")

    async def close(self) -> None:
        for task in (self._poller, self._pending):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
