"""Versions: immutable, numbered, published artifact first and manifest last.

Layout under the registry URI::

    <model>/versions/<n>/model.skops     the artifact, written first
    <model>/versions/<n>/<extra>         optional files about it (model card, ...), next
    <model>/versions/<n>/manifest.sig    HMAC of the manifest bytes, when a signing key is set
    <model>/versions/<n>/manifest.json   written last: a version exists once it is here

Readers never see a half-published version because they only list versions that have
a manifest, and every file is written under a temporary name and renamed into place.
Only folders named by a canonical number (`7`, not `07` or `²`) are versions, so two
folders never alias one version. Every file is read with a size bound, checked before
it is parsed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime

from pydantic import SecretStr, ValidationError

from nonstop.errors import (
    ArtifactUnreadableError,
    ConfigError,
    ManifestError,
    ModelNotFound,
    RegistryError,
    StorageError,
    TamperedManifestError,
    VersionNotFound,
    validation_problems,
)
from nonstop.manifest import Manifest, ManifestDraft
from nonstop.redact import public_uri
from nonstop.registry.names import NAME, VERSION, check_name
from nonstop.signing import SIGNATURE_NAME, is_valid, sign
from nonstop.storage import Storage

ARTIFACT_NAME = "model.skops"
MANIFEST_NAME = "manifest.json"
_MAX_CLAIM_ATTEMPTS = 1000
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_SIGNATURE_BYTES = 1024
MAX_EXTRA_BYTES = 16 * 1024 * 1024
MAX_ARTIFACT_BYTES = 2 * 1024**3


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


class Versions:
    """The published versions of every model in one registry."""

    def __init__(self, uri: str, storage: Storage, signing_key: SecretStr | None, max_artifact_bytes: int) -> None:
        self.uri = uri
        self._storage = storage
        self._key = signing_key
        self.max_artifact_bytes = max_artifact_bytes

    # --- reading ------------------------------------------------------------------

    def versions(self, model: str) -> list[int]:
        """Published versions, ascending; claimed folders without a manifest are skipped."""
        return sorted(v for v in self._numbered(model) if self._storage.exists(self.path(model, v, MANIFEST_NAME)))

    def _numbered(self, model: str) -> list[int]:
        folder = self._storage.join(check_name("model", model), "versions")
        return [int(e) for e in self._storage.list_dir(folder) if VERSION.fullmatch(e)]

    def leftovers(self, model: str) -> list[str]:
        """Folders that are not canonical version numbers, versions claimed but never
        published (a publisher killed or still running), and temporary files."""
        found = []
        folder = self._storage.join(check_name("model", model), "versions")
        published = set(self.versions(model))
        for entry in self._storage.list_dir(folder):
            if not VERSION.fullmatch(entry):
                found.append(f"versions/{entry}: not a version number (ignored)")
            elif int(entry) not in published:
                found.append(f"versions/{entry}: claimed but never published (no manifest)")
        for version in published:
            for entry in self._storage.list_dir(self._storage.join(model, "versions", str(version))):
                if entry.startswith((".tmp-", ".claim")):
                    found.append(f"versions/{version}/{entry}: left by an interrupted write")
        return found

    def manifest(self, model: str, version: int) -> Manifest:
        data = self._manifest_bytes(model, version)
        if self._key is not None:
            self._check_signature(model, version, data, self._key)
        return parse_manifest(model, version, data)

    def _manifest_bytes(self, model: str, version: int) -> bytes:
        path = self.path(model, version, MANIFEST_NAME)
        if not self._storage.exists(path):
            if not self.versions(model):
                raise ModelNotFound(f"model {model!r} has no published version in {public_uri(self.uri)}")
            raise VersionNotFound(f"model {model!r} has no version {version}")
        return self._storage.read_bytes(path, MAX_MANIFEST_BYTES)

    def _check_signature(self, model: str, version: int, data: bytes, key: SecretStr) -> None:
        path = self.path(model, version, SIGNATURE_NAME)
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
        if not NAME.fullmatch(manifest.artifact) or manifest.artifact in (MANIFEST_NAME, SIGNATURE_NAME):
            # a path would let a manifest load (and the metadata endpoint vouch for) any file
            raise ManifestError(
                model, version, f"artifact {manifest.artifact[:80]!r} is not a file name inside the version's folder"
            )
        try:
            return self._storage.read_bytes(self.path(model, version, manifest.artifact), self.max_artifact_bytes)
        except StorageError as exc:
            raise ArtifactUnreadableError(model, version, exc.message) from exc

    def read_extra(self, model: str, version: int, name: str) -> bytes | None:
        """A file published beside the version, or None: extras are optional, and older
        versions predate the ones written today."""
        self.manifest(model, version)  # only published versions have extras worth reading
        path = self.path(model, version, check_name("extra", name))
        return self._storage.read_bytes(path, MAX_EXTRA_BYTES) if self._storage.exists(path) else None

    def extra_uri(self, model: str, version: int, name: str) -> str:
        """Where a person can open the file: a local path, or the object's URI."""
        path = self.path(model, version, check_name("extra", name))
        scheme, remote, _ = self.uri.partition("://")
        return f"{scheme}://{path}" if remote and scheme != "file" else path

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
        self._storage.write_atomic(self.path(model, version, ARTIFACT_NAME), artifact)
        for name, data in extras.items():
            self._storage.write_atomic(self.path(model, version, name), data)
        manifest = Manifest(
            **draft.model_dump(),
            model=model,
            version=version,
            created_at=datetime.now(UTC),
            artifact=ARTIFACT_NAME,
            sha256=hashlib.sha256(artifact).hexdigest(),
        )
        data = manifest.model_dump_json(indent=2).encode()
        if self._key is not None:
            self._storage.write_atomic(self.path(model, version, SIGNATURE_NAME), sign(self._key, data))
        self._storage.write_atomic(self.path(model, version, MANIFEST_NAME), data)
        return manifest

    def _claim_version(self, model: str) -> int:
        candidate = max(self._numbered(model), default=0) + 1
        for _ in range(_MAX_CLAIM_ATTEMPTS):
            if self._storage.claim_dir(self._storage.join(model, "versions", str(candidate))):
                return candidate
            candidate += 1
        raise RegistryError(f"could not claim a version number for {model!r}")

    # --- turning signing on -------------------------------------------------------------

    def sign_unsigned(self, model: str, key: SecretStr) -> list[str]:
        """Sign each version published before a key was set, only if its artifact still
        matches its manifest's digest; a signature that exists must be valid."""
        signed = []
        for version in self.versions(model):
            path = self.path(model, version, SIGNATURE_NAME)
            if self._storage.exists(path):
                self.manifest(model, version)
                continue
            data = self._manifest_bytes(model, version)
            manifest = parse_manifest(model, version, data)
            if hashlib.sha256(self.read_artifact(model, version, manifest)).hexdigest() != manifest.sha256:
                raise TamperedManifestError(model, version, "its artifact does not match its manifest's digest; not signed")
            self._storage.write_atomic(path, sign(key, data))
            signed.append(f"v{version}")
        return signed

    def path(self, model: str, version: int, name: str) -> str:
        return self._storage.join(check_name("model", model), "versions", str(version), name)
