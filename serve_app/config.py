"""Schemas behind serve_config.yaml: `args` of the app and `user_config` of the deployment.

`args` change only with a redeploy (they restart replicas); `user_config` is applied in
place by `reconfigure`, which is how an operator pins or re-targets a model version.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nonstop.config import TRUSTED_TYPES_ENV
from nonstop.errors import ConfigError
from nonstop.capture import CaptureConfig
from nonstop.registry import PRODUCTION, check_name
from serve_app.replica.load_governor import LoadBudget
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
    capture: CaptureConfig = Field(default=CaptureConfig(), description="what is served, to Parquet (docs/capture.md); off by default")

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
    trusted_types: tuple[str, ...] = Field(default=(), description="moved to NONSTOP_TRUSTED_TYPES; refused here if set")
    limits: Limits = Limits()
    loading: LoadBudget = Field(default=LoadBudget(), description="the CPU a replica's model loads take (serve_app/replica/load_governor.py)")

    @model_validator(mode="after")
    def _trust_is_one_setting(self) -> AppArgs:
        """Trust was set twice (here and `nonstop train --trusted-type`) and drifted; an
        old config that still sets it is refused rather than silently ignored."""
        if self.trusted_types:
            raise ValueError(
                f"args.trusted_types ({', '.join(self.trusted_types)}) is no longer read: set {TRUSTED_TYPES_ENV} "
                "instead, the one setting serving and training both read"
            )
        return self


# --- many models per application (docs/many-models.md) ------------------------------------


class ModelEntry(BaseModel):
    """One model of `models:`, following its own alias or pinned version, with its own
    poller and (when it follows an alias) its own canary block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    version: int | None = Field(default=None, ge=1, description="pin a version; excludes alias")
    alias: str | None = Field(default=None, description="follow an alias; 'production' if neither is set")
    poll_interval_s: float = Field(default=1.0, ge=0.1, le=3600)
    allow_schema_change: bool = False
    canary: CanaryConfig | None = None


class Selector(BaseModel):
    """`select:` every model of the registry whose name matches `pattern` (shell-style:
    `*` is every model, `store_*` a family), each following `alias`. The registry's model
    list is read every `refresh_s`: a model published later is served from then on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str = Field(default="*", min_length=1, max_length=128, description="fnmatch pattern over model names")
    alias: str = Field(default=PRODUCTION, description="the alias every selected model follows")
    poll_interval_s: float = Field(default=5.0, ge=0.1, le=3600, description="how often each loaded model's alias is looked up")
    allow_schema_change: bool = False
    refresh_s: float = Field(default=30.0, ge=1.0, le=3600, description="how often the registry's model list is read")

    @model_validator(mode="after")
    def _names(self) -> Selector:
        check_name("alias", self.alias)
        return self

    def target(self, model: str) -> ModelTarget:
        return ModelTarget(
            model=model, alias=self.alias, poll_interval_s=self.poll_interval_s, allow_schema_change=self.allow_schema_change
        )


class Budget(BaseModel):
    """What one replica holds at most; past it, the least recently used model is evicted
    (its next request loads it again). `load_wait_s` bounds how long a request waits for
    its model to load: past it, 503 with Retry-After while the load goes on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_models: int | None = Field(default=None, ge=1, le=100_000, description="models held at most; none: no count bound")
    max_bytes: int | None = Field(default=None, ge=1, description="estimated bytes of loaded versions at most; none: no bound")
    load_wait_s: float = Field(default=10.0, ge=0.0, le=300.0, description="a request's wait for its model to load, at most")
    max_concurrent_loads: int = Field(default=2, ge=1, le=4, description="different models loading at once, at most (the loader's threads)")


class ManyModels(BaseModel):
    """The deployment's `user_config` when it serves many models: `models:` (each its own
    target) and/or `select:` (a name pattern over the registry), held within `budget`.
    Models load on their first request, not at deploy. A `user_config` with `model:` is
    the single-model form (`ModelTarget`), unchanged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[ModelEntry, ...] = ()
    select: Selector | None = None
    budget: Budget = Budget()
    max_batch_size: int = Field(default=64, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(default=0.0, ge=0.0, le=1.0)
    capture: CaptureConfig = CaptureConfig()

    @model_validator(mode="after")
    def _served(self) -> ManyModels:
        if not self.models and self.select is None:
            raise ValueError("name the models served: 'models' (a list), 'select' (a pattern over the registry), or both")
        names = [entry.model for entry in self.models]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"models: {', '.join(twice)} listed more than once")
        self.targets()  # every entry a valid target: names, version or alias, canary
        return self

    def targets(self) -> dict[str, ModelTarget]:
        """The listed models as the single-model targets their holders follow."""
        return {
            e.model: ModelTarget(
                model=e.model, version=e.version, alias=e.alias, poll_interval_s=e.poll_interval_s,
                allow_schema_change=e.allow_schema_change, canary=e.canary,
            )  # fmt: skip
            for e in self.models
        }

    def describe(self) -> str:
        parts = [f"{len(self.models)} listed model(s)"] if self.models else []
        if self.select is not None:
            parts.append(f"models matching {self.select.pattern!r}@{self.select.alias}")
        return " + ".join(parts)


ServedModels = ModelTarget | ManyModels


def parse_user_config(config: dict[str, object]) -> ServedModels:
    """The single-model form (`model:`) or the many-models form (`models:` / `select:`);
    a config mixing them is refused naming both."""
    many = "models" in config or "select" in config
    if many and "model" in config:
        raise ConfigError("user_config: set 'model' (one model) or 'models'/'select' (many), not both")
    return ManyModels.model_validate(config) if many else ModelTarget.model_validate(config)
