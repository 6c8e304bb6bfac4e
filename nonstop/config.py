"""Process-level settings, read once at the edge (CLI, app builder) and injected.

Model and registry code take these objects as arguments; only `Settings.from_env`
looks at the environment, so a test or a Ray job can always say exactly what it wants.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_validator

from nonstop.errors import ConfigError, validation_problems

DEFAULT_REGISTRY = "registry"
REGISTRY_ENV = "NONSTOP_REGISTRY"
SIGNING_KEY_ENV = "NONSTOP_SIGNING_KEY"
MIN_SIGNING_KEY_CHARS = 32


def normalize_registry_uri(uri: str) -> str:
    """Make a local path absolute: a replica's working directory is not the caller's."""
    if "://" in uri:
        return uri
    return str(Path(uri).expanduser().resolve())


class Settings(BaseModel):
    # hide_input_in_errors: a validation error must never echo the signing key back
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, hide_input_in_errors=True)

    registry: str = DEFAULT_REGISTRY
    signing_key: SecretStr | None = None

    @field_validator("registry")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return normalize_registry_uri(value)

    @field_validator("signing_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        """A short HMAC key can be guessed offline from any signed manifest."""
        if value is not None and len(value.get_secret_value()) < MIN_SIGNING_KEY_CHARS:
            raise ValueError(f"{SIGNING_KEY_ENV} must be at least {MIN_SIGNING_KEY_CHARS} characters")
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: str | None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, str] = {}
        if env.get(REGISTRY_ENV):
            values["registry"] = env[REGISTRY_ENV]
        if env.get(SIGNING_KEY_ENV):
            values["signing_key"] = env[SIGNING_KEY_ENV]
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(f"invalid settings: {validation_problems(exc)}") from exc
