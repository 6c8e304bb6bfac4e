"""The promotion ledger: an append-only, hash-chained log of what served a model, and why.

Layout under the registry URI::

    <model>/ledger/<seq>.json   one entry each, numbered from 1, never rewritten
    <model>/ledger/HEAD.json    the newest entry's number and hash (signed, with a key)

Every alias move, canary step, automatic decision and manual override is one entry: who
or what did it, when, why, and the evidence at that moment. Each entry carries the hash
of the one before it and its own hash, so an edited, removed or reordered entry breaks the
chain, and `verify()` says where. With a signing key every entry and the head are signed
as well: without one, anyone who can write the registry could rewrite the whole chain
consistently, so the chain alone only catches edits of a single entry and accidents.

Whatever acts on the ledger (replicas following a rollout, the rollout controller, the
`nonstop rollout` and `rollback` commands) reads it through `verified()`: every entry
bound to its number, its model and its predecessor's hash (and signed, with a key), the
head matching the chain, and every alias file's ledger position (the entry that moved
it) present and unchanged. A ledger that does not verify raises `LedgerTampered` and is
never acted on. What this detects, and what it cannot, is stated in SECURITY.md.
Entries are bounded at write time (`LedgerEntryTooLarge`), so a writer never leaves an
entry nothing could read back.

Appends are safe across processes on a local disk: an entry number is taken by creating
its file exclusively (as the registry claims version numbers), and a loser retries on the
next number with the winner's hash. On an object store the same protocol is best effort;
one writer at a time (the rollout controller) is the supported case there.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from nonstop.errors import LedgerEntryTooLarge, LedgerTampered, NonstopError, RegistryError, StoredFileTooLarge
from nonstop.signing import is_valid, sign
from nonstop.storage import Storage

LEDGER_DIR = "ledger"
HEAD_NAME = "HEAD.json"
GENESIS = "0" * 64
MAX_ENTRY_BYTES = 1024 * 1024
_SEQ_DIGITS = 12
_MAX_APPEND_ATTEMPTS = 1000

Kind = Literal["alias_move", "canary_step", "decision", "override"]


def default_actor() -> str:
    """Who, when the caller does not say: this process on this host."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


class EntryDraft(BaseModel):
    """What a caller records; the ledger adds the number, time and chain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    action: str = Field(description="promote, rollback, step, pause, resume, advance, abort, ...")
    alias: str
    version: int | None = Field(default=None, description="the alias's target after this entry")
    candidate: int | None = Field(default=None, description="the canary version, for canary steps and decisions")
    weight: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="the candidate's share after this entry (0 with a candidate: shadow only); None: unchanged",
    )  # fmt: skip
    actor: str = Field(default_factory=default_actor, max_length=200)
    reason: str = Field(default="", max_length=4000)
    evidence: dict[str, Any] | None = None


class LedgerEntry(EntryDraft):
    model: str
    seq: int = Field(ge=1)
    at: datetime
    prev_hash: str
    hash: str
    signature: str | None = None

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"hash", "signature"})


class LedgerHead(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=1)
    hash: str
    signature: str | None = None

    def signed_bytes(self, model: str) -> bytes:
        return f"{model}\n{self.seq}\n{self.hash}".encode()


def entry_hash(body: dict[str, Any]) -> str:
    """sha256 of canonical JSON: key order and spacing cannot change it."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    signed: int
    problems: list[str]


@dataclass(frozen=True)
class Anchor:
    """Where an alias file says its alias was moved: the entry's number and hash. The
    alias file is signed (with a key), so a ledger cut back below it is caught even when
    an older signed head is restored with it."""

    alias: str
    version: int
    seq: int
    hash: str


Anchors = Callable[[], list[Anchor]]


@dataclass(frozen=True)
class ServingAt:
    """What an alias served at a moment: its target, plus a candidate's share if one ran
    (a candidate at weight 0 is scored in the shadow of every request, never answers)."""

    alias: str
    at: datetime
    version: int | None
    candidate: int | None
    weight: float
    since: LedgerEntry | None


