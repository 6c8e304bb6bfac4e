"""Typed errors shared by the registry, training and serving.

An error says what went wrong and carries a stable short `reason` code (the one
vocabulary of metrics, `nonstop status` and load failures); it knows nothing of how it
is reported. The HTTP edge maps error types to statuses in one table
(serve_app/rest/v1_routes.py), the CLI maps them to exit codes (nonstop_ops/cli.py `main`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class NonstopError(Exception):
    """Base of every error this project raises on purpose."""

    reason: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- registry -------------------------------------------------------------------------


class ModelNotFound(NonstopError):
    reason = "model_not_found"


class VersionNotFound(NonstopError):
    reason = "version_not_found"


class AliasNotFound(NonstopError):
    reason = "alias_not_found"


class RegistryError(NonstopError):
    """The registry's storage is unreadable or inconsistent."""

    reason = "registry"


class StorageError(RegistryError):
    """The storage failed or holds something unreadable: a missing or unreadable file, a
    denied permission, an unreachable object store, a FIFO or device where a file belongs."""


class StoredFileTooLarge(StorageError):
    """A stored file over its size bound, refused before it is read whole or parsed."""


class TamperedAliasError(RegistryError):
    """An alias file whose signature is missing or wrong: it was not written by a holder
    of the signing key, so it may point anywhere, an old refused version included."""

    reason = "tampered_alias"


class LedgerTampered(RegistryError):
    """The promotion ledger does not verify: an entry edited, copied to another number,
    removed or unsigned, the head or an alias not matching the chain. Nothing acts on it:
    the rollouts of the model are blocked (the primary keeps serving) until it is repaired."""

    reason = "tampered_ledger"

    def __init__(self, model: str, problems: list[str]) -> None:
        super().__init__(f"the ledger of {model!r} does not verify: " + "; ".join(problems))
        self.model = model
        self.problems = problems

    def __reduce__(self) -> tuple[type[LedgerTampered], tuple[str, list[str]]]:
        """Rebuilt as itself across a process boundary (the controller actor)."""
        return type(self), (self.model, self.problems)


class LedgerEntryTooLarge(RegistryError):
    """An entry over the ledger's size bound, refused before anything is written (a larger
    one could never be read back, and nothing could append after it)."""

    reason = "ledger_entry_too_large"


class OldAliasFormat(RegistryError):
    """An alias file written before the ledger held the alias history (it carries a
    `history` list and no ledger position): refused, never guessed at."""

    reason = "old_alias_format"


# --- loading and verification (a refused version) -----------------------------------


class ModelLoadError(NonstopError):
    """A version could not be made servable; `reason` is a stable short code. A refusal
    for what the version holds is final for that version; one that `retried` says may
    not repeat (storage, the loading process) is tried again at the next poll."""

    reason = "load_failed"
    retried = False

    def __init__(self, model: str, version: int, detail: str) -> None:
        super().__init__(f"model {model!r} version {version} refused ({self.reason}): {detail}")
        self.model = model
        self.version = version
        self.detail = detail

    def __reduce__(self) -> tuple[type[ModelLoadError], tuple[str, int, str]]:
        """Rebuilt as itself on the other side of a process boundary (a replica's loader
        actor returns refusals as values); the default would call __init__ with the message."""
        return type(self), (self.model, self.version, self.detail)


class ArtifactIntegrityError(ModelLoadError):
    reason = "integrity"


class ArtifactUnreadableError(ModelLoadError):
    """The artifact could not be read from storage, or is over the size bound."""

    reason = "storage"
    retried = True  # storage may come back


class LoaderLost(ModelLoadError):
    """The process loading the version ended before it answered: its node went, or it was
    killed. A fresh loader tries again at the next poll."""

    reason = "loader_lost"
    retried = True


class LoaderCrashed(ModelLoadError):
    """Loading the version ended the loading process again, with a fresh loader: what
    the version holds crashes native code, so it is refused as any bad version is."""

    reason = "loader_crashed"


class ManifestError(ModelLoadError):
    reason = "manifest"


class TamperedManifestError(ModelLoadError):
    """The manifest is not what the registry published for this version: its signature is
    missing or wrong, or it names another model or version (copied from elsewhere)."""

    reason = "tampered_manifest"


class UntrustedArtifactError(ModelLoadError):
    reason = "untrusted_types"


class InvalidStructureError(ModelLoadError):
    """A trusted type whose internal arrays would send native code out of bounds or round
    in circles (a tree's child or feature index, a support vector count, a sparse index);
    refused before anything predicts with it, naming the type and the field."""

    reason = "invalid_structure"


class SampleMismatchError(ModelLoadError):
    reason = "sample_mismatch"


class SchemaMismatchError(ModelLoadError):
    reason = "schema_mismatch"


# --- serving ----------------------------------------------------------------------------


class UnknownModel(NonstopError):
    reason = "unknown_model"


class InvalidInput(NonstopError):
    reason = "invalid_input"


def validation_problems(exc: ValidationError) -> str:
    """pydantic's errors on one line, `field: message` each, never the refused input
    (which may be a secret)."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or exc.title}: {str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors()
    )


def clip(text: str, limit: int = 40) -> str:
    """Client text echoed in an error stays short, whatever the client sent."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PayloadTooLarge(NonstopError):
    reason = "payload_too_large"


class ModelNotReady(NonstopError):
    reason = "model_not_ready"


class ModelLoadPending(NonstopError):
    """A model that is served but not loaded on this replica could not be loaded within
    the request's bounded wait (the load goes on): worth trying again in `retry_after_s`."""

    reason = "model_loading"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[type[ModelLoadPending], tuple[str, int]]:
        return type(self), (self.message, self.retry_after_s)


# --- training ---------------------------------------------------------------------------


class DataValidationError(NonstopError):
    """Training data refused before anything is fitted or published."""

    reason = "invalid_data"


class ConfigError(NonstopError):
    reason = "invalid_config"
