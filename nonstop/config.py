"""Process-level settings, read once at the edge (CLI, app builder) and injected.

Model and registry code take these objects as arguments; only `Settings.from_env`
(pydantic-settings, variables prefixed `NONSTOP_`) looks at the environment, so a test or
a Ray job can always say exactly what it wants.

Security settings fail closed: a signing key that is set but empty or blank is an error,
never "signing off" (a Secret mounted with an empty value must not turn verification off),
and `NONSTOP_REQUIRE_SIGNATURES` makes a missing key an error too.
"""

from __future__ import annotations

from pathlib import Path

from typing import Annotated

from pydantic import SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nonstop.errors import ConfigError, validation_problems

ENV_PREFIX = "NONSTOP_"
DEFAULT_REGISTRY = "registry"
REGISTRY_ENV = f"{ENV_PREFIX}REGISTRY"
SIGNING_KEY_ENV = f"{ENV_PREFIX}SIGNING_KEY"
REQUIRE_SIGNATURES_ENV = f"{ENV_PREFIX}REQUIRE_SIGNATURES"
TRUSTED_TYPES_ENV = f"{ENV_PREFIX}TRUSTED_TYPES"
MIN_SIGNING_KEY_CHARS = 32


def normalize_registry_uri(uri: str) -> str:
    """Make a local path absolute: a replica's working directory is not the caller's."""
    if "://" in uri:
        return uri
    return str(Path(uri).expanduser().resolve())


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error must never echo the signing key back
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        validate_default=True,
        hide_input_in_errors=True,
    )

    registry: str = DEFAULT_REGISTRY
    signing_key: SecretStr | None = None
    require_signatures: bool | None = None
    """Refuse to run without a signing key. Unset, it is on wherever a key is set; an
    operator sets it explicitly (the KubeRay prod overlay does) so that a Secret that went
    missing stops serving instead of silently serving unsigned versions."""

    trusted_types: Annotated[tuple[str, ...], NoDecode] = ()
    """Exact type names trusted beyond a format's own list, comma-separated: the one
    setting serving (what replicas load) and training (what it publishes, how it judges
    production) both read. A version records at publishing the ones it needs."""

    @field_validator("trusted_types", mode="before")
    @classmethod
    def _exact_names(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):  # empty: nothing beyond the formats' own lists
            names = [n.strip() for n in value.split(",")] if value.strip() else []
        else:
            names = list(value)  # type: ignore[call-overload]
        bad = [n for n in names if not isinstance(n, str) or not n or any(c.isspace() for c in n) or n.endswith(".")]
        if bad:
            raise ValueError(f"{TRUSTED_TYPES_ENV} holds exact type names, comma-separated; not {bad[:3]!r}")
        return tuple(sorted(set(names)))

    @field_validator("registry")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"{REGISTRY_ENV} is set but empty: unset it for ./{DEFAULT_REGISTRY}, or name a registry")
        return normalize_registry_uri(value)

    @field_validator("signing_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        """A short HMAC key can be guessed offline from any signed manifest; an empty one
        is a misconfiguration (an empty Secret), not a request to turn signing off."""
        if value is None:
            return None
        secret = value.get_secret_value()
        if not secret.strip():
            raise ValueError(f"{SIGNING_KEY_ENV} is set but blank: unset it to run without signing, or set a key")
        if len(secret) < MIN_SIGNING_KEY_CHARS:
            raise ValueError(f"{SIGNING_KEY_ENV} must be at least {MIN_SIGNING_KEY_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _key_when_required(self) -> Settings:
        if self.signatures_required and self.signing_key is None:
            raise ValueError(
                f"{REQUIRE_SIGNATURES_ENV} is on but {SIGNING_KEY_ENV} is not set: "
                "refusing to read an unsigned registry (is the key's Secret missing?)"
            )
        return self

    @property
    def signatures_required(self) -> bool:
        return self.signing_key is not None if self.require_signatures is None else self.require_signatures

    @classmethod
    def from_env(cls, **overrides: str | None) -> Settings:
        """The environment's settings; overrides (CLI options) win where given."""
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            raise ConfigError(f"invalid settings: {validation_problems(exc)}") from exc
