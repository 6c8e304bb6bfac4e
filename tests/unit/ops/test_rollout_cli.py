"""`nonstop rollout` by hand: a real subprocess on a real registry; every move in the ledger."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from nonstop.registry import Registry
from tests.unit.nonstop.test_registry import DRAFT


def _nonstop(registry: Registry, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nonstop_ops", *args, "--model", "m", "--registry", registry.uri]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_a_rollout_by_hand(registry: Registry, tmp_path: Path) -> None:
    for payload in (b"1", b"2"):
        registry.publish("m", payload, DRAFT)
    registry.promote("m", 1)
    bad = _nonstop(registry, "rollout", "start", "2", "--steps", "0.5,0.1,1")
    assert bad.returncode == 2 and "strictly increasing" in bad.stderr
    policy = tmp_path / "policy.yaml"
    policy.write_text("steps: [0.1, 0.5, 1.0]\nmin_agreement: 0.95\n")
    started = _nonstop(registry, "rollout", "start", "2", "--policy", str(policy), "--window", "30")
    assert started.returncode == 0, started.stderr
    assert "10% of requests" in started.stdout and "window 30s" in started.stdout
    again = _nonstop(registry, "rollout", "start", "2")
    assert again.returncode == 2 and "under way" in again.stderr
    status = _nonstop(registry, "rollout", "status", "--no-live", "--json")
    assert json.loads(status.stdout) | {"live": None} == {
        "active": True, "primary": 1, "candidate": 2, "weight": 0.1, "paused": False, "outcome": None,
        "from_config": False, "blocked": None, "live": None,
    }  # fmt: skip
    assert _nonstop(registry, "rollout", "pause", "--reason", "lunch").returncode == 0
    assert "[PAUSED]" in _nonstop(registry, "rollout", "status", "--no-live").stdout
    assert _nonstop(registry, "rollout", "resume").returncode == 0
    assert "now answers 50%" in _nonstop(registry, "rollout", "advance").stdout
    promoted = _nonstop(registry, "rollout", "advance", "--reason", "ship it")
    assert "promoted v2" in promoted.stdout, promoted.stderr
    assert registry.resolve("m", "production") == 2
    done = _nonstop(registry, "rollout", "abort")
    assert done.returncode == 2 and "no rollout under way" in done.stderr and "promote to v2" in done.stderr
    history = _nonstop(registry, "history")
    assert history.returncode == 0
    actions = [line.split()[3] for line in history.stdout.splitlines()[:-1]]
    assert actions == [
        "alias_move/promote", "canary_step/start", "override/pause", "override/resume",
        "override/advance", "override/promote", "alias_move/promote",
    ]  # fmt: skip
    assert "lunch" in history.stdout and "ship it" in history.stdout


def test_a_manual_rollout_is_left_to_a_person(registry: Registry) -> None:
    for payload in (b"1", b"2"):
        registry.publish("m", payload, DRAFT)
    registry.promote("m", 1)
    started = _nonstop(registry, "rollout", "start", "2", "--manual")
    assert started.returncode == 0, started.stderr
    assert "moved by hand only" in started.stdout
    start = registry.ledger("m").entries()[-1]
    assert start.evidence is not None and start.evidence["policy"]["automatic"] is False
