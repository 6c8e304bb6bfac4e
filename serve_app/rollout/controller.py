"""The rollout controller: a detached Ray actor beside the app that judges and moves rollouts.

Replicas send it what they tallied per version every second (`report`); it adds the
tallies up over the current evaluation window, turns them into evidence, asks the policy,
and writes what it decided to the ledger (advance, hold, roll back, promote), which the
replicas follow. It keeps nothing a restart would lose but the current window's tallies:
the rollout itself (candidate, step, policy, pause) is replayed from the ledger, so a
restarted controller (or one on another node, on KubeRay) carries on. One controller per
model and alias, named after them, created by whichever replica or CLI asks first.
It reads the verified ledger only: one that does not verify blocks the rollout (no
decision is made, `status()["blocked"]` says why) until it verifies again.

A policy with an outcome check (serve_app/rollout/outcome_check.py) also reads the
captures and outcomes (nonstop/capture.py layout) at the destination the replicas report
with their tallies, every LABELS_EVERY_S, over the rollout so far; what it read goes into
the evidence, and so into the ledger with each decision.

It is also the one writer of the serve config's canary block (`apply_config`): every
replica hands it the block it was configured with, and the actor applies them one at a
time, between its own looks, so the block starts one rollout however many replicas (or
restarts) carry it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import ray
from pydantic import SecretStr
from ray._common.constants import HEAD_NODE_RESOURCE_NAME

from nonstop.capture import CaptureConfig, filesystem, root_of
from nonstop.errors import LedgerTampered, NonstopError
from nonstop.outcomes import labelled
from nonstop.profile import DataProfile, read_profile
from nonstop.quality import labelled_scores
from nonstop.registry import Registry
from serve_app.rollout.evidence import Evidence, VersionStats, summarize
from serve_app.rollout.outcome_check import LabelledEvidence
from serve_app.rollout.moves import CONTROLLER_ACTOR, Rollouts
from serve_app.rollout.policy import CanaryConfig, RolloutState, decide, replay
from serve_app.rollout.rollout_metrics import RolloutMetrics

log = logging.getLogger("nonstop.controller")
NAMESPACE = "nonstop"
TICK_S = 0.5
LABELS_EVERY_S = 5.0  # reading the captures is I/O: not on every tick


def controller_name(model: str, alias: str) -> str:
    return f"nonstop-rollout-{model}-{alias}"


class Controller:
    """The controller's logic without Ray, so it can be driven step by step."""

    def __init__(self, registry: Registry, model: str, alias: str, metrics: RolloutMetrics | None = None) -> None:
        self._rollouts = Rollouts(registry, model, alias)
        self._metrics = metrics
        self._registry = registry
        self._model = model
        self._state = RolloutState(alias=alias)
        self._ledger = registry.ledger(model)
        self._window: dict[int, VersionStats] = {}  # since the current step (or hold) began
        self._window_key: tuple[int | None, float, datetime | None] | None = None
        self._rollout: dict[int, VersionStats] = {}  # since the rollout began: what quality is judged on
        self._rollout_key: tuple[int | None, datetime | None] | None = None
        self._profiles: dict[int, DataProfile | None] = {}
        self._lock = threading.Lock()  # reports arrive on the actor's loop, ticks run in a thread
        self.last_decision: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.blocked: str | None = None  # why the rollout is blocked: a ledger that does not verify
        self.capture_root = root_of(registry.uri, CaptureConfig())  # until a replica says where its captures go
        self._labelled: LabelledEvidence | None = None
        self._labelled_at: tuple[float, tuple[int | None, int | None, datetime | None]] | None = None

    def report(self, stats: dict[int, dict[str, Any]], capture_root: str | None = None) -> None:
        tallies = {int(v): VersionStats.model_validate(t) for v, t in stats.items()}
        with self._lock:
            if capture_root is not None:
                self.capture_root = capture_root
            for version, tally in tallies.items():
                self._window.setdefault(version, VersionStats()).merge(tally)
                self._rollout.setdefault(version, VersionStats()).merge(tally)

    def refresh(self) -> RolloutState:
        """Fold in what the verified ledger gained; a new step (or hold) starts a new
        window. A ledger that does not verify blocks the rollout (`blocked` says why):
        nothing more is folded in or decided until it verifies again."""
        try:
            entries = self._ledger.since_seq(self._state.last_seq)
        except LedgerTampered as exc:
            if self.blocked != exc.message:
                log.warning("rollout of %s blocked: %s", self._model, exc.message)
            self.blocked = exc.message
            return self._state
        self.blocked = None
        self._state = replay(entries, self._state.alias, self._state)
        key = (self._state.candidate, self._state.weight, self._state.step_started)
        rollout_key = (self._state.candidate, self._state.started)
        with self._lock:
            if key != self._window_key:
                self._window_key, self._window = key, {}
            if rollout_key != self._rollout_key:
                self._rollout_key, self._rollout = rollout_key, {}
        return self._state

    def window_requests(self) -> int:
        """The candidate's requests since the current step began (advancing needs enough)."""
        with self._lock:
            tally = self._window.get(self._state.candidate or 0)
            return tally.requests if tally else 0

    def evidence(self) -> Evidence | None:
        """Over the whole rollout so far: a step change must not throw away what the
        earlier steps showed (a fresh, small sample would look drifted by chance)."""
        state = self._state
        if not state.active or state.candidate is None or state.primary is None:
            return None
        numeric = not self._registry.manifest(self._model, state.candidate).classes
        with self._lock:
            primary = self._rollout.get(state.primary, VersionStats()).model_copy(deep=True)
            candidate = self._rollout.get(state.candidate, VersionStats()).model_copy(deep=True)
        evidence = summarize(
            (state.primary, primary, self._profile(state.primary)),
            (state.candidate, candidate, self._profile(state.candidate)),
            numeric_outputs=numeric,
        )
        if state.policy is None or state.policy.outcomes is None:
            return evidence
        return evidence.model_copy(update={"labelled": self.labelled()})

    def labelled(self) -> LabelledEvidence:
        """Both versions' labelled rows since the rollout began, read at most every
        LABELS_EVERY_S (and at once for a new rollout). A store out of reach gives no new
        labels: the step holds, and times out as configured."""
        state = self._state
        key = (state.primary, state.candidate, state.started)
        now = time.monotonic()
        last = self._labelled_at
        if self._labelled is not None and last is not None and last[1] == key and now - last[0] < LABELS_EVERY_S:
            return self._labelled
        if last is None or last[1] != key:
            self._labelled = LabelledEvidence(primary=None, candidate=None)
        self._labelled_at = (now, key)
        try:
            task = self._registry.manifest(self._model, state.candidate or 0).task
            fs, path = filesystem(self.capture_root)
            frame = labelled(fs, path, self._model, state.started).frame
        except Exception as exc:  # whatever the store does, the controller goes on deciding
            log.warning("labelled rows of %s not read: %r", self._model, exc)
            self.last_error = f"labelled rows not read: {exc!r}"
            return self._labelled or LabelledEvidence(primary=None, candidate=None)
        scores = labelled_scores(frame, task, (state.primary or 0, state.candidate or 0))
        self._labelled = LabelledEvidence(primary=scores.get(state.primary or 0), candidate=scores.get(state.candidate or 0))
        return self._labelled

    def tick(self, now: datetime | None = None) -> str | None:
        """One look: judge the window and act. Returns what was done, if anything."""
        state = self.refresh()
        if self.blocked is not None:
            return None  # fail closed: no decision on a ledger nobody vouches for
        evidence = self.evidence()
        if self._metrics is not None:
            self._metrics.observed(state.candidate, state.weight, evidence)
        if evidence is None or state.policy is None or state.step_started is None or not state.policy.automatic:
            return None  # a manual rollout: judged and exported, moved by `nonstop rollout` only
        now = now or datetime.now(UTC)
        window_done = (now - state.step_started).total_seconds() >= state.policy.window_s
        entered = state.step_entered or state.step_started
        decision = decide(
            state.policy, evidence, window_done, self.window_requests(), shadowing=state.weight == 0,
            step_age_s=(now - entered).total_seconds(),
        )  # fmt: skip
        snapshot = evidence.model_dump(mode="json")
        if decision.verdict == "rollback":
            done = self._rollouts.rollback(CONTROLLER_ACTOR, decision.reason, snapshot)
        elif state.paused or decision.verdict == "hold" and not window_done:
            return None
        elif decision.verdict == "hold":
            self._rollouts.hold(CONTROLLER_ACTOR, decision.reason, snapshot)
            done = f"held: {decision.reason}"
        else:
            done = self._rollouts.advance(CONTROLLER_ACTOR, decision.reason, snapshot)
        self.last_decision = {"at": now.isoformat(), "verdict": decision.verdict, "reasons": decision.reasons, "done": done}
        if self._metrics is not None:
            self._metrics.decided(decision.verdict)
        log.info("rollout of %s v%s: %s", self._model, state.candidate, done)
        self.refresh()
        return done

    def status(self) -> dict[str, Any]:
        state = self._state
        evidence = self.evidence()
        return {
            "alias": state.alias,
            "active": state.active,
            "blocked": self.blocked,
            "primary": state.primary,
            "candidate": state.candidate,
            "weight": state.weight,
            "step": state.step,
            "paused": state.paused,
            "step_started": state.step_started.isoformat() if state.step_started else None,
            "outcome": state.outcome,
            "policy": state.policy.model_dump(mode="json") if state.policy else None,
            "evidence": evidence.model_dump(mode="json") if evidence else None,
            "last_decision": self.last_decision,
            "last_error": self.last_error,
        }

    def _profile(self, version: int) -> DataProfile | None:
        if version not in self._profiles:
            self._profiles[version] = read_profile(self._registry, self._model, version)
        return self._profiles[version]


