"""The reported attacks on the promotion ledger, each on real files: nothing acts on the
bad entry, the rollout reports blocked, `nonstop history` exits non-zero, no alias moves.

The attacker can write the registry but has no signing key; the registry is signed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from nonstop.errors import LedgerEntryTooLarge, LedgerTampered, StoredFileTooLarge
from nonstop.ledger import MAX_ENTRY_BYTES, EntryDraft, LedgerEntry, entry_hash
from nonstop.registry import Registry
from serve_app.rollout.controller import Controller
from serve_app.rollout.moves import Rollouts
from serve_app.rollout.policy import MAX_STEPS, CanaryConfig, Policy
from tests.unit.nonstop.test_alias_signing import _nonstop
from tests.unit.nonstop.test_registry import DRAFT
from tests.unit.nonstop.test_signing import KEY

MODEL = "m"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def signed(root: Path) -> Registry:
    """v1 serves, v2 is rolled out at 50% (one step from promotion), v3 was never rolled out."""
    registry = Registry(str(root), signing_key=KEY)
    for artifact in (b"one", b"two", b"three"):
        registry.publish(MODEL, artifact, DRAFT)
    registry.promote(MODEL, 1)
    Rollouts(registry, MODEL, "production").start(2, Policy(steps=(0.5, 1.0)), actor="test")
    return registry


def _entry_file(root: Path, seq: int) -> Path:
    return root / MODEL / "ledger" / f"{seq:012d}.json"


def _assert_blocked(registry: Registry, root: Path, primary: int) -> None:
    """Nothing acts; the controller, `nonstop rollout status` and `history` say so."""
    rollouts = Rollouts(registry, MODEL, "production")
    with pytest.raises(LedgerTampered):
        rollouts.advance("attacker's accomplice", "advanced by hand", kind="override")
    assert registry.resolve(MODEL, "production") == primary
    controller = Controller(registry, MODEL, "production")
    assert controller.tick() is None
    assert controller.status()["blocked"] and "does not verify" in controller.status()["blocked"]
    assert registry.resolve(MODEL, "production") == primary
    key = KEY.get_secret_value()
    status = _nonstop("rollout", "status", "--model", MODEL, "--no-live", registry=root, key=key)
    assert status.returncode == 1 and "BLOCKED" in status.stderr, status.stderr
    advance = _nonstop("rollout", "advance", "--model", MODEL, registry=root, key=key)
    assert advance.returncode == 2 and "does not verify" in advance.stderr
    history = _nonstop("history", "--model", MODEL, registry=root, key=key)
    assert history.returncode == 1 and "chain: BROKEN" in history.stderr
    assert registry.resolve(MODEL, "production") == primary


@pytest.mark.parametrize("rehash", [False, True], ids=["hash-kept", "hash-recomputed"])
def test_an_edited_candidate_is_never_promoted(signed: Registry, root: Path, rehash: bool) -> None:
    """Reported: editing the candidate in one entry made `rollout advance` promote a
    version never rolled out or judged (v3 here)."""
    path = _entry_file(root, 2)
    entry = LedgerEntry.model_validate_json(path.read_text())
    forged = entry.model_copy(update={"candidate": 3})
    if rehash:
        forged = forged.model_copy(update={"hash": entry_hash(forged.body())})
    path.write_text(forged.model_dump_json())
    _assert_blocked(signed, root, primary=1)


def test_a_signed_entry_copied_to_a_new_number_is_not_acted_on(signed: Registry, root: Path) -> None:
    """Reported: after an abort, the signed start entry copied to the next number gave the
    aborted candidate its share back on the replicas."""
    follower = signed.ledger(MODEL)  # a replica, following since before the attack
    seen = follower.since_seq(0)
    Rollouts(signed, MODEL, "production").rollback("test", "aborted", kind="override")
    assert [e.action for e in follower.since_seq(seen[-1].seq)] == ["abort"]
    _entry_file(root, 4).write_bytes(_entry_file(root, 2).read_bytes())
    with pytest.raises(LedgerTampered, match="claims to be entry 2"):
        follower.since_seq(3)
    with pytest.raises(LedgerTampered, match="claims to be entry 2"):
        signed.ledger(MODEL).since_seq(3)  # a replica starting now
    _assert_blocked(signed, root, primary=1)


def test_truncation_with_an_older_signed_head_is_detected_by_the_alias_position(signed: Registry, root: Path) -> None:
    """Reported: truncating the ledger and restoring an older signed head passed `history`.
    The alias file (signed) names the entry that moved it: cutting below it is caught."""
    old_head = (root / MODEL / "ledger" / "HEAD.json").read_bytes()  # head at entry 2
    Rollouts(signed, MODEL, "production").advance("test", "promote it")  # entries 3 (decision), 4 (alias move)
    assert signed.resolve(MODEL, "production") == 2
    for seq in (3, 4):
        _entry_file(root, seq).unlink()
    (root / MODEL / "ledger" / "HEAD.json").write_bytes(old_head)
    check = signed.ledger(MODEL).verify()
    assert not check.ok and any("moved at entry 4, which is missing" in p for p in check.problems)
    _assert_blocked(signed, root, primary=2)


def test_truncation_is_caught_by_a_follower_that_saw_the_lost_entries(signed: Registry, root: Path) -> None:
    """Cutting only entries after the alias's last move, with an older signed head: a
    process that read them (replica, controller) sees the ledger go back and stops."""
    follower = signed.ledger(MODEL)
    old_head = (root / MODEL / "ledger" / "HEAD.json").read_bytes()
    Rollouts(signed, MODEL, "production").rollback("test", "aborted", kind="override")  # entry 3
    assert [e.action for e in follower.since_seq(2)] == ["abort"]
    _entry_file(root, 3).unlink()
    (root / MODEL / "ledger" / "HEAD.json").write_bytes(old_head)
    with pytest.raises(LedgerTampered, match="gone or changed"):
        follower.since_seq(3)


def test_a_move_in_flight_is_not_taken_for_an_attack(signed: Registry, root: Path) -> None:
    """Between a promote's append and its alias write the ledger still verifies (nothing
    is blocked by a promote in progress), and a follower then folds the move in."""
    reader = signed.ledger(MODEL)
    reader.verified()
    entry = signed.ledger(MODEL).append(EntryDraft(kind="alias_move", action="promote", alias="production", version=2))
    assert signed.ledger(MODEL).verify().ok  # appended, alias file not written yet
    signed._aliases.write(MODEL, entry)
    assert [e.seq for e in reader.since_seq(2)] == [entry.seq]


def test_what_truncation_is_not_detected_by_a_fresh_reader(signed: Registry, root: Path) -> None:
    """The stated limit (SECURITY.md): entries after every alias's last move, cut with an
    older signed head restored, are not detected by a reader that never saw them; nor is
    the whole registry (alias files, entries and head) put back to an earlier signed state."""
    old_head = (root / MODEL / "ledger" / "HEAD.json").read_bytes()
    Rollouts(signed, MODEL, "production").rollback("test", "aborted", kind="override")
    _entry_file(root, 3).unlink()
    (root / MODEL / "ledger" / "HEAD.json").write_bytes(old_head)
    assert signed.ledger(MODEL).verify().ok  # the abort is lost to a fresh reader: documented, pinned here

    alias = root / MODEL / "aliases" / "production.json"
    old_alias, old_head = alias.read_bytes(), (root / MODEL / "ledger" / "HEAD.json").read_bytes()
    Rollouts(signed, MODEL, "production").advance("test", "promote it")
    for seq in (3, 4):
        _entry_file(root, seq).unlink()
    alias.write_bytes(old_alias)
    (root / MODEL / "ledger" / "HEAD.json").write_bytes(old_head)
    assert signed.ledger(MODEL).verify().ok and signed.resolve(MODEL, "production") == 1


def test_an_alias_file_restored_from_an_older_signed_copy_is_detected(signed: Registry, root: Path) -> None:
    """Caught once any entry follows the newer move (the newest entry may be a move whose
    alias file is still being written: a promote in flight is not an attack)."""
    alias = root / MODEL / "aliases" / "production.json"
    old_alias = alias.read_bytes()
    Rollouts(signed, MODEL, "production").advance("test", "promote it")
    alias.write_bytes(old_alias)  # signed, valid, pointing back at v1
    assert signed.ledger(MODEL).verify().ok  # as a promote between its two writes looks
    signed.ledger(MODEL).append(EntryDraft(kind="decision", action="hold", alias="staging"))
    check = signed.ledger(MODEL).verify()
    assert not check.ok and any("moved it since" in p for p in check.problems)
    with pytest.raises(LedgerTampered):
        signed.rollback(MODEL)


def test_a_huge_step_list_is_refused_before_anything_is_written(signed: Registry, root: Path) -> None:
    """Reported: a canary block with a huge step list wrote an entry over the size bound,
    after which nothing could read or append the ledger while promote still moved the alias."""
    steps = tuple((i + 1) / 100_000 for i in range(99_999)) + (1.0,)
    with pytest.raises(ValidationError, match=f"at most {MAX_STEPS}"):
        CanaryConfig(version=3, steps=steps)
    before = sorted(p.name for p in (root / MODEL / "ledger").iterdir())
    cli = _nonstop(
        "rollout", "start", "3", "--model", MODEL, "--steps", ",".join(map(str, steps[:5000])),
        registry=root, key=KEY.get_secret_value(),
    )  # fmt: skip
    assert cli.returncode == 2 and "steps" in cli.stderr
    huge = EntryDraft(kind="decision", action="hold", alias="production", evidence={"x": "y" * MAX_ENTRY_BYTES})
    with pytest.raises(LedgerEntryTooLarge, match="not written"):
        signed.ledger(MODEL).append(huge)
    assert sorted(p.name for p in (root / MODEL / "ledger").iterdir()) == before
    assert signed.ledger(MODEL).verify().ok
    signed.promote(MODEL, 3)  # the ledger still takes entries
    assert signed.resolve(MODEL, "production") == 3


def test_a_failed_append_leaves_the_alias_where_it_was(signed: Registry, root: Path) -> None:
    """An oversized entry on disk (as the old bug wrote): the promote cannot append, so
    the alias does not move, and every reader says the ledger is broken."""
    oversized = json.loads(_entry_file(root, 2).read_text())
    oversized["reason"] = "z" * MAX_ENTRY_BYTES
    _entry_file(root, 3).write_text(json.dumps(oversized))
    with pytest.raises(StoredFileTooLarge):
        signed.promote(MODEL, 3)
    assert signed.resolve(MODEL, "production") == 1
    _assert_blocked(signed, root, primary=1)
