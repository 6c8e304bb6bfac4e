"""Aliases: movable, signed pointers at versions, each bound to the ledger entry that moved it.

Layout under the registry URI::

    <model>/aliases/<name>.json   target, the ledger position and hash it was moved at,
                                  and an HMAC of all that (with a key); replaced atomically

An alias file holds the pointer only: the history of its moves (and what `rollback` goes
back to) is the promotion ledger's (nonstop/ledger.py). The ledger position lets the
ledger's verification catch a ledger cut back below the alias's last move, even when an
older signed head is restored with it. Files written before that (with a `history` list
and no ledger position) are refused with `OldAliasFormat`; promoting the alias again
rewrites it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from nonstop.errors import AliasNotFound, OldAliasFormat, RegistryError, TamperedAliasError, validation_problems
from nonstop.ledger import Anchor, LedgerEntry
from nonstop.registry.names import check_name
from nonstop.signing import is_valid, sign
from nonstop.storage import Storage

MAX_ALIAS_BYTES = 64 * 1024


class AliasRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alias: str
    version: int
    ledger_seq: int = Field(ge=1, description="the ledger entry that moved the alias here")
    ledger_hash: str = Field(max_length=64, description="that entry's hash")
    signature: str | None = Field(default=None, description="HMAC of the model name and this record without it")

    def signed_bytes(self, model: str) -> bytes:
        return f"{model}\n".encode() + self.model_dump_json(exclude={"signature"}).encode()

    def anchor(self) -> Anchor:
        return Anchor(alias=self.alias, version=self.version, seq=self.ledger_seq, hash=self.ledger_hash)


def parse_alias(model: str, alias: str, data: bytes, source: str = "") -> AliasRecord:
    """An alias file's bytes, which must name this alias: the signature covers the record,
    the name check binds it to where it lies (a signed `canary` copied over `production`
    is refused, key or no key)."""
    try:
        record = AliasRecord.model_validate_json(data)
    except ValidationError as exc:
        if any(e["loc"] == ("history",) and e["type"] == "extra_forbidden" for e in exc.errors()):
            raise OldAliasFormat(
                f"alias file {source or alias!r} of {model!r} is in the old format (a history list, no ledger "
                "position): the ledger now holds alias history; promote the alias again to rewrite it"
            ) from exc
        raise RegistryError(f"alias {alias!r} of {model!r} is unreadable: {validation_problems(exc)}") from exc
    if record.alias != alias:
        raise TamperedAliasError(
            f"alias {alias!r} of {model!r} holds the record of alias {record.alias[:80]!r} (copied over it?)"
        )
    return record


class Aliases:
    """The alias files of every model in one registry."""

    def __init__(self, storage: Storage, signing_key: SecretStr | None) -> None:
        self._storage = storage
        self._key = signing_key

    def names(self, model: str) -> list[str]:
        folder = self._storage.join(check_name("model", model), "aliases")
        return sorted(e.removesuffix(".json") for e in self._storage.list_dir(folder) if e.endswith(".json") and not e.startswith("."))

    def read(self, model: str, alias: str) -> AliasRecord:
        """The record, its signature checked with a key."""
        record = self._read_unchecked(model, alias)
        if self._key is not None:
            self._check_signature(model, record, self._key)
        return record

    def anchors(self, model: str) -> list[Anchor]:
        """Where each alias says it was moved, for the ledger's verification."""
        return [self.read(model, name).anchor() for name in self.names(model)]

    def _read_unchecked(self, model: str, alias: str) -> AliasRecord:
        path = self.path(model, alias)
        if not self._storage.exists(path):
            raise AliasNotFound(f"model {model!r} has no alias {alias!r}")
        return parse_alias(model, alias, self._storage.read_bytes(path, MAX_ALIAS_BYTES), source=path)

    def _check_signature(self, model: str, record: AliasRecord, key: SecretStr) -> None:
        where = f"alias {record.alias!r} of {model!r} (pointing at v{record.version})"
        if record.signature is None:
            raise TamperedAliasError(f"{where} has no signature (written without a signing key?); see `nonstop sign`")
        if not is_valid(key, record.signed_bytes(model), record.signature.encode()):
            raise TamperedAliasError(f"{where}: the signature does not match (edited, copied, or another key)")

    def write(self, model: str, entry: LedgerEntry) -> AliasRecord:
        """Point the alias at the version the ledger entry `entry` moved it to; the entry
        is appended first, so a failed append never moves an alias."""
        if entry.version is None:
            raise RegistryError(f"ledger entry {entry.seq} of {model!r} moves no alias")
        record = AliasRecord(alias=entry.alias, version=entry.version, ledger_seq=entry.seq, ledger_hash=entry.hash)
        return self._write(model, record)

    def _write(self, model: str, record: AliasRecord) -> AliasRecord:
        if self._key is not None:
            record = record.model_copy(update={"signature": sign(self._key, record.signed_bytes(model)).decode()})
        self._storage.write_atomic(self.path(model, record.alias), record.model_dump_json(indent=2).encode())
        return record

    def sign_unsigned(self, model: str, key: SecretStr, check_target: Callable[[int], object]) -> list[str]:
        """Sign each alias written before a key was set, only if `check_target` accepts the
        version it points at; one signed with another key or edited since is refused."""
        signed = []
        for name in self.names(model):
            record = self._read_unchecked(model, name)
            if record.signature is not None:
                self._check_signature(model, record, key)
                continue
            check_target(record.version)
            self._write(model, record)
            signed.append(f"alias {name} -> v{record.version}")
        return signed

    def leftovers(self, model: str) -> list[str]:
        folder = self._storage.join(check_name("model", model), "aliases")
        return [f"aliases/{e}: left by an interrupted write" for e in self._storage.list_dir(folder) if e.startswith(".tmp-")]

    def path(self, model: str, alias: str) -> str:
        return self._storage.join(check_name("model", model), "aliases", f"{check_name('alias', alias)}.json")


def alias_lineage(entries: Sequence[LedgerEntry], alias: str) -> list[int]:
    """The alias's targets still in force, from its moves in the ledger: a promote pushes,
    a rollback pops; what `rollback` goes back to is the one below the top."""
    stack: list[int] = []
    for entry in entries:
        if entry.kind != "alias_move" or entry.alias != alias or entry.version is None:
            continue
        if entry.action == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(entry.version)
    return stack
