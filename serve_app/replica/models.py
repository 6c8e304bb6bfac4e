"""Many models in one replica: a holder and a canary per model, held within a budget.

Each model a replica holds has what one model has always had: its own `ModelHolder` (the
one owner of its loaded versions, with its own poller following its alias or pinned
version) and its own `Canary` (following its own rollout in its own ledger). Nothing is
shared between models but the replica's batcher and loader, so one model's refused
version, rollout or failed load never changes another model's state.

Which models are served comes from the config (serve_app/config.py): the single-model
`ModelTarget`, loaded before `reconfigure` returns as it always was; or `ManyModels`, a
list of targets and/or a name pattern over the registry, each loaded on its first request
on this replica. A request for a model served but not held waits for its load at most
`budget.load_wait_s` (then `ModelLoadPending`: 503 with Retry-After, the load going on);
one load per model at a time, however many requests wait for it, and at most
`budget.max_concurrent_loads` different models loading at once. A name not served is
`UnknownModel` (404) and never a load attempt: a selector's names come from the registry
list read every `select.refresh_s`, not from the request.

Held within `budget` (a count and/or estimated bytes): past it, the least recently used
model is evicted (its holder closed, its poller stopped); requests already bound to its
versions finish on them. The most recently used model is never evicted by the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import math
import pickle
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from nonstop.errors import ConfigError, ModelLoadPending, NonstopError, UnknownModel, clip
from nonstop.loading import LoadedModel
from serve_app.config import Budget, ManyModels, ModelTarget, ServedModels
from serve_app.replica.holder import ModelHolder
from serve_app.replica.state import LoadFailure, ModelStatus, ReplicaStatus, ServingState
from serve_app.rollout.canary import Assignment, Canary, Scored

log = logging.getLogger("nonstop.models")
Make = Callable[[], tuple[ModelHolder, Canary]]  # a holder and its canary, the canary following
ListModels = Callable[[], list[str]]  # the registry's model names (Registry.models)
Sizer = Callable[[LoadedModel], int]
UNBOUNDED = Budget()


def estimate_bytes(loaded: LoadedModel) -> int:
    """A loaded version's memory, estimated by its estimator's pickled size: for
    scikit-learn's numpy-backed estimators the arrays dominate, and pickle writes them
    whole. It is the replica's own verified object being measured, never parsed."""
    return len(pickle.dumps(loaded.estimator, protocol=pickle.HIGHEST_PROTOCOL))


@dataclass
class _Held:
    holder: ModelHolder
    canary: Canary
    target: ModelTarget


@dataclass
class _Tally:
    hits: int = 0
    loads: int = 0
    evictions: int = 0
    load_seconds: float | None = None


