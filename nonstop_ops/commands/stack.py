"""`nonstop up`, `down` and `status`: the whole stack on this machine, on a local Ray cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import httpx
import typer

from nonstop.config import Settings
from nonstop.redact import public_uri
from nonstop_ops.cluster import ClusterError
from nonstop_ops.cluster import lifecycle as local
from nonstop_ops.cluster import nodes
from nonstop_ops.cluster.serve_config import deployment_config, load_serve_config
from nonstop_ops.commands.common import DEMO_DATA, SERVE_PORT, HttpPortOpt, RegistryOpt, _open_registry, _registry

if TYPE_CHECKING:
    from serve_app.replica.state import ReplicaStatus

app = typer.Typer()


def _cluster(http_port: int) -> local.LocalCluster:
    cluster = local.LocalCluster(http_port=http_port)
    cluster.use()
    return cluster


@app.command()
def up(
    registry: RegistryOpt = None,
    http_port: HttpPortOpt = SERVE_PORT,
    config: Annotated[Path | None, typer.Option("--config", help="Serve config (default: the packaged serve_config.yaml)")] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=0, max=nodes.MAX_NODES, help="extra Ray worker nodes on this machine, as KubeRay's worker pods")
    ] = 0,
) -> None:
    """Start a local Ray cluster, train a first version if needed, deploy, wait.

    The head (if none runs) and `--workers` worker nodes beside it; Serve spreads the
    replicas over the nodes."""
    settings = Settings.from_env(registry=registry)
    cluster = _cluster(http_port)
    serve_config = load_serve_config(config)
    target = deployment_config(serve_config)["user_config"]
    model = target["model"]
    reg = _open_registry(settings)
    if not reg.versions(model):
        from training import demo
        from training.job import TrainOptions
        from training.job import train as run_training

        if not demo.existing_days(DEMO_DATA):
            demo.write_days(DEMO_DATA, 5)
        typer.echo(f"registry {public_uri(settings.registry)} has no {model!r}: training a first version from {DEMO_DATA}")
        run_training(TrainOptions(data=str(DEMO_DATA), model=model, promote=True), reg)
    typer.echo(f"starting Ray (registry {public_uri(settings.registry)}) ...")
    local.start(cluster, settings)
    for index in range(1, workers + 1):
        nodes.start(nodes.WorkerNode(cluster=cluster, index=index), settings)
    local.deploy(cluster, serve_config)
    meta = local.wait_ready(cluster, model)
    features = [f["name"] for f in meta["features"]]
    sample = dict(zip(features, reg.manifest(model, int(meta["version"])).samples.inputs[0], strict=True))
    url = f"{cluster.http_url}/v1/models/{model}:predict"
    answer = httpx.post(url, json={"instances": [sample]}, timeout=30)
    answer.raise_for_status()
    typer.echo(f"serving {model} v{meta['version']} at {url}")
    typer.echo(f"and over gRPC (Open Inference Protocol v2) at {local.LOOPBACK}:{cluster.grpc_port}")
    typer.echo(f"a first prediction: {answer.text}")
    typer.echo(
        f"Ray token auth is on (token in {cluster.auth_token_path}): "
        "`export RAY_AUTH_MODE=token` before `serve deploy` or `ray job submit`"
    )
    typer.echo(
        f"try it: curl -s -X POST {url} -H 'content-type: application/json' "
        f"-d '{json.dumps({'instances': [sample]})}'"
    )


@app.command()
def down(http_port: HttpPortOpt = SERVE_PORT) -> None:
    """Stop the local Ray cluster (its worker nodes too) and Serve's haproxy, and check the port is free."""
    local.stop(_cluster(http_port))
    typer.echo("stopped")


