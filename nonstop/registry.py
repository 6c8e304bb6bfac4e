"""The model registry: immutable numbered versions and movable aliases.

Layout under the registry URI::

    <model>/versions/<n>/model.skops     the artifact, written first
    <model>/versions/<n>/<extra>         optional files about it (model card, ...), next
    <model>/versions/<n>/manifest.sig    HMAC of the manifest bytes, when a signing key is set
    <model>/versions/<n>/manifest.json   written last: a version exists once it is here
    <model>/aliases/<name>.json          target and history (signed, with a key), replaced atomically

Readers never see a half-published version because they only list versions that have
a manifest, and every file is written under a temporary name and renamed into place.
What a killed publisher leaves (a claimed folder without a manifest, a temporary file)
is skipped by readers and listed by `leftovers`. Only folders named by a canonical
number (`7`, not `07` or `²`) are versions, so two folders never alias one version.
Every file is read with a size bound, checked before it is parsed.
A registry opened with a signing key signs what it publishes and refuses, on reading, a
manifest or alias whose signature is missing or wrong; one opened without a key neither signs
nor checks, so callers that have no key keep working against a signed registry.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from nonstop.errors import (
    AliasNotFound,
    ArtifactUnreadableError,
    ConfigError,
    ManifestError,
    ModelNotFound,
    RegistryError,
    StorageError,
    TamperedAliasError,
    TamperedManifestError,
    VersionNotFound,
    validation_problems,
)
from nonstop.ledger import EntryDraft, Ledger, default_actor
from nonstop.manifest import Manifest, ManifestDraft
from nonstop.redact import public_uri
from nonstop.signing import SIGNATURE_NAME, is_valid, sign
from nonstop.storage import Storage, open_storage

ARTIFACT_NAME = "model.skops"
MANIFEST_NAME = "manifest.json"
PRODUCTION = "production"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch: `$` would let a trailing newline in
_VERSION = re.compile(r"[1-9][0-9]{0,17}")  # ASCII digits, no leading zero: one folder per version
_MAX_CLAIM_ATTEMPTS = 1000
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_ALIAS_BYTES = 1024 * 1024  # about ten thousand promotions of history
MAX_SIGNATURE_BYTES = 1024
MAX_EXTRA_BYTES = 16 * 1024 * 1024
MAX_ARTIFACT_BYTES = 2 * 1024**3


class AliasEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    action: Literal["promote", "force_promote", "rollback"]  # force_promote: past a failed quality gate
    at: datetime


class AliasRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alias: str
    version: int
    history: list[AliasEvent]
    signature: str | None = Field(default=None, description="HMAC of the model name and this record without it")

    def signed_bytes(self, model: str) -> bytes:
        return f"{model}\n".encode() + self.model_dump_json(exclude={"signature"}).encode()

    def lineage(self) -> list[int]:
        """Targets still in force: a promote pushes, a rollback pops."""
        stack: list[int] = []
        for event in self.history:
            if event.action in ("promote", "force_promote"):
                stack.append(event.version)
            elif stack:
                stack.pop()
        return stack


def parse_manifest(model: str, version: int, data: bytes) -> Manifest:
    """A manifest's bytes, which must describe this model and version."""
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise RegistryError(f"model {model!r} version {version}: unreadable manifest: {validation_problems(exc)}") from exc
    if (manifest.model, manifest.version) != (model, version):
        # a signature covers the bytes, not where they lie: a copied manifest is caught here
        raise TamperedManifestError(
            model, version, f"the manifest describes {manifest.model[:80]!r} version {manifest.version}"
        )
    return manifest


def parse_alias(model: str, alias: str, data: bytes) -> AliasRecord:
    """An alias file's bytes, which must name this alias: the signature covers the record,
    the name check binds it to where it lies (a signed `canary` copied over `production`
    is refused, key or no key)."""
    try:
        record = AliasRecord.model_validate_json(data)
    except ValidationError as exc:
        raise RegistryError(f"alias {alias!r} of {model!r} is unreadable: {validation_problems(exc)}") from exc
    if record.alias != alias:
        raise TamperedAliasError(
            f"alias {alias!r} of {model!r} holds the record of alias {record.alias[:80]!r} (copied over it?)"
        )
    return record


