"""Canary by weight and shadow scoring, inside each replica, driven by the ledger.

Every replica follows its alias's rollout in the promotion ledger (where `nonstop rollout`
and the controller write it): it loads the candidate beside the primary (role
`candidate` in the served state), answers the step's share of requests with it, and
tallies evidence per version for the controller. The choice is made per request, in the
replica, so it needs no mesh and works the same locally and on KubeRay. A client that
sends a request key (`x-request-key`, serve_app/edge.py) always gets the same version for the same key at a
given share, and a key that reached the candidate stays on it as the share grows.

Comparisons are made on the same rows, off the response path: a request the candidate
answered is also predicted by the primary after the answer is sent; in shadow mode (a
share of 0) the candidate predicts what the primary answered. Off-path work is bounded
(`MAX_OFF_PATH` at a time, the rest skipped and counted): it can cost the client a share
of CPU, never a wait on it and never a failed request. Outside a rollout nothing is
tallied and no request pays for any of this.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nonstop.errors import NonstopError, SchemaMismatchError
from nonstop.loading import LoadedModel, TrustPolicy, load_version
from nonstop.profile import read_profile
from nonstop.registry import Registry
from serve_app.replica.state import Role, ServingState
from serve_app.rollout.evidence import InputBins, VersionStats, output_edges
from serve_app.rollout.policy import RolloutState, replay

log = logging.getLogger("nonstop.canary")
MAX_OFF_PATH = 4
REPORT_INTERVAL_S = 1.0

Reporter = Callable[[str, str, dict[int, dict[str, Any]]], None]  # model, alias, tallies
Holder = Callable[[LoadedModel | None, Role], Awaitable[None]]
Scorer = Callable[[LoadedModel, np.ndarray], Awaitable[list[Any]]]


async def _inline(loaded: LoadedModel, matrix: np.ndarray) -> list[Any]:
    return loaded.predict(matrix)


def share_of(key: str, candidate: int) -> float:
    """Where a request key falls in [0, 1) for this candidate: stable across requests,
    replicas and restarts, independent between candidates."""
    digest = hashlib.blake2b(f"{candidate}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Assignment:
    """Which version answers one request, and which one predicts it too, off the path."""

    answer: LoadedModel
    compare: LoadedModel | None
    by_candidate: bool


class Canary:
    def __init__(
        self,
        registry: Registry,
        policy: TrustPolicy,
        hold: Holder,
        report: Reporter,
        score: Scorer = _inline,
        load: Callable[[str, int], Awaitable[LoadedModel]] | None = None,
    ) -> None:
        """`score` predicts off the response path; the deployment passes its batcher, so
        a comparison joins the next batch of its version instead of a thread of its own
        (threads would fight the event loop for the GIL)."""
        self._registry = registry
        self._score = score
        self._load_version = load  # the deployment's loader (out of process); None: in a thread here
        self._policy = policy
        self._hold = hold
        self._report = report
        self._rollout: RolloutState | None = None
        self._followed: tuple[str, str] | None = None
        self.weight = 0.0
        self._tallying = False
        self._stats: dict[int, VersionStats] = {}
        self._bins: dict[int, InputBins | None] = {}
        self._edges: dict[int, list[float] | None] = {}
        self._off_path = 0
        self.skipped = 0
        self.last_error: str | None = None
        self._refused: set[int] = set()
        self._last_report = time.monotonic()

    # --- on the request path ----------------------------------------------------------------

    def assign(self, state: ServingState, key: str | None) -> Assignment | None:
        """None when no rollout runs here (the primary answers, nothing is tallied)."""
        primary, candidate = state.primary, state.held(Role.CANDIDATE)
        if primary is None or candidate is None or not self._tallying:
            return None
        point = share_of(key, candidate.version) if key else random.random()
        if point < self.weight:
            return Assignment(answer=candidate, compare=primary, by_candidate=True)
        return Assignment(answer=primary, compare=candidate if self.weight == 0 else None, by_candidate=False)

    def answered(self, assignment: Assignment, matrix: np.ndarray, predictions: list[Any], seconds: float) -> None:
        """Tally the answer, and start its comparison off the response path."""
        stats = self._stats_for(assignment.answer)
        stats.answered(seconds, len(matrix))
        stats.predicted(predictions, self._edges.get(assignment.answer.version))
        self._saw(assignment.answer, matrix)
        if assignment.compare is None:
            return
        if self._off_path >= MAX_OFF_PATH:
            self.skipped += 1
            return
        self._off_path += 1
        asyncio.get_running_loop().create_task(self._compare(assignment, matrix, predictions))

    def failed(self, loaded: LoadedModel, seconds: float) -> None:
        self._stats_for(loaded).answered(seconds, 0, ok=False)

    async def _compare(self, assignment: Assignment, matrix: np.ndarray, answered: list[Any]) -> None:
        """The candidate's tally gets the pairs: its rows against the primary's, whichever answered."""
        other = assignment.compare
        try:
            if other is None:
                return
            started = time.perf_counter()
            theirs = await self._score(other, matrix)
            if assignment.by_candidate:
                self._stats_for(assignment.answer).paired(answered, theirs)
                return
            shadow = self._stats_for(other)  # shadow mode: the candidate scored what the primary answered
            shadow.answered(time.perf_counter() - started, len(matrix))
            shadow.predicted(theirs, self._edges.get(other.version))
            self._saw(other, matrix)
            shadow.paired(theirs, answered)
        except Exception as exc:  # off-path work never reaches the client; it counts against the version
            log.warning("off-path scoring by v%s failed: %r", other.version if other else None, exc)
            if other is not None:
                self._stats_for(other).answered(0.0, 0, ok=False)
        finally:
            self._off_path -= 1

    # --- following the ledger -----------------------------------------------------------------

    async def sync(self, state: ServingState) -> None:
        """Follow the rollout of the alias this replica serves; report tallies."""
        target = state.target
        alias = target.followed_alias if target else None
        if target is None or alias is None:
            await self._drop(state)
            return
        if self._followed != (target.model, alias):
            self._followed, self._rollout = (target.model, alias), RolloutState(alias=alias)
            self._stats, self._refused = {}, set()
        try:
            entries = await asyncio.to_thread(self._registry.ledger(target.model).since_seq, self._rollout.last_seq)
        except NonstopError as exc:
            self.last_error = exc.message  # keep doing what the ledger said last
            return
        self._rollout = replay(entries, alias, self._rollout)
        await self._follow(state, self._rollout)
        await self._flush(target.model, alias)

    async def _follow(self, state: ServingState, rollout: RolloutState) -> None:
        held = state.held(Role.CANDIDATE)
        primary = state.primary
        wanted = rollout.candidate if rollout.active else None
        if wanted is None and held is not None and rollout.primary == held.version and primary is not None:
            # promoted: the candidate answers everything until this replica's primary is it
            if primary.version != held.version:
                self.weight = 1.0
                return
        if wanted is None or primary is None:
            await self._drop(state)
            return
        if held is None or held.version != wanted:
            if wanted in self._refused:
                return
            loaded = await self._load(state, wanted)
            if loaded is None:
                return
            await self._hold(loaded, Role.CANDIDATE)
        self.weight = rollout.weight
        self._tallying = True

    async def _load(self, state: ServingState, version: int) -> LoadedModel | None:
        model = state.model or ""
        try:
            loaded = (
                await self._load_version(model, version)
                if self._load_version is not None
                else await asyncio.to_thread(load_version, self._registry, model, version, self._policy)
            )
            primary = state.primary
            if primary is not None and not primary.manifest.same_schema(loaded.manifest):
                raise SchemaMismatchError(model, version, f"a candidate must take the same features as v{primary.version}")
            self._bins[version] = await self._input_bins(loaded)
        except NonstopError as exc:
            self._refused.add(version)
            self.last_error = exc.message
            log.warning("candidate refused: %s", exc.message)
            return None
        self._edges[version] = output_edges(loaded.manifest.samples.outputs)
        if primary is not None and primary.version not in self._bins:
            self._bins[primary.version] = await self._input_bins(primary)
            self._edges[primary.version] = output_edges(primary.manifest.samples.outputs)
        self.last_error = None
        return loaded

    async def _input_bins(self, loaded: LoadedModel) -> InputBins | None:
        """None for a version published without a profile: no drift check for it."""
        manifest = loaded.manifest
        profile = await asyncio.to_thread(read_profile, self._registry, manifest.model, manifest.version)
        return InputBins(profile, manifest.feature_names) if profile is not None else None

    async def _drop(self, state: ServingState) -> None:
        self.weight, self._tallying = 0.0, False
        if state.held(Role.CANDIDATE) is not None:
            await self._hold(None, Role.CANDIDATE)

    async def _flush(self, model: str, alias: str) -> None:
        now = time.monotonic()
        if not self._stats or now - self._last_report < REPORT_INTERVAL_S:
            return
        tallies, self._stats, self._last_report = self._stats, {}, now
        try:
            dumped = {v: s.settle().model_dump() for v, s in tallies.items() if not s.empty}
            await asyncio.to_thread(self._report, model, alias, dumped)
        except Exception as exc:  # no controller reachable: the tallies are lost, serving goes on
            self.last_error = f"cannot report to the rollout controller: {exc!r}"
            log.warning(self.last_error)

    # --- tallies --------------------------------------------------------------------------------

    def _stats_for(self, loaded: LoadedModel) -> VersionStats:
        return self._stats.setdefault(loaded.version, VersionStats())

    def _saw(self, loaded: LoadedModel, matrix: np.ndarray) -> None:
        bins = self._bins.get(loaded.version)
        if bins is not None:
            self._stats_for(loaded).saw(matrix, bins)