@app.command()
def status(
    registry: RegistryOpt = None,
    http_port: HttpPortOpt = SERVE_PORT,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Application status, what each replica serves (or why it serves nothing), the aliases."""
    import ray

    from serve_app.replica.status_board import read_board, status_report

    cluster = _cluster(http_port)
    if not local.is_running(cluster):
        raise ClusterError(f"no local Ray cluster at {cluster.address} (run `nonstop up`)")
    details = local.app_status(cluster)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    try:
        board = read_board()
    finally:
        ray.shutdown()
    report = status_report(details, board)
    reg = _registry(registry)
    served = {r.status.model for r in report.replicas if r.status and r.status.model}
    served |= {v.model for r in report.replicas if r.status for v in r.status.versions}  # many models: those held
    for model in sorted(served):
        report.aliases[model] = reg.aliases(model)
        check = reg.ledger(model).verify()
        if not check.ok:
            report.blocked[model] = "; ".join(check.problems)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    typer.echo(f"application: {report.status}")
    for replica in report.replicas:
        typer.echo(f"  replica {replica.replica_id} [{replica.state}] {_describe(replica.status)}")
    for model, aliases in report.aliases.items():
        for name, record in aliases.items():
            typer.echo(f"  {model}@{name} -> v{record.version}  (ledger entry #{record.ledger_seq})")
    for model, why in report.blocked.items():
        typer.echo(f"  {model}: rollouts BLOCKED, the primaries keep serving: {why}")


def _describe(status: ReplicaStatus | None) -> str:
    """One line per replica: what it holds, or that it is not ready and why."""
    if status is None:
        return "has not reported yet"
    held = ", ".join(f"{v.model} v{v.version} ({v.role}) since {v.since:%Y-%m-%d %H:%M:%S}" for v in status.versions)
    error = f"  last error: {status.last_error.message}" if status.last_error else ""
    serves = f"serves {held}" if held else f"NOT READY, nothing loaded for {status.target}"
    capture = status.capture
    captured = (
        f"  capture: {capture.captured_rows} rows written, {capture.dropped_rows} dropped, {capture.buffered_rows} buffered"
        if capture is not None and capture.enabled
        else ""
    )
    return f"pid={status.pid} {serves}{error}{captured}{_quality(status)}{_many(status)}"


def _many(status: ReplicaStatus) -> str:
    """Many models: how this replica's budget is doing, summed over the models it loaded."""
    if not status.models:
        return ""
    lines = status.models
    held = [m for m in lines if m.held]
    times = sorted(m.load_seconds for m in lines if m.load_seconds is not None)
    hits, loads = sum(m.hits for m in lines), sum(m.loads for m in lines)
    rate = f"{hits / (hits + loads):.0%}" if hits + loads else "n/a"
    slowest = f", slowest {times[-1]:.3f}s" if times else ""
    median = f"last load median {times[len(times) // 2]:.3f}s{slowest}" if times else "no load yet"
    return (
        f"\n    models: {len(held)} held ({sum(m.held_bytes for m in held)} bytes est.) of {len(lines)} loaded here; "
        f"hit rate {rate} ({hits} hits, {loads} loads), {sum(m.evictions for m in lines)} evictions; {median}"
    )


def _by_reason(omitted: dict[str, str]) -> dict[str, list[str]]:
    """Omitted metrics grouped by why: ROC AUC and log loss usually share one reason."""
    grouped: dict[str, list[str]] = {}
    for name, why in omitted.items():
        grouped.setdefault(why, []).append(name)
    return grouped


def _quality(status: ReplicaStatus) -> str:
    """Live quality per version and role, from the replica that measures it (rank 0)."""
    capture = status.capture
    if capture is None or not capture.enabled:
        return ""
    lines = []
    for q in capture.quality:
        probabilities = f", {q.with_probabilities} with probabilities" if q.with_probabilities is not None else ""
        lines.append(
            f"live quality v{q.version} {q.role}: " + (", ".join(f"{name} {value:.4g}" for name, value in q.metrics.items()) or "no label yet")
            + f" ({q.labelled}/{q.captured} rows labelled{probabilities})"
        )  # fmt: skip
        lines += [f"  no {', '.join(names)}: {why}" for why, names in _by_reason(q.omitted).items()]  # why a figure is missing
    if capture.quality_error:
        lines.append(capture.quality_error)
    return "".join(f"\n    {line}" for line in lines)