@ray.remote(num_cpus=0, max_restarts=-1)
class RolloutController:
    """The Ray face of `Controller`: its loop starts with the first call after (re)start."""

    def __init__(self, registry_uri: str, signing_key: SecretStr | None, model: str, alias: str) -> None:
        registry = Registry(registry_uri, signing_key=signing_key)
        self._controller = Controller(registry, model, alias, RolloutMetrics(model, alias))
        self._rollouts = Rollouts(registry, model, alias)
        self._loop: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()  # a config applied and a tick never write the ledger at once

    async def report(self, stats: dict[int, dict[str, Any]], capture_root: str | None = None) -> None:
        self._ensure_loop()
        self._controller.report(stats, capture_root)

    async def status(self) -> dict[str, Any]:
        self._ensure_loop()
        await asyncio.to_thread(self._controller.refresh)
        return self._controller.status()

    async def apply_config(self, canary: dict[str, Any] | None) -> dict[str, str | None]:
        """A replica's canary block (serve_app/rollout/moves.py `apply_config`); a refusal is
        returned, not raised, so the replica can show it as it is."""
        self._ensure_loop()
        spec = CanaryConfig.model_validate(canary) if canary is not None else None
        async with self._writing:
            try:
                return {"done": await asyncio.to_thread(self._rollouts.apply_config, spec), "refused": None}
            except NonstopError as exc:
                return {"done": None, "refused": exc.message}

    def _ensure_loop(self) -> None:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                async with self._writing:
                    await asyncio.to_thread(self._controller.tick)
                self._controller.last_error = None
            except NonstopError as exc:  # an unreadable ledger or registry: say so, try again
                self._controller.last_error = exc.message
                log.warning("rollout controller: %s", exc.message)
            except Exception as exc:  # the loop must outlive any surprise; the next tick retries
                self._controller.last_error = repr(exc)
                log.exception("rollout controller tick failed")
            await asyncio.sleep(TICK_S)


