"""Every kind of upgrade, triggered on a running local stack while traffic flows.

One bounded load runs through all scenarios; each scenario first prepares (trains or
publishes its candidate, which costs CPU and is kept out of the measured windows), waits
`settle_s` (its "before"), triggers, waits until the stack reached the expected state
(its "during"), then waits `settle_s` again (its "after"). The tests run these shortened and assert on
the reports; benchmarks/rollout.py runs them in full and draws the timeline.
"""

from __future__ import annotations

import copy
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from nonstop_ops.cluster import lifecycle as local
from nonstop_ops.cluster.serve_config import deployment_config, replica_bounds
from harness.loadgen import BackgroundLoad, Sample
from nonstop.manifest import ManifestDraft
from nonstop.registry import Registry, alias_lineage
from harness.rollout_stats import Event, ScenarioReport, report
from serve_app.replica.state import ReplicaStatus
from serve_app.replica.status_board import read_board
from training.data import read_data

SCENARIOS = ("alias", "pin", "refuse_corrupt", "refuse_schema", "refuse_samples", "code_update", "rollback", "kill")
TITLES = {
    "alias": "a. promote a new version through the alias (poller)",
    "pin": "b. pin a new version by `serve deploy` of an edited config (user_config)",
    "refuse_corrupt": "c1. promote a version whose artifact is corrupt",
    "refuse_schema": "c2. promote a version with other features",
    "refuse_samples": "c3. promote a version whose sample outputs are wrong",
    "code_update": "d. code update that restarts replicas (runtime_env variable)",
    "rollback": "e. roll the alias back",
    "kill": "f. kill -9 of one replica process",
}
MAX_REQUESTS = 5_000_000  # the time bound (max_seconds) is the one that ends a run
Outcome = tuple[float, float, str, list[str]]  # trigger time, done time, expected version, notes
Step = Callable[[], Outcome]
# How often a wait looks again: most conditions ask Serve's controller through the dashboard,
# a call that costs the cluster CPU its replicas share (benchmarks look once a second)
WAIT_POLL_S = 0.25
REFUSALS = {"refuse_corrupt": "integrity", "refuse_schema": "schema_mismatch", "refuse_samples": "sample_mismatch"}


@dataclass
class Stack:
    """A deployed local app, seen through Serve, the status board and the registry."""

    cluster: local.LocalCluster
    registry: Registry
    config: dict[str, Any]
    model: str

    @property
    def predict_url(self) -> str:
        return f"{self.cluster.http_url}/v1/models/{self.model}:predict"

    def sample_body(self) -> dict[str, Any]:
        version = self.registry.resolve(self.model, "production") or self.registry.latest(self.model)
        assert version is not None, "the registry has no version to take samples from"
        return {"instances": self.registry.manifest(self.model, version).samples.inputs[:1]}

    def replicas(self, app: dict[str, Any] | None = None) -> dict[str, tuple[str, int]]:
        """replica id -> (actor id, pid) of the RUNNING replicas, from Serve itself (or
        from `app`, Serve's status of the app, already at hand)."""
        app = local.app_status(self.cluster)["applications"]["nonstop"] if app is None else app
        return {
            r["replica_id"]: (r["actor_id"], r["pid"])
            for d in app["deployments"].values()
            for r in d["replicas"]
            if r["state"] == "RUNNING"
        }

    def settled(self) -> bool:
        """The app RUNNING with as many replicas as its config allows (between the
        autoscaler's bounds): the last deploy is wholly applied. One look at Serve."""
        app = local.app_status(self.cluster)["applications"]["nonstop"]
        fewest, most = replica_bounds(self.config)
        return app["status"] == "RUNNING" and fewest <= len(self.replicas(app)) <= most

    def board(self, live: dict[str, tuple[str, int]] | None = None) -> dict[str, ReplicaStatus]:
        live = self.replicas() if live is None else live
        return {k: v for k, v in read_board().items() if k in live}

    def everywhere(self, holds: Callable[[ReplicaStatus], bool]) -> bool:
        """Serve runs as many replicas as the config asks (not one while another starts),
        each has reported, and `holds` for every report. One look at Serve's replicas (a
        dashboard call that costs the controller CPU the replicas share), one at the board."""
        live = self.replicas()
        board = self.board(live)
        fewest, most = replica_bounds(self.config)
        return len(board) == len(live) and fewest <= len(live) <= most and all(holds(r) for r in board.values())

    def serving_everywhere(self, version: int, model: str | None = None) -> bool:
        return self.everywhere(lambda r: r.serves(model or self.model, version))

    def refusing_everywhere(self, version: int, reason: str) -> bool:
        board = self.board()
        return bool(board) and all(
            r.last_error is not None and (r.last_error.version, r.last_error.reason) == (version, reason) for r in board.values()
        )

    def metadata(self) -> dict[str, Any]:
        return httpx.get(f"{self.cluster.http_url}/v1/models/{self.model}", timeout=10).json()

    def deploy(self, runtime_env: dict[str, Any] | None = None, **user_config: Any) -> None:
        """`serve deploy` of the stack's config with user_config overrides for this deploy.

        A runtime_env change is a code update and stays part of the stack's config, so a
        later model pin does not silently undo it (and restart every replica again).
        """
        if runtime_env is not None:
            self.config = copy.deepcopy(self.config)
            self.config["applications"][0]["runtime_env"] = runtime_env
        config = copy.deepcopy(self.config)
        deployment_config(config)["user_config"].update(user_config)
        local.deploy(self.cluster, config)


