"""Schemas behind serve_config.yaml: `args` of the app and `user_config` of the deployment.

`args` change only with a redeploy (they restart replicas); `user_config` is applied in
place by `reconfigure`, which is how an operator pins or re-targets a model version.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nonstop.registry import PRODUCTION, check_name
from serve_app.rollout.policy import CanaryConfig
from serve_app.wire.limits import Limits


class ModelTarget(BaseModel):
    """The deployment's `user_config`: which model, and which version or alias of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    version: int | None = Field(default=None, ge=1, description="pin a version; excludes alias")
    alias: str | None = Field(default=None, description="follow an alias; 'production' if neither is set")
    poll_interval_s: float = Field(default=1.0, ge=0.1, le=3600, description="how often the alias (or a missing pinned version) is looked up")
    allow_schema_change: bool = Field(
        default=False,
        description="serve a version whose features differ from the one being served",
    )
    max_batch_size: int = Field(default=64, ge=1, le=4096, description="requests predicted together at most")
    batch_wait_timeout_s: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="how long a batch waits to fill; 0 takes what queued while the last batch ran",
    )
    canary: CanaryConfig | None = Field(default=None, description="roll a candidate out to the followed alias (README, Canary)")

    @model_validator(mode="after")
    def _one_target(self) -> ModelTarget:
        check_name("model", self.model)
        if self.version is not None and self.alias is not None:
            raise ValueError("set either 'version' or 'alias', not both")
        if self.alias is not None:
            check_name("alias", self.alias)
        if self.canary is not None and self.version is not None:
            raise ValueError("canary: a pinned 'version' serves that version only; follow an alias to run a canary")
        return self

    @property
    def followed_alias(self) -> str | None:
        if self.version is not None:
            return None
        return self.alias or PRODUCTION

    def describe(self) -> str:
        return f"{self.model} v{self.version}" if self.version else f"{self.model}@{self.followed_alias}"


class AppArgs(BaseModel):
    """The application's `args`. `registry` falls back to NONSTOP_REGISTRY of the cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry: str | None = None
    trusted_types: tuple[str, ...] = ()
    limits: Limits = Limits()
