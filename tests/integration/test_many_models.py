"""Many models behind one application, on the real cluster, shortened (issue 25).

The tier's app is reconfigured (`serve deploy` of a new user_config, no replica restart)
to serve three models: the demo model and two small ones. Under load on all three, one
small model is promoted and then rolled back, and a candidate of the demo model that fails
on some inputs is canaried: no request on any model fails, every answer names the model
asked for, and the versions are the ones each model's alias (or its rollout) pointed at.
The stack's own single-model config is deployed back at the end.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from harness.canary import CanaryLoad, bodies, poisoned, publish_fragile, run_rollout
from harness.loadgen import BackgroundLoad, LoadResult
from harness.rollout import Stack, wait_until
from nonstop_ops.cluster import lifecycle as local
from nonstop_ops.cluster.serve_config import deployment_config
from tests.conftest import MODEL
from tests.integration.conftest import CANARY_RATE, LOAD_RATE, POLL_INTERVAL_S, swap_bound
from harness.small_models import ROW, publish_small
from serve_app.rollout.policy import Policy
from training import demo

pytestmark = pytest.mark.integration
STEADY, MOVED = "many_steady", "many_moved"
MODELS = (MODEL, STEADY, MOVED)
AFTER_S = 3.0  # load kept on once the rollback is everywhere
WINDOW_S = 4.0
POLICY = Policy(steps=(0.1, 0.5, 1.0), window_s=WINDOW_S, min_requests=20, min_error_sample=15, min_compared=40)


def _deploy_user_config(served: Stack, user_config: dict[str, Any]) -> None:
    config = copy.deepcopy(served.config)
    deployment_config(config)["user_config"] = user_config
    local.deploy(served.cluster, config)


@pytest.fixture
def many(served: Stack) -> Iterator[Stack]:
    if STEADY not in served.registry.models():
        publish_small(served.registry, STEADY, 1)
        publish_small(served.registry, MOVED, 2)
    before = served.replicas()
    _deploy_user_config(
        served,
        {
            "models": [{"model": m, "poll_interval_s": POLL_INTERVAL_S} for m in MODELS],
            "budget": {"max_models": 3, "load_wait_s": 60},
        },
    )
    wait_until(
        lambda: served.settled() and len(board := served.board()) == len(before) and all("3 listed" in (s.target or "") for s in board.values()),
        120,
        "every replica reconfigured",
    )
    try:
        yield served
    finally:
        local.deploy(served.cluster, served.config)  # the stack's single-model config, back
        wait_until(lambda: _single_again(served, len(before)), 120, "the single-model config back on every replica")
    assert served.replicas() == before  # reconfigured both ways, never restarted


def _single_again(served: Stack, replicas: int) -> bool:
    """Every replica RUNNING again (none mid-reconfigure) and serving the one model."""
    board = served.board()
    return served.settled() and len(board) == replicas and all(s.model == MODEL and not s.models for s in board.values())


def _everywhere(served: Stack, model: str, version: int) -> bool:
    board = served.board()
    return bool(board) and all(status.serves(model, version) for status in board.values())


def test_promoting_and_rolling_back_one_model_fails_no_request_on_any(many: Stack) -> None:
    served = many
    url = f"{served.cluster.http_url}/v1/models/{{}}:predict"
    bodies = {MODEL: served.sample_body(), STEADY: {"instances": [ROW]}, MOVED: {"instances": [ROW]}}
    production = {m: served.registry.resolve(m, "production") for m in MODELS}
    loads = {m: BackgroundLoad(url.format(m), bodies[m], concurrency=2, max_seconds=300, rate=LOAD_RATE) for m in MODELS}
    for load in loads.values():
        load.__enter__()
    try:
        wait_until(lambda: all(_everywhere(served, m, production[m]) for m in MODELS), 120, "every model loaded on every replica")
        new = publish_small(served.registry, MOVED, 4, promote=False)
        served.registry.promote(MOVED, new, actor="test")
        wait_until(lambda: _everywhere(served, MOVED, new), swap_bound(served), f"{MOVED} v{new} on every replica")
        served.registry.rollback(MOVED, actor="test", reason="integration test")
        wait_until(lambda: _everywhere(served, MOVED, production[MOVED]), swap_bound(served), f"{MOVED} back on every replica")
        rolled_back_at = time.time()
        wait_until(lambda: time.time() > rolled_back_at + AFTER_S, AFTER_S + 1, "load after the rollback")
    finally:
        results: dict[str, LoadResult] = {m: load.stop() for m, load in loads.items()}
    for model, result in results.items():
        assert result.samples and not result.failed, (model, result.failed[:5])
        assert {s.model for s in result.samples} == {model}
    assert results[MODEL].versions() == {str(production[MODEL])}
    assert results[STEADY].versions() == {str(production[STEADY])}
    assert results[MOVED].versions() == {str(production[MOVED]), str(new)}
    after = [s for s in results[MOVED].samples if s.sent_at > rolled_back_at]
    assert after and {s.version for s in after} == {str(production[MOVED])}


def test_canarying_one_model_fails_no_request_on_any(many: Stack) -> None:
    """A candidate of the demo model that raises on every other request's rows, canaried
    under load on all three models: its failures are answered by the demo model's primary,
    it is rolled back on its error rate, and the other models answer every request with
    their production versions throughout."""
    served = many
    registry = served.registry
    production = {m: registry.resolve(m, "production") for m in MODELS}
    features = registry.manifest(MODEL, production[MODEL] or 1).feature_names
    frame = pd.concat([demo.day_frame(day) for day in (3, 4)], ignore_index=True).sample(frac=1.0, random_state=5)
    canaried = CanaryLoad(served.predict_url, poisoned(bodies(frame, features, 8)), concurrency=2, rate=CANARY_RATE)
    url = f"{served.cluster.http_url}/v1/models/{{}}:predict"
    others = {m: BackgroundLoad(url.format(m), {"instances": [ROW]}, concurrency=1, max_seconds=300, rate=LOAD_RATE) for m in (STEADY, MOVED)}
    candidate = publish_fragile(registry, MODEL)
    for load in others.values():
        load.__enter__()
    try:
        # a replica loads a model on its first request for it (within the budget of three)
        with BackgroundLoad(served.predict_url, served.sample_body(), concurrency=1, max_seconds=120, rate=LOAD_RATE):
            wait_until(lambda: all(_everywhere(served, m, production[m]) for m in MODELS), 120, "every model loaded on every replica")
        run = run_rollout(registry, MODEL, candidate, POLICY, canaried, settle_s=2.0, timeout_s=6 * WINDOW_S + 60)
    finally:
        results: dict[str, LoadResult] = {m: load.stop() for m, load in others.items()}
    assert run.failed == [], [(a.status, a.error) for a in run.failed[:5]]
    assert (run.outcome.action, run.answered_by(candidate) > 0) == ("rollback", True), [(e.action, e.reason) for e in run.entries]
    assert "error rate" in run.outcome.reason
    assert {a.version for a in run.answers} == {production[MODEL], candidate}
    for model, result in results.items():
        assert result.samples and not result.failed, (model, result.failed[:5])
        assert {s.model for s in result.samples} == {model}
        assert result.versions() == {str(production[model])}, model
    assert registry.resolve(MODEL, "production") == production[MODEL]
