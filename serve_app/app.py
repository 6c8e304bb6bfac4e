"""The Ray Serve deployment: wires registry, holder, data plane and routes together.

Deployment options (replicas, health checks, user_config) live in serve_config.yaml
only; the decorators here set none of them.

Readiness: a replica without a version to serve (an empty registry, a pinned version not
published yet, a registry that cannot be read right now) is healthy for Serve and says
so in every answer: predict gets 503 naming the reason, `GET /v1/models/{model}` shows
`ready: false` and `last_error`, `nonstop status` and the `nonstop_ready` gauge show
it. `check_health` deliberately does not fail for a missing model: Serve (2.60,
deployment_state.py) kills a replica whose health check fails three times in a row, and
counts a failed initial health check as a failed start, so after min(20, 3 x replicas)
of them the deployment is DEPLOY_FAILED and stays so even once a version appears.
Failing the health check is kept for a replica that is really broken: its poller died.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import SecretStr, ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.schema import ReplicaRank

from nonstop.config import Settings
from nonstop.errors import ConfigError, validation_problems
from nonstop.loading import LoadedModel, TrustPolicy
from nonstop.registry import Registry
from serve_app.config import AppArgs, ModelTarget
from serve_app.grpc_v2 import oip_v2_pb2 as pb
from serve_app.grpc_v2.servicer import GrpcV2, request_key
from serve_app.replica.dataplane import PREDICTIONS_ONLY, DataPlane, Job, Output, Outputs, run_batch
from serve_app.replica.holder import ModelHolder
from serve_app.replica.loader_actor import OutOfProcessLoader
from serve_app.replica.serving_metrics import ServingMetrics
from serve_app.replica.state import ReplicaStatus
from serve_app.replica.status_board import board
from serve_app.rest.api import create_api
from serve_app.rest.front import Front
from serve_app.rollout.canary import Canary
from serve_app.rollout.controller import ControllerLink
from serve_app.rollout.moves import Rollouts

HEARTBEAT_S = 5.0
log = logging.getLogger("nonstop.app")


@serve.deployment
@serve.ingress()
class ModelServer:
    def __init__(self, args: AppArgs, registry: str, signing_key: SecretStr | None = None) -> None:
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._board = board()
        self._metrics = ServingMetrics()
        policy = TrustPolicy(extra_types=args.trusted_types)
        store, loader = Registry(registry, signing_key=signing_key), OutOfProcessLoader(registry, signing_key, policy)
        self._holder = ModelHolder(store, policy, self._report, load=loader)
        self._link = ControllerLink(registry, signing_key)
        self._store = store
        self._canary = Canary(store, policy, self._holder.hold, self._link.send, self._score, load=loader)
        self._plane = DataPlane(self._holder, self._predict, self._metrics, self._canary)
        self._limits = args.limits
        self._grpc = GrpcV2(self._plane, args.limits)
        self._heartbeat: asyncio.Task[None] | None = None
        self._following: asyncio.Task[None] | None = None
        self._applying: asyncio.Task[None] | None = None

    def __serve_build_asgi_app__(self) -> Front:
        """Called by Serve after __init__: the routes get this replica's data plane."""
        return create_api(self._plane, self._limits)

    # OIP v2 over gRPC: Serve calls the method named after the RPC (serve_app/grpc_v2/servicer.py)
    async def ServerLive(self, request: pb.ServerLiveRequest, grpc_context: RayServegRPCContext) -> pb.ServerLiveResponse:  # noqa: N802
        return await self._grpc.answer(self._grpc.server_live, request, grpc_context, pb.ServerLiveResponse)

    async def ServerReady(self, request: pb.ServerReadyRequest, grpc_context: RayServegRPCContext) -> pb.ServerReadyResponse:  # noqa: N802
        return await self._grpc.answer(self._grpc.server_ready, request, grpc_context, pb.ServerReadyResponse)

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, grpc_context: RayServegRPCContext
    ) -> pb.ServerMetadataResponse:
        return await self._grpc.answer(self._grpc.server_metadata, request, grpc_context, pb.ServerMetadataResponse)

    async def ModelReady(self, request: pb.ModelReadyRequest, grpc_context: RayServegRPCContext) -> pb.ModelReadyResponse:  # noqa: N802
        return await self._grpc.answer(self._grpc.model_ready, request, grpc_context, pb.ModelReadyResponse, request.name)

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, grpc_context: RayServegRPCContext
    ) -> pb.ModelMetadataResponse:
        return await self._grpc.answer(self._grpc.model_metadata, request, grpc_context, pb.ModelMetadataResponse, request.name)

    async def ModelInfer(self, request: pb.ModelInferRequest, grpc_context: RayServegRPCContext) -> pb.ModelInferResponse:  # noqa: N802
        infer = functools.partial(self._grpc.model_infer, key=request_key(grpc_context))
        return await self._grpc.answer(infer, request, grpc_context, pb.ModelInferResponse, request.model_name)

    async def reconfigure(self, config: dict[str, Any], rank: ReplicaRank | None = None) -> None:
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat())
        if self._following is None:
            self._following = asyncio.create_task(self._follow_rollouts())
        try:
            target = ModelTarget.model_validate(config)
        except (ValidationError, ConfigError) as exc:
            self._refuse(exc)
            return
        self._holder.config_refused(None)
        self._holder.rank = rank.rank if rank is not None else 0
        self._predict_batch.set_max_batch_size(target.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(target.batch_wait_timeout_s)
        await self._holder.configure(target)
        if self._applying is not None:
            self._applying.cancel()
        self._applying = asyncio.create_task(self._apply_canary(target))

    def _refuse(self, exc: ValidationError | ConfigError) -> None:
        """A bad user_config is refused, never half applied. Raising would make Serve stop
        this replica (2.60 deployment_state: a failed reconfigure is a failed start), so a
        replica that serves keeps its last good target and says why in every answer; one
        that never had a target has nothing to keep serving, and fails to start."""
        problems = validation_problems(exc) if isinstance(exc, ValidationError) else exc.message
        current = self._holder.state.target
        if current is None:
            raise ConfigError(f"user_config refused: {problems}") from None
        message = f"user_config refused, still serving {current.describe()}: {problems}"
        log.error(message)
        self._holder.config_refused(message)

    async def _apply_canary(self, target: ModelTarget) -> None:
        """The config's canary block, to the alias's controller (serve_app/rollout/moves.py
        `apply_config`), retried while the controller is out of reach (restarting)."""
        alias = target.followed_alias
        if alias is None:
            return
        canary = target.canary.model_dump(mode="json") if target.canary is not None else None
        if canary is None and not (await asyncio.to_thread(Rollouts(self._store, target.model, alias).state)).from_config:
            return  # no block, none before it: no controller is needed for this
        while True:
            try:
                outcome = await self._link.apply_config(target.model, alias, canary)
                break
            except Exception as exc:  # the controller restarting, Ray busy: the next try may reach it
                log.warning("cannot hand the canary block to the rollout controller yet: %r", exc)
                await asyncio.sleep(1.0)
        if outcome["refused"]:
            self._holder.config_refused(f"user_config canary refused: {outcome['refused']}")

    async def _predict(self, job: Job) -> Outputs:
        if job.loaded.fast is not None and job.outputs == PREDICTIONS_ONLY:
            # The numpy path predicts at once: queueing for a batch (a task hop, Serve's
            # batch metrics) would cost more than batching saves (profiled by
            # benchmarks/profile_serving.py). Not a batch, so nonstop_batch_size does
            # not count it, nor pays for observing it.
            return run_batch([job])[0]
        return await self._predict_batch(job)

    async def _score(self, loaded: LoadedModel, matrix: np.ndarray) -> list[Any]:
        """A rollout's comparison, predicted as any request of its version is."""
        return (await self._predict(Job(loaded, matrix)))[Output.PREDICTIONS]

    @serve.batch
    async def _predict_batch(self, jobs: list[Job]) -> list[Outputs]:
        """Requests that queued while the previous batch ran are predicted together:
        an idle server predicts at once, a busy one amortizes the estimator call.
        Size and wait come from user_config (reconfigure runs before any request)."""
        self._metrics.batched(jobs[0].loaded.manifest.model, len(jobs))
        return run_batch(jobs)

    async def check_health(self) -> None:
        """Fails only for a broken replica, never for a missing model (module doc)."""
        if not self._holder.polling:
            raise RuntimeError("the registry poller of this replica stopped")

    async def _follow_rollouts(self) -> None:
        """The alias's rollout in the ledger, at the alias's poll interval (serve_app/rollout/canary.py)."""
        while True:
            target = self._holder.state.target
            await asyncio.sleep(target.poll_interval_s if target else 1.0)
            try:
                await self._canary.sync(self._holder.state)
            except Exception:  # the follower must outlive any surprise; the next poll retries
                log.exception("following the rollout failed")

    async def _beat(self) -> None:
        """Fresh status for `nonstop status` and the gauges, between changes."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            status = self._status()
            self._metrics.refresh(status)
            self._board.report.remote(status)

    def _status(self) -> ReplicaStatus:
        return self._holder.state.status(self._replica_id, os.getpid(), datetime.now(UTC))

    def _report(self) -> None:
        status = self._status()
        self._metrics.observe(status)
        self._board.report.remote(status)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder named by serve_config.yaml's import_path."""
    parsed = AppArgs.model_validate(args or {})
    settings = Settings.from_env()
    # the signing key travels as an init argument, not in args: args show in the dashboard
    return ModelServer.bind(parsed, parsed.registry or settings.registry, settings.signing_key)