class Ledger:
    def __init__(
        self, storage: Storage, model: str, signing_key: SecretStr | None = None, anchors: Anchors | None = None
    ) -> None:
        """`anchors` reads the model's alias files (the registry passes it); verification
        checks each against the chain."""
        self._storage = storage
        self.model = model
        self._key = signing_key
        self._anchors = anchors
        self._trusted: list[LedgerEntry] = []  # verified by an earlier `verified()` on this object

    # --- writing ------------------------------------------------------------------------

    def append(self, draft: EntryDraft) -> LedgerEntry:
        """Chain `draft` after the newest entry; retried on the next number if another
        writer took this one first. An entry over the size bound is refused before
        anything is written."""
        last = self._last()
        for _ in range(_MAX_APPEND_ATTEMPTS):
            seq = 1 if last is None else last.seq + 1
            entry = self._seal(draft, seq, GENESIS if last is None else last.hash)
            data = entry.model_dump_json(indent=2).encode()
            if len(data) > MAX_ENTRY_BYTES:
                raise LedgerEntryTooLarge(
                    f"a {draft.action!r} entry of {len(data)} bytes for the ledger of {self.model!r} is over the "
                    f"{MAX_ENTRY_BYTES} bytes allowed: not written (is the canary block or evidence that large?)"
                )
            if self._storage.create_new(self._entry_path(seq), data):
                self._write_head(entry)
                return entry
            last = self._read(seq)
        raise RegistryError(f"could not append to the ledger of {self.model!r}: too many concurrent writers")

    def _seal(self, draft: EntryDraft, seq: int, prev_hash: str) -> LedgerEntry:
        partial = LedgerEntry(
            **draft.model_dump(), model=self.model, seq=seq, at=datetime.now(UTC), prev_hash=prev_hash, hash=""
        )
        digest = entry_hash(partial.body())
        signature = sign(self._key, digest.encode()).decode() if self._key is not None else None
        return partial.model_copy(update={"hash": digest, "signature": signature})

    def _write_head(self, entry: LedgerEntry) -> None:
        """The head only moves forward; it makes removing the newest entries detectable."""
        try:
            current = self._head()
        except RegistryError:
            current = None  # an unreadable head is replaced; verify() still compares it with the chain
        if current is not None and current.seq >= entry.seq:
            return
        head = LedgerHead(seq=entry.seq, hash=entry.hash)
        if self._key is not None:
            head = head.model_copy(update={"signature": sign(self._key, head.signed_bytes(self.model)).decode()})
        self._storage.write_atomic(self._storage.join(self.model, LEDGER_DIR, HEAD_NAME), head.model_dump_json().encode())

    # --- reading ------------------------------------------------------------------------

    def entries(self) -> list[LedgerEntry]:
        """Every entry, in number order, as stored: for showing (`nonstop history` shows
        them beside what `verify` found). Whatever acts reads `verified()`."""
        return [self._read(seq) for seq in self._numbers()]

    def verified(self) -> list[LedgerEntry]:
        """Every entry, verified (module doc), or `LedgerTampered` with every problem found.

        Entries this object verified before are not read again while the newest of them
        is unchanged, so a replica polling the ledger reads only what is new; the head and
        the alias files are checked on every call."""
        entries, problems = self._walk(self._trusted)
        if problems:
            raise LedgerTampered(self.model, problems)
        self._trusted = entries
        return list(entries)

    def since_seq(self, seq: int) -> list[LedgerEntry]:
        """The verified entries after `seq`: what a follower has not folded in yet."""
        return [e for e in self.verified() if e.seq > seq]

    def serving_at(self, at: datetime, alias: str) -> ServingAt:
        """Replay the entries up to `at`: the alias's target, and the candidate's share."""
        if at.tzinfo is None:
            raise RegistryError("serving_at needs an aware time (say UTC)")
        version: int | None = None
        candidate: int | None = None
        weight = 0.0
        since: LedgerEntry | None = None
        for entry in self.entries():
            if entry.at > at:
                break
            if entry.alias != alias:
                continue
            if entry.version is not None:
                version = entry.version
            if entry.weight is not None:
                weight, candidate = entry.weight, entry.candidate
            if entry.version is not None or entry.weight is not None:
                since = entry
        return ServingAt(alias=alias, at=at, version=version, candidate=candidate, weight=weight, since=since)

    def verify(self) -> Verification:
        """Check the whole chain from its first entry, every signature (with a key), the
        head and the alias files' positions; says every problem found.

        Entries written before a key was set may be unsigned, but once one is signed all
        later ones must be: the first signed entry vouches for the unsigned prefix
        through its `prev_hash`."""
        entries, problems = self._walk([])
        signed = sum(1 for e in entries if e.signature is not None) if self._key is not None else 0
        return Verification(ok=not problems, entries=len(self._numbers()), signed=signed, problems=problems)

    def _walk(self, known: list[LedgerEntry]) -> tuple[list[LedgerEntry], list[str]]:
        """The chain from `known` (a prefix verified before) on, and what is wrong with it."""
        numbers = self._numbers()
        problems: list[str] = []
        if known and (len(numbers) < len(known) or self._reread_hash(known[-1].seq) != known[-1].hash):
            problems.append(
                f"entry {known[-1].seq}, verified before, is gone or changed: entries were removed or rewritten"
            )
            return known, problems
        entries = list(known)
        seen_signed = any(e.signature is not None for e in entries)
        for seq in numbers[len(entries):]:
            position = len(entries) + 1
            if seq != position:
                problems.append(f"entry {position} is missing (next is {seq})")
                break
            try:
                entry = self._read(seq)
            except RegistryError as exc:
                problems.append(exc.message)
                break
            found = self._check_entry(seq, entry, entries[-1].hash if entries else GENESIS, seen_signed)
            problems += found
            if found:
                break  # nothing after a bad entry is trusted: each vouches for the ones before it
            seen_signed = seen_signed or entry.signature is not None
            entries.append(entry)
        if not problems:
            problems += self._check_head(entries[-1] if entries else None) + self._check_anchors(entries)
        return entries, problems

    def _check_entry(self, seq: int, entry: LedgerEntry, expected_prev: str, seen_signed: bool) -> list[str]:
        where = f"entry {seq} ({entry.action} at {entry.at:%Y-%m-%d %H:%M:%S})"
        problems = []
        if entry.seq != seq or entry.model != self.model:
            problems.append(f"{where} claims to be entry {entry.seq} of {entry.model[:80]!r}: moved or copied")
        if entry_hash(entry.body()) != entry.hash:
            problems.append(f"{where} was edited: its content does not match its hash")
        if entry.prev_hash != expected_prev:
            problems.append(f"{where} does not follow entry {seq - 1}: removed, reordered or edited before it")
        if self._key is not None:
            if entry.signature is not None:
                if not is_valid(self._key, entry.hash.encode(), entry.signature.encode()):
                    problems.append(f"{where}: the signature does not match (forged, or another key)")
            elif seen_signed:
                problems.append(f"{where} is unsigned after signed entries")
        return problems

    def _check_head(self, last: LedgerEntry | None) -> list[str]:
        try:
            head = self._head()
        except RegistryError as exc:
            return [exc.message]
        if head is None:
            return [] if last is None else ["the ledger has entries but no head"]
        if self._key is not None and (
            head.signature is None or not is_valid(self._key, head.signed_bytes(self.model), head.signature.encode())
        ):
            return ["the head's signature is missing or does not match"]
        found = self._reread_hash(head.seq)  # an entry appended since the listing is there now
        if (last is None or head.seq > last.seq) and found != head.hash:
            return [f"the head names entry {head.seq}, which is missing: entries were removed from the end"]
        if found != head.hash:
            return [f"entry {head.seq} differs from the one the head names"]
        return []

    def _check_anchors(self, entries: list[LedgerEntry]) -> list[str]:
        """Every alias file names the entry that moved it: that entry must be in the chain,
        unchanged, moving that alias to that version, and be the alias's latest move.

        Two states of a move in flight are not problems: an alias file naming an entry
        appended after the entries were listed (it is there now, with that hash), and a
        newest entry moving an alias whose file is not written yet. A move that stopped
        there (a killed promote) is flagged once anything is appended after it."""
        if self._anchors is None:
            return []
        try:
            anchors = self._anchors()
        except NonstopError as exc:  # a forged or unreadable alias file: nothing can be checked against it
            return [exc.message]
        problems = []
        for anchor in anchors:
            where = f"alias {anchor.alias!r} (v{anchor.version}) was moved at entry {anchor.seq}"
            if anchor.seq > len(entries):
                if self._reread_hash(anchor.seq) != anchor.hash:
                    problems.append(f"{where}, which is missing: entries were removed from the end (an older head restored?)")
                continue
            entry = entries[anchor.seq - 1]
            if entry.hash != anchor.hash:
                problems.append(f"{where}, which differs from the entry there now: the ledger was rewritten")
            elif (entry.kind, entry.alias, entry.version) != ("alias_move", anchor.alias, anchor.version):
                problems.append(f"{where}, but that entry is {entry.kind}/{entry.action} of {entry.alias!r}")
            later = [e.seq for e in entries[anchor.seq:-1] if e.kind == "alias_move" and e.alias == anchor.alias]
            if later:
                problems.append(
                    f"{where}, but entry {later[-1]} moved it since: the alias file is an older copy, or a move "
                    "stopped before its alias was written (promote again)"
                )
        return problems

    def _reread_hash(self, seq: int) -> str | None:
        try:
            return self._read(seq).hash
        except RegistryError:
            return None

    def _last(self) -> LedgerEntry | None:
        numbers = self._numbers()
        return self._read(numbers[-1]) if numbers else None

    def _numbers(self) -> list[int]:
        folder = self._storage.join(self.model, LEDGER_DIR)
        names = self._storage.list_dir(folder)
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isascii() and n[:-5].isdigit())

    def _read(self, seq: int) -> LedgerEntry:
        data = self._read_bounded(self._entry_path(seq), f"ledger entry {seq} of {self.model!r}")
        try:
            return LedgerEntry.model_validate_json(data)
        except ValidationError as exc:
            raise RegistryError(f"ledger entry {seq} of {self.model!r} is unreadable: {exc.error_count()} problem(s)") from exc

    def _head(self) -> LedgerHead | None:
        path = self._storage.join(self.model, LEDGER_DIR, HEAD_NAME)
        if not self._storage.exists(path):
            return None
        try:
            return LedgerHead.model_validate_json(self._read_bounded(path, f"the ledger head of {self.model!r}"))
        except ValidationError as exc:
            raise RegistryError(f"the ledger head of {self.model!r} is unreadable") from exc

    def _read_bounded(self, path: str, what: str) -> bytes:
        try:
            return self._storage.read_bytes(path, MAX_ENTRY_BYTES)
        except StoredFileTooLarge as exc:
            raise StoredFileTooLarge(f"{what} is over the {MAX_ENTRY_BYTES} bytes allowed") from exc

    def _entry_path(self, seq: int) -> str:
        return self._storage.join(self.model, LEDGER_DIR, f"{seq:0{_SEQ_DIGITS}d}.json")

