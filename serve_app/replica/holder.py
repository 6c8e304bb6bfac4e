"""Keeps a replica's `ServingState` in line with its target, without a request waiting.

The holder is the one owner of every version a replica loads: the primary, and a
rollout's candidate beside it (serve_app/rollout/canary.py says which, and its share).
A version is loaded and verified off the event loop; only then is a new state, holding
it, assigned in one reference assignment. A request reads the state once, so it runs
wholly on the old version or wholly on the new one.

Nothing in the registry can make a replica fail to start: a missing model, alias or
pinned version, an unreadable registry, a refused artifact all leave the replica up,
not ready (requests get "no version loaded" with the reason), and the poller keeps
looking until something servable appears. A refused version is remembered so it is not
loaded again at every poll; a version that did not exist yet is not a refusal. A refused
candidate is reported as a refused primary is, in the state's `last_error`.

One poller per replica: at each tick it runs the follower (the rollout) and then syncs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from nonstop.errors import (
    AliasNotFound, ConfigError, ModelLoadError, NonstopError, SchemaMismatchError,
)  # fmt: skip
from nonstop.loading import LoadedModel, TrustPolicy, load_version
from nonstop.registry import Registry
from serve_app.config import ModelTarget
from serve_app.replica.state import LoadFailure, Role, ServingState

log = logging.getLogger("nonstop.holder")
# (model, version, beside: a version of the model already answers) -> the verified model;
# a load beside one that answers is background work (serve_app/replica/load_governor.py)
Loader = Callable[[str, int, bool], Awaitable[LoadedModel]]
Follower = Callable[[ServingState], Awaitable[None]]  # runs at every poll (serve_app/rollout/canary.py)
Prepare = Callable[[LoadedModel], Awaitable[None]]  # readies a fresh candidate before it answers


class ModelHolder:
    def __init__(
        self,
        registry: Registry,
        policy: TrustPolicy,
        on_change: Callable[[], None] = lambda: None,
        load: Loader | None = None,
    ) -> None:
        """`load` is where candidates load: the deployment passes its out-of-process
        loader (serve_app/replica/loader_actor.py); without one they load in a thread of this process."""
        self.state = ServingState()
        self._target: ModelTarget | None = None
        self._registry = registry
        self._policy = policy
        self._on_change = on_change
        self._load = load or self._load_here
        self._refused: set[tuple[str, int, Role]] = set()
        self._lock = asyncio.Lock()
        self._follower: Follower | None = None
        self._poller: asyncio.Task[None] | None = None
        self._pending: asyncio.Task[None] | None = None

    async def configure(self, target: ModelTarget) -> None:
        """Apply a new target. A replica with nothing of the target's model to serve
        (at start, or after a change of model) loads before returning; otherwise the
        load runs in the background.

        Ray Serve sends no traffic to a replica while its `reconfigure` runs: a blocking
        load would take a serving replica out of rotation for the whole load, while a
        replica switching models must not be routed requests for the new name before it
        can answer them. Never raises for what the registry holds: see the module doc.
        """
        self._refused.clear()
        switching = target.model != self.state.model or self.state.primary is None
        self._set(self.state.retargeted(target) if not switching else self.state)
        self._target = target
        self._restart_poller(target)
        if switching:
            await self.sync()
            await self._follow_now()  # a rollout under way: its candidate answers its share from the first request
        else:
            self._pending = asyncio.create_task(self.sync())

    async def sync(self) -> None:
        """Bring the served state in line with the target, if it is not already."""
        async with self._lock:
            target = self._target
            if target is None:
                return
            state = self.state.retargeted(target)
            current = state.primary
            if current is not None and target.version is not None and current.version == target.version:
                return
            try:
                version = await asyncio.to_thread(self._resolve, target)
                if current is not None and current.version == version:
                    return
                if (target.model, version, Role.PRIMARY) in self._refused:
                    return
                held = state.held(Role.CANDIDATE)  # a promoted canary is already loaded and verified
                candidate = held if held is not None and held.version == version else await self._load(target.model, version, current is not None)
                self._check_schema(target, current, candidate, Role.PRIMARY)
            except NonstopError as exc:
                self._fail(state, exc, Role.PRIMARY)
                return
            self._set(state.with_version(candidate, Role.PRIMARY))
            log.info(
                "serving %s v%d (was %s), loaded in %.3fs",
                target.model,
                candidate.version,
                f"v{current.version}" if current else "nothing",
                candidate.load_seconds,
            )

    async def _load_here(self, model: str, version: int, beside: bool) -> LoadedModel:
        return await asyncio.to_thread(load_version, self._registry, model, version, self._policy)

    async def hold_candidate(
        self, version: int | None, weight: float, prepare: Prepare | None = None
    ) -> LoadedModel | None:
        """Hold `version` beside the primary as the candidate answering `weight` of
        requests (None: no candidate), loading it first if it is not held yet; returns
        the candidate held, None if there is none. It is loaded, refused and reported as
        a primary is, and must take the primary's features. `prepare` readies a fresh
        load before it answers anything; its error refuses the load as a load error does.
        Under the lock `sync` changes the state under, so neither undoes the other's change.
        """
        async with self._lock:
            state = self.state
            held = state.held(Role.CANDIDATE)
            if version is None:
                self._set(state.with_candidate(None, 0.0))
                return None
            if held is not None and held.version == version:
                self._set(state.with_candidate(held, weight))  # a new step: only the share changes
                return held
            if held is not None:  # another candidate: it stops answering now, not once this one has loaded
                self._set(state.with_candidate(None, 0.0))
            target, primary = state.target, state.primary
            if target is None or primary is None or (target.model, version, Role.CANDIDATE) in self._refused:
                return None
            try:
                loaded = await self._load(target.model, version, True)
                self._check_schema(target, primary, loaded, Role.CANDIDATE)
                if prepare is not None:
                    await prepare(loaded)
            except NonstopError as exc:
                self._fail(self.state, exc, Role.CANDIDATE)
                return None
            self._set(self.state.with_candidate(loaded, weight))
            log.info("holding %s v%d as candidate for %.0f%% of requests", target.model, version, weight * 100)
            return loaded

    def follow(self, follower: Follower) -> None:
        """Run `follower` with the state at every poll, before the sync: the replica's
        one poller follows both the registry and the rollout."""
        self._follower = follower

    def config_refused(self, message: str | None) -> None:
        """A user_config this replica would not apply (None: the last one was applied):
        the state says so as its last error, so every answer and `nonstop status` show it."""
        state = self.state
        if message is not None:
            self._set(state.with_error(LoadFailure(version=None, reason=ConfigError.reason, message=message, at=datetime.now(UTC))))
        elif state.last_error is not None and state.last_error.reason == ConfigError.reason:
            self._set(replace(state, last_error=None))

    @property
    def ready(self) -> bool:
        return self.state.ready

    @property
    def polling(self) -> bool:
        """False once the poller ended, which only a bug or a close can do."""
        return self._poller is not None and not self._poller.done()

    def _set(self, state: ServingState) -> None:
        if state is not self.state:
            self.state = state
            self._on_change()

    def _resolve(self, target: ModelTarget) -> int:
        if target.version is not None:
            self._registry.manifest(target.model, target.version)  # VersionNotFound until it is published
            return target.version
        alias = target.followed_alias or ""
        version = self._registry.resolve(target.model, alias)
        if version is None:
            raise AliasNotFound(f"model {target.model!r} has no alias {alias!r} to follow (yet)")
        return version

    @staticmethod
    def _check_schema(target: ModelTarget, current: LoadedModel | None, loaded: LoadedModel, role: Role) -> None:
        """Schema continuity is a rule between versions of one model. A candidate takes
        the primary's features whatever the target allows: both predict the same rows."""
        if current is None or current.manifest.same_schema(loaded.manifest):
            return
        if role is Role.PRIMARY and target.allow_schema_change:
            return
        ours = set(current.manifest.feature_names)
        theirs = set(loaded.manifest.feature_names)
        advice = "a candidate cannot change them"
        if role is Role.PRIMARY:
            advice = "set allow_schema_change in user_config to serve it"
        raise SchemaMismatchError(
            target.model,
            loaded.version,
            f"features differ from served v{current.version} "
            f"(missing: {sorted(ours - theirs) or 'none'}, new: {sorted(theirs - ours) or 'none'}); {advice}",
        )

    def _fail(self, state: ServingState, exc: NonstopError, role: Role) -> None:
        """Record why. Only a published version that was refused for what it holds is
        remembered (and not loaded again in that role: a primary may be allowed a schema
        change a candidate is not); a missing alias or version, a registry error, a
        refusal that says it is `retried` (storage, a lost loader), is tried at the next poll. A failure that repeats at every poll (a
        forged alias, say) is reported once, with the time it was first seen."""
        version = exc.version if isinstance(exc, ModelLoadError) else None
        if version is not None and isinstance(exc, ModelLoadError) and not exc.retried:
            self._refused.add((exc.model, version, role))
        if state.last_error is not None and state.last_error.message == exc.message:
            self._set(state)
            return
        failure = LoadFailure(version=version, reason=exc.reason, message=exc.message, at=datetime.now(UTC))
        log.warning("%s load refused: %s", role, exc.message)
        self._set(state.with_error(failure))

    def _restart_poller(self, target: ModelTarget) -> None:
        """Every target is polled: an alias for where it points, a pinned version until
        it is published and loaded (after that a poll costs nothing)."""
        if self._poller is not None:
            self._poller.cancel()
        self._poller = asyncio.create_task(self._poll(target.poll_interval_s))

    async def _follow_now(self) -> None:
        if self._follower is not None:
            try:
                await self._follower(self.state)
            except Exception:  # the poller must outlive any surprise; the next tick retries
                log.exception("following the rollout failed")

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._follow_now()
            try:
                await self.sync()
            except Exception:  # the poller must outlive any surprise; the next tick retries
                log.exception("poll failed")

    async def close(self) -> None:
        for task in (self._poller, self._pending):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
