"""`nonstop history` as an operator runs it: a real subprocess on a real registry."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from nonstop.registry import Registry
from tests.unit.nonstop.test_registry import DRAFT


def _nonstop(registry: Registry, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nonstop_ops", *args, "--registry", registry.uri]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_history_lists_moves_answers_at_and_flags_an_edit(registry: Registry, tmp_path: Path) -> None:
    for payload in (b"1", b"2"):
        registry.publish("m", payload, DRAFT)
    assert _nonstop(registry, "promote", "1", "--model", "m", "--reason", "first day").returncode == 0
    between = datetime.now(UTC)
    time.sleep(0.01)
    assert _nonstop(registry, "promote", "2", "--model", "m").returncode == 0

    listing = _nonstop(registry, "history", "--model", "m")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert "alias_move/promote  production -> v1" in lines[0] and "first day" in lines[0]
    assert "(nonstop promote on" in lines[0]
    assert "production -> v2" in lines[1]
    assert lines[-1] == "chain: ok (2 entries, 0 signed)"

    at = _nonstop(registry, "history", "--model", "m", "--at", between.isoformat())
    assert at.returncode == 0, at.stderr
    assert ": v1 (since entry #1" in at.stdout
    naive = _nonstop(registry, "history", "--model", "m", "--at", "now", "--json")
    assert json.loads(naive.stdout)["version"] == 2

    bad_time = _nonstop(registry, "history", "--model", "m", "--at", "yesterday-ish")
    assert bad_time.returncode == 2 and "ISO 8601" in bad_time.stderr

    first = sorted((tmp_path / "registry" / "m" / "ledger").glob("0*.json"))[0]
    entry = json.loads(first.read_text())
    entry["actor"] = "someone else"
    first.write_text(json.dumps(entry))
    edited = _nonstop(registry, "history", "--model", "m")
    assert edited.returncode == 1
    assert "chain: BROKEN" in edited.stderr and "entry 1" in edited.stderr and "edited" in edited.stderr
