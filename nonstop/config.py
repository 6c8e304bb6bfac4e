"""Process-level settings, read once at the edge (CLI, app builder) and injected.

Model and registry code take these objects as arguments; only `Settings.from_env`
looks at the environment, so a test or a Ray job can always say exactly what it wants.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator

DEFAULT_REGISTRY = "registry"
REGISTRY_ENV = "NONSTOP_REGISTRY"


def normalize_registry_uri(uri: str) -> str:
    """Make a local path absolute: a replica's working directory is not the caller's."""
    if "://" in uri:
        return uri
    return str(Path(uri).expanduser().resolve())


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    registry: str = DEFAULT_REGISTRY

    @field_validator("registry")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return normalize_registry_uri(value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: str | None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, str] = {}
        if env.get(REGISTRY_ENV):
            values["registry"] = env[REGISTRY_ENV]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
