"""The promotion ledger: chained, signed, concurrency-safe, and it answers "what served when"."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from nonstop.ledger import EntryDraft, Ledger
from nonstop.registry import Registry
from nonstop.storage import LocalStorage
from tests.unit.nonstop.test_registry import DRAFT

KEY = SecretStr("k" * 32)


def _published(registry: Registry, count: int) -> None:
    for index in range(count):
        registry.publish("m", str(index).encode(), DRAFT)


def _entry_files(root: Path) -> list[Path]:
    return sorted((root / "m" / "ledger").glob("0*.json"))


def test_alias_moves_are_recorded_with_who_and_why(registry: Registry) -> None:
    _published(registry, 3)
    registry.promote("m", 1, actor="alice", reason="first")
    registry.promote("m", 2)
    registry.rollback("m", actor="bob", reason="v2 misbehaves")
    entries = registry.ledger("m").entries()
    assert [(e.seq, e.action, e.version) for e in entries] == [(1, "promote", 1), (2, "promote", 2), (3, "rollback", 1)]
    assert (entries[0].actor, entries[0].reason) == ("alice", "first")
    assert entries[1].actor.startswith("pid ")
    assert (entries[2].actor, entries[2].reason) == ("bob", "v2 misbehaves")
    assert entries[1].prev_hash == entries[0].hash and entries[2].prev_hash == entries[1].hash
    assert registry.ledger("m").verify().ok


def test_serving_at_replays_alias_and_canary(registry: Registry) -> None:
    _published(registry, 3)
    ledger = registry.ledger("m")
    registry.promote("m", 1)
    after_first = datetime.now(UTC)
    ledger.append(EntryDraft(kind="canary_step", action="step", alias="production", candidate=2, weight=0.05))
    during_canary = datetime.now(UTC)
    registry.promote("m", 2, actor="rollout controller")
    entries = ledger.entries()
    assert ledger.serving_at(entries[0].at - timedelta(seconds=1), "production").version is None
    first = ledger.serving_at(after_first, "production")
    assert (first.version, first.candidate, first.weight) == (1, None, 0.0)
    canary = ledger.serving_at(during_canary, "production")
    assert (canary.version, canary.candidate, canary.weight) == (1, 2, 0.05)
    assert canary.since is not None and canary.since.seq == 2
    now = ledger.serving_at(datetime.now(UTC), "production")
    assert (now.version, now.candidate, now.weight) == (2, None, 0.0)
    assert ledger.serving_at(datetime.now(UTC), "staging").version is None


@pytest.mark.parametrize(
    "tamper",
    ["edit_reason", "edit_version_and_rehash", "remove_middle", "remove_last", "swap_two"],
)
def test_verify_detects_any_tampering(registry: Registry, tmp_path: Path, tamper: str) -> None:
    _published(registry, 3)
    for version in (1, 2, 3):
        registry.promote("m", version)
    assert registry.ledger("m").verify().ok
    files = _entry_files(tmp_path / "registry")
    if tamper == "edit_reason":
        entry = json.loads(files[1].read_text())
        entry["reason"] = "nothing to see"
        files[1].write_text(json.dumps(entry))
    elif tamper == "edit_version_and_rehash":
        # a careful forger recomputes the entry's own hash: the next link still breaks
        from nonstop.ledger import LedgerEntry, entry_hash

        entry = LedgerEntry.model_validate_json(files[1].read_text())
        forged = entry.model_copy(update={"version": 3})
        files[1].write_text(forged.model_copy(update={"hash": entry_hash(forged.body())}).model_dump_json())
    elif tamper == "remove_middle":
        files[1].unlink()
    elif tamper == "remove_last":
        files[2].unlink()
    else:
        first, second = files[0].read_bytes(), files[1].read_bytes()
        files[0].write_bytes(second)
        files[1].write_bytes(first)
    result = registry.ledger("m").verify()
    assert not result.ok
    assert result.problems


def test_signed_ledger_refuses_a_consistently_rewritten_chain(tmp_path: Path) -> None:
    signed = Registry(str(tmp_path / "registry"), signing_key=KEY)
    _published(signed, 2)
    signed.promote("m", 1)
    signed.promote("m", 2)
    assert signed.ledger("m").verify().signed == 2
    # someone without the key rewrites the whole chain so that every hash matches again
    forger = Ledger(LocalStorage(str(tmp_path / "registry")), "m")
    for path in _entry_files(tmp_path / "registry"):
        path.unlink()
    (tmp_path / "registry" / "m" / "ledger" / "HEAD.json").unlink()
    forger.append(EntryDraft(kind="alias_move", action="promote", alias="production", version=2))
    assert forger.verify().ok  # without a key the rewrite is consistent ...
    result = signed.ledger("m").verify()
    assert not result.ok  # ... with one it is not
    assert any("signature" in p for p in result.problems)


def test_unsigned_prefix_is_vouched_for_by_the_first_signed_entry(tmp_path: Path) -> None:
    root = str(tmp_path / "registry")
    _published(Registry(root), 2)
    Registry(root).promote("m", 1)
    signed = Registry(root, signing_key=KEY)
    signed.sign_unsigned("m")
    signed.promote("m", 2)
    assert signed.ledger("m").verify().ok
    Registry(root).promote("m", 1)  # an unsigned entry after a signed one
    result = signed.ledger("m").verify()
    assert not result.ok and any("unsigned after signed" in p for p in result.problems)


def _append_many(root: str, writer: int, count: int) -> None:
    ledger = Ledger(LocalStorage(root), "m")
    for index in range(count):
        ledger.append(EntryDraft(kind="decision", action="hold", alias="production", reason=f"{writer}-{index}"))


def test_concurrent_appenders_keep_one_unbroken_chain(tmp_path: Path) -> None:
    root = str(tmp_path / "registry")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(root, w, 15)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    ledger = Ledger(LocalStorage(root), "m")
    entries = ledger.entries()
    assert len(entries) == 60
    assert sorted(e.reason for e in entries) == sorted(f"{w}-{i}" for w in range(4) for i in range(15))
    assert ledger.verify().ok


def test_serving_at_needs_an_aware_time(registry: Registry) -> None:
    from nonstop.errors import RegistryError

    with pytest.raises(RegistryError, match="aware"):
        registry.ledger("m").serving_at(datetime(2026, 1, 1), "production")