def wider_data(data: Path) -> Path:
    """The scenario data with one feature more, beside it: what refuse_schema trains on."""
    wider = data.parent / "rollout-wider.parquet"
    frame, _ = read_data(str(data))
    frame.assign(extra_feature=1.0).to_parquet(wider, index=False)
    return wider


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, every_s: float = WAIT_POLL_S) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(every_s)
    return time.time()


@dataclass
class RolloutResult:
    samples: list[Sample]
    events: list[Event]
    reports: list[ScenarioReport]
    started_at: float
    model_load_s: dict[str, float] = field(default_factory=dict)


class RolloutCheck:
    def __init__(
        self,
        stack: Stack,
        data: Path,
        *,
        settle_s: float = 5.0,
        timeout_s: float = 180.0,
        train: Callable[[Path, bool], int],
        concurrency: int = 8,
        rate: float | None = None,
        max_seconds: float = 1800.0,
        poll_s: float = WAIT_POLL_S,
    ) -> None:
        """`poll_s`: how often a scenario looks whether the replicas got there. Each look
        asks Serve's controller through the dashboard, on the cores the replicas serve on:
        the benchmark looks once a second, so that what it measures is the server's."""
        self.stack = stack
        self.data = data
        self.settle_s = settle_s
        self.timeout_s = timeout_s
        self._train = train
        self.concurrency = concurrency
        self.rate = rate
        self.max_seconds = max_seconds
        self.poll_s = poll_s
        self.events: list[Event] = []
        self._revision = 0

    def run(self, names: tuple[str, ...] = SCENARIOS) -> RolloutResult:
        started = time.time()
        windows: list[tuple[str, float, float, float, str | None, list[str]]] = []
        with BackgroundLoad(
            self.stack.predict_url,
            self.stack.sample_body(),
            concurrency=self.concurrency,
            rate=self.rate,
            max_requests=MAX_REQUESTS,
            max_seconds=self.max_seconds,
        ) as load:
            for name in names:
                go = getattr(self, f"_{name}")()
                time.sleep(self.settle_s)
                trigger, done, expect, notes = go()
                time.sleep(self.settle_s)
                windows.append((name, trigger, done, time.time(), expect, notes))
            samples = load.stop().samples
        reports = []
        for name, trigger, done, end, expect, notes in windows:
            scenario = report(name, TITLES[name], samples, trigger, done, end, self.settle_s, expect)
            scenario.notes = notes
            reports.append(scenario)
        return RolloutResult(samples=samples, events=self.events, reports=reports, started_at=started)

    # --- helpers --------------------------------------------------------------------

    def _trigger(self, scenario: str, action: str, expect: int | None, do: Callable[[], None]) -> float:
        at = time.time()
        do()
        self.events.append(Event(scenario, action, at, str(expect) if expect is not None else None))
        return at

    def _wait(self, condition: Callable[[], bool], what: str) -> float:
        return wait_until(condition, self.timeout_s, what, self.poll_s)

    def _current(self) -> int:
        version = self.stack.registry.resolve(self.stack.model, "production")
        assert version is not None
        return version

    # --- scenarios: each prepares, then returns the step that triggers and waits --------

    def _alias(self) -> Step:
        new = self._train(self.data, False)

        def go() -> Outcome:
            trigger = self._trigger("alias", f"promote v{new}", new, lambda: self.stack.registry.promote(self.stack.model, new))
            done = self._wait(lambda: self.stack.serving_everywhere(new), f"every replica on v{new}")
            return trigger, done, str(new), [f"load time of v{new}: {self.stack.metadata()['load_seconds']:.2f}s"]

        return go

    def _pin(self) -> Step:
        new = self._train(self.data, False)

        def go() -> Outcome:
            trigger = self._trigger("pin", f"serve deploy version: {new}", new, lambda: self.stack.deploy(version=new, alias=None))
            done = self._wait(lambda: self.stack.serving_everywhere(new), f"every replica pinned to v{new}")
            # back to following the alias, which now names the pinned version: no swap
            self.stack.registry.promote(self.stack.model, new)
            self.stack.deploy()
            return trigger, done, str(new), []

        return go

    def _refusal(self, name: str, bad: int) -> Step:
        def go() -> Outcome:
            old = self._current()
            reason = REFUSALS[name]
            trigger = self._trigger(name, f"promote broken v{bad}", old, lambda: self.stack.registry.promote(self.stack.model, bad))
            done = self._wait(lambda: self.stack.refusing_everywhere(bad, reason), f"every replica refusing v{bad}")
            error = self.stack.metadata()["last_error"]
            self.stack.registry.rollback(self.stack.model)
            return trigger, done, str(old), [f"GET /v1/models last_error: {error['reason']}: {error['message']}"]

        return go

    def _refuse_corrupt(self) -> Step:
        bad = self._train(self.data, False)
        artifact = Path(self.stack.registry.uri) / self.stack.model / "versions" / str(bad) / "model.skops"
        artifact.write_bytes(artifact.read_bytes()[::-1])
        return self._refusal("refuse_corrupt", bad)

    def _refuse_schema(self) -> Step:
        return self._refusal("refuse_schema", self._train(wider_data(self.data), False))

    def _refuse_samples(self) -> Step:
        registry, model, old = self.stack.registry, self.stack.model, self._current()
        good = registry.manifest(model, old)
        flipped = good.samples.model_copy(update={"outputs": [1 - o for o in good.samples.outputs]})
        draft = ManifestDraft(**good.model_dump(include=set(ManifestDraft.model_fields)) | {"samples": flipped})
        bad = registry.publish(model, registry.read_artifact(model, old), draft).version
        return self._refusal("refuse_samples", bad)

    def _code_update(self) -> Step:
        def go() -> Outcome:
            before = set(self.stack.replicas())
            version = self._current()
            self._revision += 1
            env = {"env_vars": {"NONSTOP_CODE_REVISION": str(self._revision)}}
            trigger = self._trigger("code_update", "serve deploy runtime_env change", version, lambda: self.stack.deploy(runtime_env=env))
            done = self._wait(
                lambda: not (set(self.stack.replicas()) & before) and self.stack.serving_everywhere(version),
                "every replica replaced",
            )
            return trigger, done, str(version), [f"replicas {sorted(before)} -> {sorted(self.stack.replicas())}"]

        return go

    def _rollback(self) -> Step:
        new = self._train(self.data, True)
        self._wait(lambda: self.stack.serving_everywhere(new), f"every replica on v{new}")

        def go() -> Outcome:
            entries = self.stack.registry.ledger(self.stack.model).verified()
            target = alias_lineage(entries, "production")[-2]
            trigger = self._trigger("rollback", f"rollback to v{target}", target, lambda: self.stack.registry.rollback(self.stack.model))
            done = self._wait(lambda: self.stack.serving_everywhere(target), f"every replica back on v{target}")
            return trigger, done, str(target), []

        return go

    def _kill(self) -> Step:
        def go() -> Outcome:
            victim, (_, pid) = sorted(self.stack.replicas().items())[0]
            version = self._current()
            trigger = self._trigger("kill", f"kill -9 replica {victim} (pid {pid})", version, lambda: os.kill(pid, signal.SIGKILL))
            done = self._wait(
                lambda: victim not in self.stack.replicas() and self.stack.serving_everywhere(version),
                "a replacement replica serving",
            )
            return trigger, done, str(version), [f"replacement ready {done - trigger:.1f}s after the kill"]

        return go

