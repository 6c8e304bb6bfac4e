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
import logging
import os
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np
from pydantic import SecretStr, ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.schema import ReplicaRank

from nonstop.config import Settings
from nonstop.errors import ConfigError, LedgerTampered, validation_problems
from nonstop.loading import LoadedModel, TrustPolicy
from nonstop.registry import Registry
from serve_app.capture.live import LiveQuality
from serve_app.capture.outcomes import OutcomeSink
from serve_app.capture.recorder import Recorder
from serve_app.config import AppArgs, ManyModels, ModelTarget, ServedModels, parse_user_config
from serve_app.grpc_v2 import oip_v2_pb2 as pb
from serve_app.grpc_v2.servicer import GrpcV2, request_key
from serve_app.replica.batching import PREDICTIONS_ONLY, Job, Outcome, Output, Outputs, run_batch, settled
from serve_app.replica.dataplane import DataPlane
from serve_app.replica.heap import release_freed_memory
from serve_app.replica.holder import ModelHolder
from serve_app.replica.loader_actor import OutOfProcessLoader
from serve_app.replica.models import Canaries, ModelSet
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
    def __init__(self, args: AppArgs, registry: str, signing_key: SecretStr | None = None, policy: TrustPolicy | None = None) -> None:
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._board = board()
        self._metrics = ServingMetrics()
        policy = policy or TrustPolicy()
        app = serve.get_replica_context().app_name  # its replicas on a node share their loads
        store, loader = Registry(registry, signing_key=signing_key), OutOfProcessLoader(registry, signing_key, policy, args.loading, app)
        self._policy, self._loader = policy, loader
        self._link = ControllerLink(registry, signing_key, lambda: self._capture.root)
        self._store = store
        self._models = ModelSet(self._new_model, store.models, self._report)
        self._capture = Recorder(registry, self._metrics)
        self._quality = LiveQuality(self._metrics)
        self._plane = DataPlane(self._models, self._predict, self._metrics, Canaries(self._models), self._capture)
        self._limits = args.limits
        self._held_versions: frozenset[tuple[str, int]] = frozenset()  # at the last heartbeat
        self._rank = 0  # this replica's among the deployment's (reconfigure), rank 0 judges live quality
        self._grpc = GrpcV2(self._plane, args.limits)
        self._heartbeat: asyncio.Task[None] | None = None
        self._applying: asyncio.Task[None] | None = None

    def _new_model(self) -> tuple[ModelHolder, Canary]:
        """One model's holder and the canary following its rollouts (serve_app/replica/models.py)."""
        holder = ModelHolder(self._store, self._policy, self._report, load=self._loader)
        canary = Canary(self._store, holder.hold_candidate, self._link.send, self._score)
        holder.follow(canary.sync)
        return holder, canary

    def __serve_build_asgi_app__(self) -> Front:
        """Called by Serve after __init__: the routes get this replica's data plane."""
        return create_api(self._plane, self._limits, OutcomeSink(self._capture, self._metrics), answers_request_id=False)

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
        return await self._grpc.answer(self._grpc.infer_for(grpc_context), request, grpc_context, pb.ModelInferResponse, request.model_name)

    async def reconfigure(self, config: dict[str, Any], rank: ReplicaRank | None = None) -> None:
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat())
        try:
            served = parse_user_config(config)
        except (ValidationError, ConfigError) as exc:
            self._refuse(exc)
            return
        self._models.config_refused(None)
        await asyncio.to_thread(self._capture.configure, served.capture)
        self._rank = rank.rank if rank is not None else 0
        self._predict_batch.set_max_batch_size(served.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(served.batch_wait_timeout_s)
        await self._models.configure(served)
        if self._applying is not None:
            self._applying.cancel()
        self._applying = asyncio.create_task(self._apply_canaries(served))

    def _refuse(self, exc: ValidationError | ConfigError) -> None:
        """A bad user_config is refused, never half applied. Raising would make Serve stop
        this replica (2.60 deployment_state: a failed reconfigure is a failed start), so a
        replica that serves keeps its last good target and says why in every answer; one
        that never had a target has nothing to keep serving, and fails to start."""
        problems = validation_problems(exc) if isinstance(exc, ValidationError) else exc.message
        current = self._models.config
        if current is None:
            raise ConfigError(f"user_config refused: {problems}") from None
        message = f"user_config refused, still serving {current.describe()}: {problems}"
        log.error(message)
        self._models.config_refused(message)

    async def _apply_canaries(self, served: ServedModels) -> None:
        """Each listed model's canary block, one model after another (a selector's models
        have none: their rollouts are started with `nonstop rollout`)."""
        for target in served.targets().values() if isinstance(served, ManyModels) else [served]:
            await self._apply_canary(target)

    async def _apply_canary(self, target: ModelTarget) -> None:
        """The config's canary block, to the alias's controller (serve_app/rollout/moves.py
        `apply_config`), retried while the controller is out of reach (restarting)."""
        alias = target.followed_alias
        if alias is None:
            return
        canary = target.canary.model_dump(mode="json") if target.canary is not None else None
        try:
            before = await asyncio.to_thread(Rollouts(self._store, target.model, alias).state)
        except LedgerTampered as exc:  # fail closed: no rollout is started or stopped on it
            self._models.config_refused(f"user_config canary not applied, the rollout is blocked: {exc.message}")
            return
        if canary is None and not before.from_config:
            return  # no block, none before it: no controller is needed for this
        while True:
            try:
                outcome = await self._link.apply_config(target.model, alias, canary)
                break
            except Exception as exc:  # the controller restarting, Ray busy: the next try may reach it
                log.warning("cannot hand the canary block to the rollout controller yet: %r", exc)
                await asyncio.sleep(1.0)
        if outcome["refused"]:
            self._models.config_refused(f"user_config canary refused: {outcome['refused']}")

    async def _predict(self, job: Job) -> Outputs:
        if job.loaded.fast is not None and job.outputs == PREDICTIONS_ONLY:
            # The numpy path predicts at once: queueing for a batch (a task hop, Serve's
            # batch metrics) would cost more than batching saves (profiled by
            # benchmarks/profile_serving.py). Not a batch, so nonstop_batch_size does
            # not count it, nor pays for observing it.
            return settled(run_batch([job])[0])
        return settled(await self._predict_batch(job))

    async def _score(self, loaded: LoadedModel, matrix: np.ndarray) -> list[Any]:
        """A rollout's comparison, predicted as any request of its version is."""
        return (await self._predict(Job(loaded, matrix)))[Output.PREDICTIONS]

    @serve.batch
    async def _predict_batch(self, jobs: list[Job]) -> list[Outcome]:
        """Requests that queued while the previous batch ran are predicted together:
        an idle server predicts at once, a busy one amortizes the estimator call.
        Size and wait come from user_config (reconfigure runs before any request)."""
        self._metrics.batched(jobs[0].loaded.manifest.model, len(jobs))
        return run_batch(jobs)

    def __del__(self) -> None:
        """Serve's graceful shutdown (scale-down, code update): the last captures are written,
        and the loader is not left stopped by the replica's meter."""
        capture = getattr(self, "_capture", None)
        if capture is not None:
            capture.close()
        loader = getattr(self, "_loader", None)
        if loader is not None:
            loader.close()

    async def check_health(self) -> None:
        """Fails only for a broken replica, never for a missing model (module doc)."""
        if not self._models.polling:
            raise RuntimeError("a poller of this replica (registry and rollout) stopped")

    async def _beat(self) -> None:
        """Fresh status for `nonstop status` and the gauges, between changes."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await self._models.tidy()
            await self._measure_quality()
            await self._release_memory()
            status = self._status()
            self._metrics.refresh(status)
            self._board.report.remote(status)

    async def _release_memory(self) -> None:
        """After versions were released (evicted, swapped, rolled back), the pages they held
        go back to the system (serve_app/replica/heap.py)."""
        held = self._models.held_versions()
        released, self._held_versions = self._held_versions - held, held
        if released:
            await asyncio.to_thread(release_freed_memory)

    async def _measure_quality(self) -> None:
        """Live quality per version (serve_app/capture/live.py), by the replica of rank 0, of
        an app serving one model (with many, `nonstop quality --model M` reads any of them)."""
        served, config = self._models.served_models(), self._capture.config
        if len(served) != 1 or self._rank != 0 or not self._quality.due(config):
            return
        primary = self._models.state_of(served[0]).primary
        if primary is not None:
            manifest_of = partial(self._store.manifest, primary.manifest.model)  # each version's class order
            await asyncio.to_thread(self._quality.measure, self._capture.root, primary.manifest, config, None, manifest_of)

    def _status(self) -> ReplicaStatus:
        status = self._models.status(self._replica_id, os.getpid(), datetime.now(UTC))
        capture = self._capture.status().model_copy(update={"quality": self._quality.lines, "quality_error": self._quality.error})
        return status.model_copy(update={"capture": capture})

    def _report(self) -> None:
        self._capture.flush_soon()  # a swap: what the old version answered is written now
        status = self._status()
        self._metrics.observe(status)
        self._board.report.remote(status)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder named by serve_config.yaml's import_path."""
    parsed = AppArgs.model_validate(args or {})
    settings = Settings.from_env()
    # the signing key travels as an init argument, not in args: args show in the dashboard
    policy = TrustPolicy.from_settings(settings)  # NONSTOP_TRUSTED_TYPES: the setting training reads too
    return ModelServer.bind(parsed, parsed.registry or settings.registry, settings.signing_key, policy)