def controller(registry_uri: str, signing_key: SecretStr | None, model: str, alias: str) -> Any:
    """The model's controller, created (detached, so it outlives replicas and the CLI) if
    none, on the head node: a worker node may go with its replicas (status_board.py)."""
    return RolloutController.options(
        name=controller_name(model, alias), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        resources={HEAD_NODE_RESOURCE_NAME: 0.001},
    ).remote(registry_uri, signing_key, model, alias)


class ControllerLink:
    """A replica's line to its alias's controller: tallies sent without waiting for them."""

    def __init__(self, registry_uri: str, signing_key: SecretStr | None, capture_root: Callable[[], str] | None = None) -> None:
        self._registry_uri = registry_uri
        self._signing_key = signing_key
        self._capture_root = capture_root  # where this replica's captures go: the outcome check reads them
        self._handles: dict[tuple[str, str], Any] = {}

    def send(self, model: str, alias: str, tallies: dict[int, dict[str, Any]]) -> None:
        root = self._capture_root() if self._capture_root is not None else None
        self._handle(model, alias).report.remote(tallies, root)

    async def apply_config(self, model: str, alias: str, canary: dict[str, Any] | None) -> dict[str, str | None]:
        return await self._handle(model, alias).apply_config.remote(canary)

    def _handle(self, model: str, alias: str) -> Any:
        handle = self._handles.get((model, alias))
        if handle is None:
            handle = self._handles[(model, alias)] = controller(self._registry_uri, self._signing_key, model, alias)
        return handle
