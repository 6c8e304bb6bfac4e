"""Capture on the real stack: Ray Serve, HAProxy, two replicas, the demo config's capture on.

Every request a client got a 2xx for while a promotion swapped the replicas under load is
in the captures exactly once, with the version that answered it, under the request id the
client was given. The replicas write on every swap and every interval, so the store
catches up with the client within an interval of the last answer.

With labels posted as the requests are answered, the rollout policy's outcome check rolls
a worse candidate back and promotes a good one, failing no request.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from harness.canary import RolloutRun, run_rollout
from harness.labelled import LabelledLoad
from harness.loadgen import BackgroundLoad
from harness.rollout import Stack, wait_until
from nonstop.capture import RECORDS, CaptureConfig, filesystem, read, root_of
from nonstop_ops.cluster.serve_config import deployment_config
from serve_app.rollout.outcome_check import OutcomeCheck
from serve_app.rollout.policy import Policy
from tests.conftest import MODEL, train_into
from tests.integration.conftest import LOAD_RATE, swap_bound
from training import demo
from training.job import TrainOptions, train


def _captured(served: Stack) -> dict[str, list[int]]:
    """request id -> the versions that answered its first row, as the store holds them."""
    table = read(*filesystem(root_of(served.registry.uri, CaptureConfig())), RECORDS, MODEL)
    if table is None:
        return {}
    frame = table.to_pandas()
    answered = frame[(frame["role"] != "shadow") & (frame["row"] == 0)]
    found: dict[str, list[int]] = {}
    for rid, version in zip(answered["request_id"], answered["version"], strict=True):
        found.setdefault(rid, []).append(int(version))
    return found


def test_every_2xx_answered_during_a_promote_and_a_rollback_is_captured_exactly_once(served: Stack, demo_data: Path) -> None:
    old = served.registry.resolve(MODEL, "production")
    new = train_into(served.registry, demo_data, promote=False).manifest.version
    with BackgroundLoad(served.predict_url, served.sample_body(), concurrency=8, max_seconds=2 * swap_bound(served) + 120, rate=LOAD_RATE) as load:
        served.registry.promote(MODEL, new)
        wait_until(lambda: served.serving_everywhere(new), swap_bound(served), f"every replica serving v{new}")
        served.registry.rollback(MODEL, actor="test", reason="capture across a rollback")
        wait_until(lambda: served.serving_everywhere(old), swap_bound(served), f"every replica back on v{old}")
        result = load.stop()
    answered = {s.request_id: s.version for s in result.samples if s.ok}
    assert result.failed == [], result.failed[:5]
    # the load spanned both swaps: the old version answered before and after the new one
    assert None not in answered and set(answered.values()) == {str(old), str(new)}
    last_new = max(s.sent_at for s in result.samples if s.ok and s.version == str(new))
    assert any(s.sent_at > last_new and s.version == str(old) for s in result.samples if s.ok)
    wait_until(lambda: answered.keys() <= _captured(served).keys(), 60, "every answer captured")
    captured = _captured(served)
    assert {rid: captured[rid] for rid in answered} == {rid: [int(version)] for rid, version in answered.items()}


# --- the rollout judges outcomes: labels posted inside the window ------------------------------

WINDOW_S = 4.0
LABEL_WAIT_S = 90.0
# Every proxy check is relaxed out of the way, so only the labels can roll a candidate back
JUDGED_ON_LABELS = Policy(
    steps=(0.5, 1.0), window_s=WINDOW_S, min_requests=20, min_compared=20, min_agreement=0.0, max_output_psi=1000.0,
    max_input_psi=1000.0, latency_slack_ms=1000.0, min_tail_sample=100_000,
    outcomes=OutcomeCheck(min_labelled=60, wait_s=LABEL_WAIT_S, on_timeout="rollback"),
)  # fmt: skip


def _shuffled(tmp_path: Path) -> Path:
    frame = pd.concat([demo.day_frame(i) for i in range(3)], ignore_index=True)
    frame["target"] = np.random.default_rng(11).permutation(frame["target"].to_numpy())
    path = tmp_path / "shuffled.parquet"
    frame.to_parquet(path, index=False)
    return path


def _labelled_rollout(served: Stack, candidate: int, prefix: str) -> RolloutRun:
    features = served.registry.manifest(MODEL, candidate).feature_names
    frame = pd.concat([demo.day_frame(day) for day in range(3, 6)], ignore_index=True)
    outcomes_url = f"{served.cluster.http_url}/v1/models/{MODEL}/outcomes"
    load = LabelledLoad.of(served.predict_url, outcomes_url, frame, features, prefix)
    run = run_rollout(served.registry, MODEL, candidate, JUDGED_ON_LABELS, load, settle_s=1.0, timeout_s=LABEL_WAIT_S + 60)
    assert load.post_failures == [] and load.posted > 0
    return run


def test_the_policy_rolls_back_a_candidate_worse_on_labels_and_promotes_a_good_one(served: Stack, demo_data: Path, tmp_path: Path) -> None:
    """Labels for the requests answered arrive within a second; the worse candidate (fitted
    on shuffled labels) is rolled back by the outcome check, the good one promoted; the
    clients get 0 non-2xx through both, and each decision's ledger evidence holds the
    labelled rows it judged."""
    worse = train(TrainOptions(data=str(_shuffled(tmp_path)), model=MODEL), served.registry).manifest.version
    run = _labelled_rollout(served, worse, "worse")
    assert run.failed == [] and run.answered_by(worse) > 0
    assert (run.outcome.action, run.outcome.actor) == ("rollback", "rollout controller"), run.outcome
    assert "labelled accuracy" in run.outcome.reason and "z=" in run.outcome.reason
    labelled = (run.outcome.evidence or {})["labelled"]
    assert labelled["candidate"]["rows"] >= 60 and labelled["primary"]["rows"] >= 60
    assert labelled["candidate"]["mean"] < labelled["primary"]["mean"]

    good = train_into(served.registry, demo_data, promote=False).manifest.version
    run = _labelled_rollout(served, good, "good")
    assert run.failed == [] and run.answered_by(good) > 0
    assert run.outcome.kind == "alias_move" and served.registry.resolve(MODEL, "production") == good
    decision = next(e for e in reversed(run.entries) if e.kind == "decision" and e.action == "promote")
    assert (decision.evidence or {})["labelled"]["candidate"]["rows"] >= 60
    assert served.registry.ledger(MODEL).verify().ok


def test_every_2xx_answered_across_a_code_update_is_captured_exactly_once(served: Stack) -> None:
    """Every replica replaced under load: the old ones keep writing every interval while
    Serve drains them (30 s behind HAProxy), and once more in their destructor if Serve
    lets it run before its force-kill (docs/capture.md)."""
    old = set(served.replicas())
    with BackgroundLoad(served.predict_url, served.sample_body(), concurrency=4, max_seconds=300, rate=LOAD_RATE) as load:
        time.sleep(2)
        served.deploy(runtime_env={"env_vars": {"NONSTOP_CODE_REVISION": "capture-code-update"}})
        wait_until(lambda: not (set(served.replicas()) & old) and served.settled(), 180, "every replica replaced")
        time.sleep(2)
        result = load.stop()
    answered = {s.request_id: s.version for s in result.samples if s.ok}
    assert result.failed == [], result.failed[:5]
    wait_until(lambda: answered.keys() <= _captured(served).keys(), 60, "every answer captured")
    captured = _captured(served)
    assert {rid: captured[rid] for rid in answered} == {rid: [int(version)] for rid, version in answered.items()}


def test_an_unwritable_destination_fails_no_request_and_every_replica_counts_its_drops(served: Stack, tmp_path: Path) -> None:
    """The capture block moved, by a `serve deploy`, to a destination nothing can be
    written to (a folder under a file: even root cannot): every request is still answered,
    each replica counts what it dropped, and its buffer stays within the bound."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    capture = {**deployment_config(served.config)["user_config"].get("capture", {}), "destination": str(blocker / "captures"), "flush_interval_s": 0.2, "max_buffered_rows": 100}
    served.deploy(capture=capture)
    try:
        wait_until(lambda: _everywhere(served, str(blocker / "captures")), 60, "every replica capturing to the unwritable folder")
        before = {rid: status.capture.dropped_rows for rid, status in served.board().items() if status.capture}
        with BackgroundLoad(served.predict_url, served.sample_body(), concurrency=4, max_seconds=60, rate=LOAD_RATE) as load:
            time.sleep(5)
            result = load.stop()
        assert result.failed == [] and len(result.samples) > 20, result.failed[:5]
        replicas = set(before)
        answered = sum(1 for s in result.samples if s.ok)

        def counted() -> bool:
            board = served.board()
            return sum(board[r].capture.dropped_rows - before[r] for r in replicas if board[r].capture) >= answered

        try:
            wait_until(counted, 60, f"the {answered} answers counted as dropped")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; before: {before}; now: {[(r, s.capture) for r, s in served.board().items()]}") from None
        assert all(s.capture.buffered_rows <= 100 for s in served.board().values() if s.capture)
    finally:
        served.deploy()
        wait_until(lambda: str(blocker) not in str(_destinations(served)), 60, "the capture back where it was")


def _everywhere(served: Stack, destination: str) -> bool:
    """Every replica the config asks for has reported, and captures to `destination`."""
    return served.everywhere(lambda s: s.capture is not None and s.capture.destination == destination)


def _destinations(served: Stack) -> set[str | None]:
    return {status.capture.destination if status.capture else None for status in served.board().values()}