class ModelSet:
    """The replica's models: implements the data plane's `ModelSource`."""

    def __init__(self, make: Make, list_models: ListModels, on_change: Callable[[], None] = lambda: None, sizer: Sizer = estimate_bytes) -> None:
        self.config: ServedModels | None = None
        self._make = make
        self._list = list_models
        self._on_change = on_change
        self._sizer = sizer
        self._targets: dict[str, ModelTarget] = {}
        self._selected: frozenset[str] = frozenset()
        self._held: OrderedDict[str, _Held] = OrderedDict()  # least recently used first
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(UNBOUNDED.max_concurrent_loads)
        self._sizes: dict[tuple[str, int], int] = {}
        self._tally: dict[str, _Tally] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._refused: LoadFailure | None = None

    # --- configuration ----------------------------------------------------------------------

    async def configure(self, config: ServedModels) -> None:
        """Serve what `config` names: models no longer named are dropped, held ones
        retargeted in place (their next poll loads a new version, no request waits), the
        others load when asked for. The single-model form loads its model before returning."""
        before = self.config
        self.config = config
        budget = self.budget
        if before is None or not isinstance(before, ManyModels) or before.budget != budget:
            self._slots = asyncio.Semaphore(budget.max_concurrent_loads)
        if isinstance(config, ManyModels):
            self._targets = config.targets()
            await self._follow_registry(before.select if isinstance(before, ManyModels) else None)
        else:
            self._targets = {config.model: config}
            await self._follow_registry(None)
        for model, held in list(self._held.items()):
            target = self.target_of(model)
            if target is None:
                await self._evict(model, counted=False)
            elif target != held.target or isinstance(config, ModelTarget):  # one model: as it always was
                held.target = target
                await held.holder.configure(target)
        if isinstance(config, ModelTarget) and config.model not in self._held:
            await self._load(config.model, config)
        await self._enforce()
        self._on_change()

    @property
    def budget(self) -> Budget:
        return self.config.budget if isinstance(self.config, ManyModels) else UNBOUNDED

    def target_of(self, model: str) -> ModelTarget | None:
        """What `model` follows, None if it is not served."""
        target = self._targets.get(model)
        if target is not None:
            return target
        config = self.config
        if isinstance(config, ManyModels) and config.select is not None and model in self._selected:
            return config.select.target(model)
        return None

    def config_refused(self, message: str | None) -> None:
        """A user_config not applied (None: the last one was): every held model says so."""
        self._refused = (
            LoadFailure(version=None, reason=ConfigError.reason, message=message, at=datetime.now(UTC)) if message else None
        )
        for held in self._held.values():
            held.holder.config_refused(message)

    # --- the data plane's ModelSource ---------------------------------------------------------

    def served_models(self) -> list[str]:
        return sorted(set(self._targets) | self._selected)

    def state_of(self, model: str) -> ServingState:
        held = self._held.get(model)
        if held is not None:
            return held.holder.state
        target = self.target_of(model)
        if target is None:
            config = self.config
            serves = repr(config.model) if isinstance(config, ModelTarget) else config.describe() if config else "nothing yet"
            raise UnknownModel(f"unknown model {clip(model)!r}; this server serves {serves}")
        return ServingState(target=target)  # served, not held here: its next request loads it

    async def loaded(self, model: str) -> None:
        """Return once `model` is held here, loading it if it is not (one load per model,
        however many requests ask); `ModelLoadPending` past the budget's wait."""
        if model in self._held:
            self._held.move_to_end(model)
            self._tally_of(model).hits += 1
            return
        target = self.target_of(model)
        if target is None:
            self.state_of(model)  # raises UnknownModel, naming what is served
            return
        task = self._loading.get(model)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(model, target))
            self._loading[model] = task
        wait = self.budget.load_wait_s
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=wait)
        except TimeoutError:
            expected = self._tally_of(model).load_seconds or wait
            raise ModelLoadPending(
                f"model {model!r} is loading on this replica and was not loaded within {wait:g}s; try again shortly",
                retry_after_s=max(1, math.ceil(expected)),
            ) from None
        if model in self._held:
            self._held.move_to_end(model)

    # --- loading and eviction -----------------------------------------------------------------

    async def _load(self, model: str, target: ModelTarget) -> None:
        """Load `model` into a holder of its own, then hold it (and evict past the budget).
        A load that finds nothing servable (no alias yet, a refused version) is held too:
        its poller goes on looking, and its requests are told why (ModelNotReady)."""
        try:
            async with self._slots:
                if self.target_of(model) is None:
                    return  # no longer served: a deploy dropped it while this waited
                holder, canary = self._make()
                started = time.perf_counter()
                try:
                    await holder.configure(target)
                except BaseException:  # a surprise (the loader actor gone): its poller must not outlive it
                    await holder.close()
                    raise
                seconds = time.perf_counter() - started
                current = self.target_of(model)
                if current is None:
                    await holder.close()
                    return
                if current != target:
                    await holder.configure(current)
                if self._refused is not None:
                    holder.config_refused(self._refused.message)
                self._held[model] = _Held(holder, canary, current)
                tally = self._tally_of(model)
                tally.loads += 1
                tally.load_seconds = seconds
                await self._enforce()
        finally:
            self._loading.pop(model, None)
        self._on_change()

    async def tidy(self) -> None:
        """Measure what is held (a rollout's candidate loads beside a primary) and evict
        past the budget; the deployment calls it on its heartbeat."""
        await self._enforce()

    async def _enforce(self) -> None:
        budget = self.budget
        if budget.max_models is None and budget.max_bytes is None:
            return
        await self._measure()
        while self._over(budget):
            newest = next(reversed(self._held), None)
            victim = next((m for m in self._held if m != newest), None)
            if victim is None:
                log.warning("model %s alone is over the budget of %s bytes; it is kept", newest, budget.max_bytes)
                return
            await self._evict(victim)

    def _over(self, budget: Budget) -> bool:
        if budget.max_models is not None and len(self._held) > budget.max_models:
            return True
        return budget.max_bytes is not None and self.held_bytes() > budget.max_bytes

    def held_versions(self) -> frozenset[tuple[str, int]]:
        """Every (model, version) loaded here, whatever its role."""
        return frozenset((v.loaded.manifest.model, v.loaded.version) for h in self._held.values() for v in h.holder.state.versions)

    def held_bytes(self, model: str | None = None) -> int:
        """Estimated bytes of the versions held, of one model or of all."""
        helds = [self._held[model]] if model in self._held else [] if model is not None else list(self._held.values())
        return sum(self._sizes.get((v.loaded.manifest.model, v.loaded.version), 0) for h in helds for v in h.holder.state.versions)

    async def _measure(self) -> None:
        wanted = {(v.loaded.manifest.model, v.loaded.version): v.loaded for h in self._held.values() for v in h.holder.state.versions}
        for key, loaded in wanted.items():
            if key not in self._sizes:
                self._sizes[key] = await asyncio.to_thread(self._sizer, loaded)
        for key in self._sizes.keys() - wanted.keys():
            del self._sizes[key]

    async def _evict(self, model: str, counted: bool = True) -> None:
        held = self._held.pop(model, None)
        if held is None:
            return
        if counted:
            self._tally_of(model).evictions += 1
            log.info("evicted %s (least recently used) to stay within the budget", model)
        await held.holder.close()
        self._on_change()

    def _tally_of(self, model: str) -> _Tally:
        return self._tally.setdefault(model, _Tally())

    # --- following the registry (a selector) --------------------------------------------------

    async def _follow_registry(self, before: Any) -> None:
        config = self.config
        select = config.select if isinstance(config, ManyModels) else None
        if select == before and (select is None or self._refresher is not None):
            return
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        if select is None:
            self._selected = frozenset()
            return
        await self._refresh()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_every(select.refresh_s))

    async def _refresh(self) -> None:
        """The registry's models matching the selector; a registry out of reach keeps the
        last list. A model gone from the list is dropped as a deploy drops one."""
        config = self.config
        if not isinstance(config, ManyModels) or config.select is None:
            return
        try:
            names = await asyncio.to_thread(self._list)
        except NonstopError as exc:
            log.warning("cannot list the registry's models, keeping the last list: %s", exc.message)
            return
        self._selected = frozenset(n for n in names if fnmatch.fnmatchcase(n, config.select.pattern))
        for model in [m for m in self._held if self.target_of(m) is None]:
            await self._evict(model, counted=False)

    async def _refresh_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self._refresh()
            except Exception:  # the refresher must outlive any surprise; the next tick retries
                log.exception("refreshing the registry's model list failed")

    # --- reports -----------------------------------------------------------------------------

    def canary_of(self, model: str) -> Canary | None:
        held = self._held.get(model)
        return held.canary if held is not None else None

    @property
    def polling(self) -> bool:
        """Every held model's poller, and the selector's refresher, still running."""
        refreshing = self._refresher is None or not self._refresher.done()
        return refreshing and all(h.holder.polling for h in self._held.values())

    def status(self, replica_id: str, pid: int, now: datetime) -> ReplicaStatus:
        """One model: its holder's report, as it always was. Many: every held version, and
        a line per model this replica has loaded."""
        config = self.config
        if not isinstance(config, ManyModels):
            held = self._held.get(config.model) if config is not None else None
            state = held.holder.state if held is not None else ServingState(target=config, last_error=self._refused)
            return state.status(replica_id, pid, now)
        versions = [v for h in self._held.values() for v in h.holder.state.status(replica_id, pid, now).versions]
        return ReplicaStatus(
            replica_id=replica_id, pid=pid, model=None, target=config.describe(), versions=versions,
            last_error=self._refused, reported_at=now, models=[self._model_status(m) for m in sorted(self._tally)],
        )  # fmt: skip

    def _model_status(self, model: str) -> ModelStatus:
        tally, held = self._tally[model], self._held.get(model)
        primary = held.holder.state.primary if held is not None else None
        return ModelStatus(
            model=model, held=held is not None, version=primary.version if primary else None, hits=tally.hits,
            loads=tally.loads, evictions=tally.evictions, load_seconds=tally.load_seconds, held_bytes=self.held_bytes(model),
            last_error=held.holder.state.last_error if held is not None else None,
        )  # fmt: skip

    async def close(self) -> None:
        tasks = [t for t in (self._refresher, *self._loading.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for model in list(self._held):
            await self._evict(model, counted=False)


class Canaries:
    """The data plane's rollout for many models: each request's model's own canary."""

    def __init__(self, models: ModelSet) -> None:
        self._models = models

    def assign(self, state: ServingState, key: str | None) -> Assignment | None:
        canary = self._models.canary_of(state.model) if state.model else None
        return canary.assign(state, key) if canary is not None else None

    def answered(
        self, assignment: Assignment, matrix: np.ndarray, predictions: list[Any], seconds: float, scored: Scored | None = None
    ) -> None:
        canary = self._models.canary_of(assignment.answer.manifest.model)
        if canary is not None:  # evicted since: its tallies went with it
            canary.answered(assignment, matrix, predictions, seconds, scored)

    def failed(self, loaded: LoadedModel, seconds: float) -> None:
        canary = self._models.canary_of(loaded.manifest.model)
        if canary is not None:
            canary.failed(loaded, seconds)
