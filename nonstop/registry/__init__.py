"""The model registry: immutable numbered versions and movable aliases, one facade.

`Registry` is what every caller uses; behind it each job has its module:
`versions` (publishing, manifests, artifacts, extras), `aliases` (the signed pointer
files), `names` (what may be named what), and the promotion ledger (nonstop/ledger.py),
which is the one record of every alias move. A move is appended to the ledger first and
the alias file written after, naming the entry: a failed append leaves the alias where
it was, and `rollback` reads the alias's lineage from the verified ledger.

A registry opened with a signing key signs what it publishes and refuses, on reading, a
manifest or alias whose signature is missing or wrong; one opened without a key neither
signs nor checks, so callers that have no key keep working against a signed registry.
What a killed publisher leaves is skipped by readers and listed by `leftovers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import SecretStr

from nonstop.errors import AliasNotFound, ConfigError
from nonstop.ledger import EntryDraft, Ledger, default_actor
from nonstop.manifest import Manifest, ManifestDraft
from nonstop.registry.aliases import MAX_ALIAS_BYTES, AliasRecord, Aliases, alias_lineage, parse_alias
from nonstop.registry.names import NAME, PRODUCTION, check_name
from nonstop.registry.versions import (
    ARTIFACT_NAME, MANIFEST_NAME, MAX_ARTIFACT_BYTES, MAX_MANIFEST_BYTES, Versions, parse_manifest,
)  # fmt: skip
from nonstop.storage import Storage, open_storage

__all__ = [
    "ARTIFACT_NAME", "MANIFEST_NAME", "MAX_ALIAS_BYTES", "MAX_ARTIFACT_BYTES", "MAX_MANIFEST_BYTES", "PRODUCTION",
    "AliasRecord", "Registry", "alias_lineage", "check_name", "parse_alias", "parse_manifest",
]  # fmt: skip


class Registry:
    def __init__(
        self,
        uri: str,
        storage: Storage | None = None,
        *,
        signing_key: SecretStr | None = None,
        max_artifact_bytes: int = MAX_ARTIFACT_BYTES,
    ) -> None:
        self.uri = uri
        self._storage = storage or open_storage(uri)
        self._signing_key = signing_key
        self._versions = Versions(uri, self._storage, signing_key, max_artifact_bytes)
        self._aliases = Aliases(self._storage, signing_key)

    @property
    def max_artifact_bytes(self) -> int:
        return self._versions.max_artifact_bytes

    # --- versions -------------------------------------------------------------------

    def models(self) -> list[str]:
        root = self._storage.join()
        return [m for m in self._storage.list_dir(root) if NAME.fullmatch(m) and self.versions(m)]

    def versions(self, model: str) -> list[int]:
        return self._versions.versions(model)

    def latest(self, model: str) -> int | None:
        versions = self.versions(model)
        return versions[-1] if versions else None

    def leftovers(self, model: str) -> list[str]:
        """What readers skip, for an operator to see (versions, then alias files)."""
        return self._versions.leftovers(model) + self._aliases.leftovers(model)

    def manifest(self, model: str, version: int) -> Manifest:
        return self._versions.manifest(model, version)

    def read_artifact(self, model: str, version: int, manifest: Manifest | None = None) -> bytes:
        return self._versions.read_artifact(model, version, manifest)

    def read_extra(self, model: str, version: int, name: str) -> bytes | None:
        return self._versions.read_extra(model, version, name)

    def extra_uri(self, model: str, version: int, name: str) -> str:
        return self._versions.extra_uri(model, version, name)

    def publish(
        self, model: str, artifact: bytes, draft: ManifestDraft, extras: Mapping[str, bytes] | None = None
    ) -> Manifest:
        return self._versions.publish(model, artifact, draft, extras)

    # --- aliases and the ledger ---------------------------------------------------------

    def aliases(self, model: str) -> dict[str, AliasRecord]:
        return {name: self.alias(model, name) for name in self._aliases.names(model)}

    def alias(self, model: str, alias: str) -> AliasRecord:
        return self._aliases.read(model, alias)

    def resolve(self, model: str, alias: str) -> int | None:
        """The alias's version, or None if the alias was never set."""
        try:
            return self.alias(model, alias).version
        except AliasNotFound:
            return None

    def ledger(self, model: str) -> Ledger:
        """The model's promotion ledger (nonstop/ledger.py), verified against the alias files."""
        check_name("model", model)
        return Ledger(self._storage, model, self._signing_key, anchors=lambda: self._aliases.anchors(model))

    def promote(
        self, model: str, version: int, alias: str = PRODUCTION, *, actor: str | None = None, reason: str = "",
        forced: bool = False,
    ) -> AliasRecord:
        """Point the alias at `version` (forced: past a failed quality gate): the ledger
        first, then the alias file naming the entry."""
        self.manifest(model, version)  # the target must exist: an alias never dangles
        check_name("alias", alias)
        return self._move(model, alias, version, "force_promote" if forced else "promote", actor, reason)

    def rollback(self, model: str, alias: str = PRODUCTION, *, actor: str | None = None, reason: str = "") -> AliasRecord:
        """Back to the alias's previous target, as the verified ledger records its moves."""
        current = self.alias(model, alias)
        lineage = alias_lineage(self.ledger(model).verified(), alias)
        if len(lineage) < 2:
            raise ConfigError(
                f"alias {alias!r} of {model!r} has no previous target to roll back to (targets in force: {lineage})"
            )
        if lineage[-1] != current.version:
            raise ConfigError(f"alias {alias!r} of {model!r} points at v{current.version}, not v{lineage[-1]} as the ledger says")
        target = lineage[-2]
        self.manifest(model, target)
        return self._move(model, alias, target, "rollback", actor, reason)

    def _move(
        self, model: str, alias: str, version: int, action: Literal["promote", "force_promote", "rollback"],
        actor: str | None, reason: str,
    ) -> AliasRecord:
        draft = EntryDraft(
            kind="alias_move", action=action, alias=alias, version=version,
            actor=actor or default_actor(), reason=reason, weight=0.0,
        )  # fmt: skip
        entry = self.ledger(model).append(draft)  # raises before the alias moves
        return self._aliases.write(model, entry)

    # --- turning signing on -------------------------------------------------------------

    def sign_unsigned(self, model: str) -> list[str]:
        """Sign the versions and aliases written before a key was set, as the operator
        vouches for them: a version only if its artifact still matches its manifest's
        digest, an alias only if it points at a published version. Anything signed with
        another key or edited since is refused, not re-signed."""
        key = self._signing_key
        if key is None:
            raise ConfigError("no signing key: set NONSTOP_SIGNING_KEY to sign a registry")
        signed = self._versions.sign_unsigned(model, key)
        return signed + self._aliases.sign_unsigned(model, key, lambda version: self.manifest(model, version))