def check_name(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"invalid {kind} name {name!r}: use letters, digits, '_', '.', '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return name


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
        self.max_artifact_bytes = max_artifact_bytes

    # --- reading ------------------------------------------------------------------

    def models(self) -> list[str]:
        root = self._storage.join()
        return [m for m in self._storage.list_dir(root) if _NAME.fullmatch(m) and self.versions(m)]

    def versions(self, model: str) -> list[int]:
        """Published versions, ascending; claimed folders without a manifest are skipped."""
        return sorted(v for v in self._numbered(model) if self._storage.exists(self._version_path(model, v, MANIFEST_NAME)))

    def _numbered(self, model: str) -> list[int]:
        folder = self._storage.join(check_name("model", model), "versions")
        return [int(e) for e in self._storage.list_dir(folder) if _VERSION.fullmatch(e)]

    def leftovers(self, model: str) -> list[str]:
        """What readers skip, for an operator to see: folders that are not canonical
        version numbers, versions claimed but never published (a publisher killed or still
        running), and temporary files of interrupted writes."""
        found = []
        folder = self._storage.join(check_name("model", model), "versions")
        published = set(self.versions(model))
        for entry in self._storage.list_dir(folder):
            if not _VERSION.fullmatch(entry):
                found.append(f"versions/{entry}: not a version number (ignored)")
            elif int(entry) not in published:
                found.append(f"versions/{entry}: claimed but never published (no manifest)")
        for version in published:
            for entry in self._storage.list_dir(self._storage.join(model, "versions", str(version))):
                if entry.startswith((".tmp-", ".claim")):
                    found.append(f"versions/{version}/{entry}: left by an interrupted write")
        for entry in self._storage.list_dir(self._storage.join(model, "aliases")):
            if entry.startswith(".tmp-"):
                found.append(f"aliases/{entry}: left by an interrupted write")
        return found

    def manifest(self, model: str, version: int) -> Manifest:
        data = self._manifest_bytes(model, version)
        if self._signing_key is not None:
            self._check_signature(model, version, data, self._signing_key)
        return parse_manifest(model, version, data)

    def _manifest_bytes(self, model: str, version: int) -> bytes:
        path = self._version_path(model, version, MANIFEST_NAME)
        if not self._storage.exists(path):
            if not self.versions(model):
                raise ModelNotFound(f"model {model!r} has no published version in {public_uri(self.uri)}")
            raise VersionNotFound(f"model {model!r} has no version {version}")
        return self._storage.read_bytes(path, MAX_MANIFEST_BYTES)

    def _check_signature(self, model: str, version: int, data: bytes, key: SecretStr) -> None:
        path = self._version_path(model, version, SIGNATURE_NAME)
        if not self._storage.exists(path):
            raise TamperedManifestError(
                model, version, "the manifest has no signature (published without a signing key?)"
            )
        if not is_valid(key, data, self._storage.read_bytes(path, MAX_SIGNATURE_BYTES)):
            raise TamperedManifestError(
                model, version, "the manifest's signature does not match (edited, or signed with another key)"
            )

    def read_artifact(self, model: str, version: int, manifest: Manifest | None = None) -> bytes:
        """Pass the manifest already read (and verified) to spare reading it again."""
        manifest = manifest or self.manifest(model, version)
        if not _NAME.fullmatch(manifest.artifact) or manifest.artifact in (MANIFEST_NAME, SIGNATURE_NAME):
            # a path would let a manifest load (and the metadata endpoint vouch for) any file
            raise ManifestError(
                model, version, f"artifact {manifest.artifact[:80]!r} is not a file name inside the version's folder"
            )
        try:
            return self._storage.read_bytes(self._version_path(model, version, manifest.artifact), self.max_artifact_bytes)
        except StorageError as exc:
            raise ArtifactUnreadableError(model, version, exc.message) from exc

    def read_extra(self, model: str, version: int, name: str) -> bytes | None:
        """A file published beside the version, or None: extras are optional, and older
        versions predate the ones written today."""
        self.manifest(model, version)  # only published versions have extras worth reading
        path = self._version_path(model, version, check_name("extra", name))
        return self._storage.read_bytes(path, MAX_EXTRA_BYTES) if self._storage.exists(path) else None

    def extra_uri(self, model: str, version: int, name: str) -> str:
        """Where a person can open the file: a local path, or the object's URI."""
        path = self._version_path(model, version, check_name("extra", name))
        scheme, remote, _ = self.uri.partition("://")
        return f"{scheme}://{path}" if remote and scheme != "file" else path

    def latest(self, model: str) -> int | None:
        versions = self.versions(model)
        return versions[-1] if versions else None

    # --- publishing -----------------------------------------------------------------

    def publish(
        self, model: str, artifact: bytes, draft: ManifestDraft, extras: Mapping[str, bytes] | None = None
    ) -> Manifest:
        """Claim the next version, write the artifact, extras and signature, then the manifest
        that reveals it."""
        check_name("model", model)
        extras = extras or {}
        reserved = sorted({check_name("extra", n) for n in extras} & {ARTIFACT_NAME, MANIFEST_NAME, SIGNATURE_NAME})
        if reserved:
            raise ConfigError(f"extra file name(s) {', '.join(reserved)} are reserved by the registry")
        version = self._claim_version(model)
        self._storage.write_atomic(self._version_path(model, version, ARTIFACT_NAME), artifact)
        for name, data in extras.items():
            self._storage.write_atomic(self._version_path(model, version, name), data)
        manifest = Manifest(
            **draft.model_dump(),
            model=model,
            version=version,
            created_at=datetime.now(UTC),
            artifact=ARTIFACT_NAME,
            sha256=hashlib.sha256(artifact).hexdigest(),
        )
        data = manifest.model_dump_json(indent=2).encode()
        if self._signing_key is not None:
            self._storage.write_atomic(self._version_path(model, version, SIGNATURE_NAME), sign(self._signing_key, data))
        self._storage.write_atomic(self._version_path(model, version, MANIFEST_NAME), data)
        return manifest

    def _claim_version(self, model: str) -> int:
        candidate = max(self._numbered(model), default=0) + 1
        for _ in range(_MAX_CLAIM_ATTEMPTS):
            if self._storage.claim_dir(self._storage.join(model, "versions", str(candidate))):
                return candidate
            candidate += 1
        raise RegistryError(f"could not claim a version number for {model!r}")

    # --- aliases ----------------------------------------------------------------------

    def aliases(self, model: str) -> dict[str, AliasRecord]:
        return {name: self.alias(model, name) for name in self._alias_names(model)}

    def _alias_names(self, model: str) -> list[str]:
        folder = self._storage.join(check_name("model", model), "aliases")
        return sorted(e.removesuffix(".json") for e in self._storage.list_dir(folder) if e.endswith(".json") and not e.startswith("."))

    def alias(self, model: str, alias: str) -> AliasRecord:
        record = self._read_alias(model, alias)
        if self._signing_key is not None:
            self._check_alias_signature(model, record, self._signing_key)
        return record

    def _read_alias(self, model: str, alias: str) -> AliasRecord:
        path = self._alias_path(model, alias)
        if not self._storage.exists(path):
            raise AliasNotFound(f"model {model!r} has no alias {alias!r}")
        return parse_alias(model, alias, self._storage.read_bytes(path, MAX_ALIAS_BYTES))

    def _check_alias_signature(self, model: str, record: AliasRecord, key: SecretStr) -> None:
        where = f"alias {record.alias!r} of {model!r} (pointing at v{record.version})"
        if record.signature is None:
            raise TamperedAliasError(f"{where} has no signature (written without a signing key?); see `nonstop sign`")
        if not is_valid(key, record.signed_bytes(model), record.signature.encode()):
            raise TamperedAliasError(f"{where}: the signature does not match (edited, copied, or another key)")

    def resolve(self, model: str, alias: str) -> int | None:
        """The alias's version, or None if the alias was never set."""
        try:
            return self.alias(model, alias).version
        except AliasNotFound:
            return None

    def ledger(self, model: str) -> Ledger:
        """The model's promotion ledger (nonstop/ledger.py): every alias move is appended."""
        return Ledger(self._storage, check_name("model", model), self._signing_key)

    def promote(
        self, model: str, version: int, alias: str = PRODUCTION, *, actor: str | None = None, reason: str = "",
        forced: bool = False,
    ) -> AliasRecord:
        self.manifest(model, version)  # the target must exist: an alias never dangles
        previous = self._history(model, alias)
        action: Literal["promote", "force_promote"] = "force_promote" if forced else "promote"
        record = self._write_alias(model, alias, version, [*previous, self._event(version, action)])
        self._record_move(model, record, action, actor, reason)
        return record

    def _record_move(self, model: str, record: AliasRecord, action: str, actor: str | None, reason: str) -> None:
        draft = EntryDraft(
            kind="alias_move", action=action, alias=record.alias, version=record.version,
            actor=actor or default_actor(), reason=reason, weight=0.0,
        )  # fmt: skip
        self.ledger(model).append(draft)

    def rollback(self, model: str, alias: str = PRODUCTION, *, actor: str | None = None, reason: str = "") -> AliasRecord:
        record = self.alias(model, alias)
        lineage = record.lineage()
        if len(lineage) < 2:
            raise ConfigError(
                f"alias {alias!r} of {model!r} has no previous target to roll back to "
                f"(history: {[e.version for e in record.history]})"
            )
        target = lineage[-2]
        self.manifest(model, target)
        moved = self._write_alias(model, alias, target, [*record.history, self._event(target, "rollback")])
        self._record_move(model, moved, "rollback", actor, reason)
        return moved

    def _history(self, model: str, alias: str) -> list[AliasEvent]:
        """A forged alias's history is not carried on: a promote by a key holder takes the
        alias back and starts it afresh (a rollback, which needs that history, refuses)."""
        try:
            return list(self.alias(model, alias).history)
        except (AliasNotFound, TamperedAliasError):
            return []

    @staticmethod
    def _event(version: int, action: Literal["promote", "force_promote", "rollback"]) -> AliasEvent:
        return AliasEvent(version=version, action=action, at=datetime.now(UTC))

    def _write_alias(self, model: str, alias: str, version: int, history: list[AliasEvent]) -> AliasRecord:
        record = AliasRecord(alias=alias, version=version, history=history)
        if self._signing_key is not None:
            record = record.model_copy(update={"signature": sign(self._signing_key, record.signed_bytes(model)).decode()})
        self._storage.write_atomic(self._alias_path(model, alias), record.model_dump_json(indent=2).encode())
        return record

    # --- turning signing on -------------------------------------------------------------

    def sign_unsigned(self, model: str) -> list[str]:
        """Sign the versions and aliases written before a key was set, as the operator
        vouches for them: a version only if its artifact still matches its manifest's
        digest, an alias only if it points at a published version. Anything signed with
        another key or edited since is refused, not re-signed."""
        key = self._signing_key
        if key is None:
            raise ConfigError("no signing key: set NONSTOP_SIGNING_KEY to sign a registry")
        signed = []
        for version in self.versions(model):
            path = self._version_path(model, version, SIGNATURE_NAME)
            if self._storage.exists(path):
                self.manifest(model, version)  # a signature that exists must be valid
                continue
            data = self._manifest_bytes(model, version)
            manifest = parse_manifest(model, version, data)
            if hashlib.sha256(self.read_artifact(model, version, manifest)).hexdigest() != manifest.sha256:
                raise TamperedManifestError(model, version, "its artifact does not match its manifest's digest; not signed")
            self._storage.write_atomic(path, sign(key, data))
            signed.append(f"v{version}")
        for name in self._alias_names(model):
            record = self._read_alias(model, name)
            if record.signature is not None:
                self._check_alias_signature(model, record, key)
                continue
            self.manifest(model, record.version)
            self._write_alias(model, name, record.version, record.history)
            signed.append(f"alias {name} -> v{record.version}")
        return signed

    # --- paths ------------------------------------------------------------------------

    def _version_path(self, model: str, version: int, name: str) -> str:
        return self._storage.join(check_name("model", model), "versions", str(version), name)

    def _alias_path(self, model: str, alias: str) -> str:
        return self._storage.join(check_name("model", model), "aliases", f"{check_name('alias', alias)}.json")

