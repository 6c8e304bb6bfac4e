"""The Ray Serve deployment: wires registry, holder, data plane and routes together.

Deployment options (replicas, health checks, user_config) come from serve_config.yaml;
the defaults here only matter for `serve run` without a config file.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import FastAPI
from pydantic import SecretStr
from ray import serve
from ray.serve import Application
from ray.serve.schema import ReplicaRank

from nonstop.config import Settings
from nonstop.loading import LoadedModel, TrustPolicy
from nonstop.registry import Registry
from serve_app.config import AppArgs, ModelTarget
from serve_app.dataplane import DataPlane, predict_batch
from serve_app.holder import ModelHolder
from serve_app.metrics import ServingMetrics
from serve_app.routes import create_api
from serve_app.status_board import board

HEARTBEAT_S = 5.0


@serve.deployment(num_replicas=2, health_check_period_s=5)
@serve.ingress()
class ModelServer:
    def __init__(self, args: AppArgs, signing_key: SecretStr | None = None) -> None:
        assert args.registry is not None, "build_app resolves the registry"
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._board = board()
        self._metrics = ServingMetrics()
        self._holder = ModelHolder(
            Registry(args.registry, signing_key=signing_key), TrustPolicy(extra_types=args.trusted_types), self._report
        )
        self._plane = DataPlane(self._holder, args.limits, self._predict, self._metrics)
        self._heartbeat: asyncio.Task[None] | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Called by Serve after __init__: the routes get this replica's data plane."""
        api = create_api()
        api.state.plane = self._plane
        return api

    async def reconfigure(self, config: dict[str, Any], rank: ReplicaRank | None = None) -> None:
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat())
        target = ModelTarget.model_validate(config)
        self._holder.rank = rank.rank if rank is not None else 0
        self._predict_batch.set_max_batch_size(target.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(target.batch_wait_timeout_s)
        await self._holder.configure(target)

    async def _predict(self, loaded: LoadedModel, matrix: np.ndarray) -> list[Any]:
        return await self._predict_batch((loaded, matrix))

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def _predict_batch(self, items: list[tuple[LoadedModel, np.ndarray]]) -> list[list[Any]]:
        """Requests that queued while the previous batch ran are predicted together:
        an idle server predicts at once, a busy one amortizes the estimator call."""
        self._metrics.batched(items[0][0].manifest.model, len(items))
        return predict_batch(items)

    async def check_health(self) -> None:
        if not self._holder.ready:
            error = self._holder.last_error
            raise RuntimeError(f"no usable model: {error.message if error else 'nothing loaded'}")

    async def _beat(self) -> None:
        """Fresh status for `nonstop status` and the served-version gauge, between swaps."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            self._metrics.refresh()
            self._report()

    def _report(self) -> None:
        current, error = self._holder.current, self._holder.last_error
        if current is not None:
            self._metrics.swapped(current.manifest.model, current.version, current.load_seconds)
        if error is not None and self._holder.target is not None:
            self._metrics.load_failed(self._holder.target.model, error)
        self._board.report.remote(
            self._replica_id,
            {
                "pid": os.getpid(),
                "model": current.manifest.model if current else None,
                "version": current.version if current else None,
                "since": current.loaded_at.isoformat() if current else None,
                "target": self._holder.target.describe() if self._holder.target else None,
                "last_error": error.message if error else None,
                "reported_at": datetime.now(UTC).isoformat(),
            },
        )


def build_app(args: dict[str, Any]) -> Application:
    """Application builder named by serve_config.yaml's import_path."""
    parsed = AppArgs.model_validate(args or {})
    settings = Settings.from_env()
    if parsed.registry is None:
        parsed = parsed.model_copy(update={"registry": settings.registry})
    # the signing key travels as an init argument, not in args: args show in the dashboard
    return ModelServer.bind(parsed, settings.signing_key)
