"""Canary by weight and shadow scoring, inside each replica, driven by the ledger.

Every replica follows its alias's rollout in the promotion ledger (where `nonstop rollout`
and the controller write it), at each tick of its holder's poller and once as it starts
(so a replacement replica holds the step's candidate before its first request): it has the holder
(serve_app/replica/holder.py) load the candidate beside the primary (role `candidate` in
the served state, with the step's share as the state's `weight`), answers that share of
requests with it, and tallies evidence per version for the controller. The choice is
made per request, in the replica, so it needs no mesh and works the same locally and on KubeRay. A client that
sends a request key (`x-request-key`, serve_app/edge.py) always gets the same version for the same key at a
given share, and a key that reached the candidate stays on it as the share grows.
It reads the ledger only through its verified view (nonstop/ledger.py `verified`): a
ledger that does not verify blocks the rollout here, failing closed: the candidate is
dropped, the primary answers everything, and `blocked` says why.

Comparisons are made on the same rows, off the response path: a request the candidate
answered is also predicted by the primary after the answer is sent; in shadow mode (a
share of 0) the candidate predicts what the primary answered. Off-path work is bounded
(`MAX_OFF_PATH` at a time, the rest skipped and counted): it can cost the client a share
of CPU, never a wait on it and never a failed request. Outside a rollout nothing is
tallied and no request pays for any of this.

Inputs are the traffic's, whichever version answers: each request's rows are tallied on
both versions' training profiles, so input drift is judged on the whole window, never on
the candidate's share alone. That share is a set of request keys, and a key's requests
look alike (one customer, one store): at a small share it is a biased sample, which
looked drifted against a good candidate's training data when the traffic was not.
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

from nonstop.errors import LedgerTampered, NonstopError
from nonstop.ledger import Ledger
from nonstop.loading import LoadedModel
from nonstop.profile import read_profile
from nonstop.registry import Registry
from serve_app.replica.holder import Prepare
from serve_app.replica.state import Role, ServingState
from serve_app.rollout.evidence import InputBins, VersionStats, output_edges
from serve_app.rollout.policy import RolloutState, replay

log = logging.getLogger("nonstop.canary")
MAX_OFF_PATH = 4
REPORT_INTERVAL_S = 1.0

Reporter = Callable[[str, str, dict[int, dict[str, Any]]], None]  # model, alias, tallies
# (version or None, weight, prepare) -> the candidate held: ModelHolder.hold_candidate
HoldCandidate = Callable[[int | None, float, Prepare | None], Awaitable[LoadedModel | None]]
Scorer = Callable[[LoadedModel, np.ndarray], Awaitable[list[Any]]]
Scored = Callable[[LoadedModel, list[Any]], None]  # told of each off-path prediction (capture's shadow role)


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
    versions: tuple[LoadedModel, LoadedModel]  # primary and candidate: each tallies the request's inputs


class Canary:
    def __init__(self, registry: Registry, hold: HoldCandidate, report: Reporter, score: Scorer = _inline) -> None:
        """`hold` is the holder's: it loads, refuses and reports the candidate. `score`
        predicts off the response path; the deployment passes its batcher, so a
        comparison joins the next batch of its version instead of a thread of its own
        (threads would fight the event loop for the GIL)."""
        self._registry = registry
        self._score = score
        self._hold = hold
        self._report = report
        self._rollout: RolloutState | None = None
        self._followed: tuple[str, str] | None = None
        self._ledger: Ledger | None = None
        self.blocked: str | None = None  # why the rollout followed is blocked (a ledger that does not verify)
        self._stats: dict[int, VersionStats] = {}
        self._bins: dict[int, InputBins | None] = {}
        self._edges: dict[int, list[float] | None] = {}
        self._off_path = 0
        self.skipped = 0
        self._last_report = time.monotonic()

    # --- on the request path ----------------------------------------------------------------

    def assign(self, state: ServingState, key: str | None) -> Assignment | None:
        """None when no rollout runs here (the primary answers, nothing is tallied)."""
        primary, candidate = state.primary, state.held(Role.CANDIDATE)
        if primary is None or candidate is None:
            return None
        point = share_of(key, candidate.version) if key else random.random()
        if point < state.weight:
            return Assignment(answer=candidate, compare=primary, by_candidate=True, versions=(primary, candidate))
        compare = candidate if state.weight == 0 else None
        return Assignment(answer=primary, compare=compare, by_candidate=False, versions=(primary, candidate))

    def answered(
        self, assignment: Assignment, matrix: np.ndarray, predictions: list[Any], seconds: float, scored: Scored | None = None
    ) -> None:
        """Tally the answer, and start its comparison off the response path; `scored` is
        given the comparison's predictions once made."""
        stats = self._stats_for(assignment.answer)
        stats.answered(seconds, len(matrix))
        for version in assignment.versions:
            self._saw(version, matrix)
        if assignment.compare is None:
            return
        if self._off_path >= MAX_OFF_PATH:
            self.skipped += 1
            return
        self._off_path += 1
        asyncio.get_running_loop().create_task(self._compare(assignment, matrix, predictions, scored))

    def failed(self, loaded: LoadedModel, seconds: float) -> None:
        self._stats_for(loaded).answered(seconds, 0, ok=False)

    async def _compare(self, assignment: Assignment, matrix: np.ndarray, answered: list[Any], scored: Scored | None = None) -> None:
        """The candidate's tally gets the pairs: its rows against the primary's, whichever answered."""
        other = assignment.compare
        try:
            if other is None:
                return
            started = time.perf_counter()
            theirs = await self._score(other, matrix)
            if scored is not None:
                scored(other, theirs)
            edges = self._edges.get(assignment.versions[0].version)  # both sides on the primary's bins
            if assignment.by_candidate:
                self._stats_for(assignment.answer).paired(answered, theirs, edges)
                return
            shadow = self._stats_for(other)  # shadow mode: the candidate scored what the primary answered
            shadow.answered(time.perf_counter() - started, len(matrix))
            shadow.paired(theirs, answered, edges)
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
        if self._followed != (target.model, alias) or self._ledger is None:
            self._followed, self._rollout = (target.model, alias), RolloutState(alias=alias)
            self._stats = {}
            self._ledger = self._registry.ledger(target.model)
        try:
            entries = await asyncio.to_thread(self._ledger.since_seq, self._rollout.last_seq)
        except LedgerTampered as exc:
            # fail closed: nothing the ledger says is acted on, the primary answers everything
            self.blocked = f"rollout blocked: {exc.message}"
            log.warning(self.blocked)
            await self._drop(state)
            return
        except NonstopError as exc:
            log.warning("cannot read the ledger, keeping to what it said last: %s", exc.message)
            return
        self.blocked = None  # verified (again, if it was repaired): follow it from where it was
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
                await self._hold(held.version, 1.0, None)
                return
        if wanted is None or primary is None:
            await self._drop(state)
            return

        await self._hold(wanted, rollout.weight, lambda loaded: self._baselines(loaded, primary))

    async def _baselines(self, candidate: LoadedModel, primary: LoadedModel) -> None:
        """What the tallies are judged against, read before the candidate answers anything."""
        self._bins[candidate.version] = await self._input_bins(candidate)
        self._edges[candidate.version] = output_edges(candidate.manifest.samples.outputs)
        if primary.version not in self._bins:
            self._bins[primary.version] = await self._input_bins(primary)
            self._edges[primary.version] = output_edges(primary.manifest.samples.outputs)

    async def _input_bins(self, loaded: LoadedModel) -> InputBins | None:
        """None for a version published without a profile: no drift check for it."""
        manifest = loaded.manifest
        profile = await asyncio.to_thread(read_profile, self._registry, manifest.model, manifest.version)
        return InputBins(profile, manifest.feature_names) if profile is not None else None

    async def _drop(self, state: ServingState) -> None:
        if state.held(Role.CANDIDATE) is not None:
            await self._hold(None, 0.0, None)

    async def _flush(self, model: str, alias: str) -> None:
        now = time.monotonic()
        if not self._stats or now - self._last_report < REPORT_INTERVAL_S:
            return
        tallies, self._stats, self._last_report = self._stats, {}, now
        try:
            dumped = {v: s.settle().model_dump() for v, s in tallies.items() if not s.empty}
            await asyncio.to_thread(self._report, model, alias, dumped)
        except Exception as exc:  # no controller reachable: the tallies are lost, serving goes on
            log.warning("cannot report to the rollout controller: %r", exc)

    # --- tallies --------------------------------------------------------------------------------

    def _stats_for(self, loaded: LoadedModel) -> VersionStats:
        return self._stats.setdefault(loaded.version, VersionStats())

    def _saw(self, loaded: LoadedModel, matrix: np.ndarray) -> None:
        bins = self._bins.get(loaded.version)
        if bins is not None:
            self._stats_for(loaded).saw(matrix, bins)
