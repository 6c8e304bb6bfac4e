"""The `nonstop` command: run the stack locally, train, and move aliases.

Every command reads the registry from --registry or NONSTOP_REGISTRY. Errors the project
raises on purpose end as one line on stderr and a non-zero exit (`main`), never a traceback.
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from pydantic import ValidationError

from nonstop_ops import cluster as local
from nonstop.config import Settings
from nonstop.errors import NonstopError, validation_problems
from nonstop.redact import public_uri
from nonstop.registry import PRODUCTION, Registry

if TYPE_CHECKING:
    from serve_app.replica.state import ReplicaStatus

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

RegistryOpt = Annotated[str | None, typer.Option("--registry", help="registry URI (default: $NONSTOP_REGISTRY or ./registry)")]
ModelOpt = Annotated[str, typer.Option("--model", help="model name")]
AliasOpt = Annotated[str, typer.Option("--alias", help="alias to move")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="why, for the promotion ledger (`nonstop history`)")]
HttpPortOpt = Annotated[int, typer.Option("--http-port", help="Serve HTTP port on 127.0.0.1")]
DEMO_DATA = Path("data/demo")
SERVE_PORT = local.serve_port()  # from the packaged serve_config.yaml


def _registry(uri: str | None) -> Registry:
    return _open_registry(Settings.from_env(registry=uri))


def _open_registry(settings: Settings) -> Registry:
    return Registry(settings.registry, signing_key=settings.signing_key)


def _actor(command: str) -> str:
    """Who moved an alias, as the ledger records it: the operating-system user at the CLI."""
    return f"{getpass.getuser()} (nonstop {command} on {socket.gethostname()})"


def _cluster(http_port: int) -> local.LocalCluster:
    cluster = local.LocalCluster(http_port=http_port)
    cluster.use()
    return cluster


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


@app.command()
def train(
    data: Annotated[str, typer.Option("--data", help="CSV or Parquet file, or a folder of daily partitions")],
    model: ModelOpt,
    label: Annotated[str, typer.Option("--label", help="label column")] = "target",
    promote: Annotated[bool, typer.Option("--promote", help="move the alias if the gate passes")] = False,
    alias: AliasOpt = PRODUCTION,
    registry: RegistryOpt = None,
    estimator: Annotated[str, typer.Option("--estimator", help="built-in: auto, logreg, ridge or forest")] = "auto",
    pipeline: Annotated[
        str | None,
        typer.Option("--pipeline", help="your own estimator: module:function or path/to/file.py:function returning it unfitted"),
    ] = None,
    task: Annotated[str | None, typer.Option("--task", help="classification or regression (default: detected)")] = None,
    gate_metric: Annotated[
        str | None, typer.Option("--gate-metric", help="accuracy, f1_macro, roc_auc, log_loss | rmse, mae, r2 (default: accuracy | rmse)")
    ] = None,
    gate_tolerance: Annotated[float, typer.Option("--gate-tolerance", help="how much worse than production still passes, in the metric's units")] = 0.0,
    force_promote: Annotated[
        bool, typer.Option("--force-promote", help="promote even if the gate fails or production cannot be measured (recorded)")
    ] = False,
    trusted_type: Annotated[
        list[str] | None, typer.Option("--trusted-type", help="exact type name the serving config also trusts (repeatable)")
    ] = None,
    n_estimators: Annotated[int, typer.Option("--n-estimators", help="trees, for --estimator forest")] = 100,
) -> None:
    """Validate data, fit, score against production, publish (and maybe promote).

    Exit 0: published (and promoted, or not promoted because it scored worse). Exit 2 with
    a message: nothing published because of bad data or a bad --pipeline, or published but
    not promoted because production could not be loaded or evaluated."""
    from training.job import TrainOptions
    from training.job import train as run_training

    options = TrainOptions(
        data=data, model=model, label=label, promote=promote, alias=alias, estimator=estimator, pipeline=pipeline,
        task=task, gate_metric=gate_metric, gate_tolerance=gate_tolerance, force_promote=force_promote,
        trusted_types=tuple(trusted_type or ()), n_estimators=n_estimators,
    )  # fmt: skip
    result = run_training(options, _registry(registry))
    manifest, comparison = result.manifest, result.comparison
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in manifest.metrics.items())
    typer.echo(f"published {model} v{manifest.version}: {manifest.task}, {manifest.estimator} ({metrics})")
    typer.echo(f"compared: {comparison.reason}")
    if result.promoted:
        forced = " (FORCED past the gate)" if manifest.gate and manifest.gate.forced else ""
        typer.echo(f"promoted {model} v{manifest.version} to {alias!r}{forced}")
    elif promote:
        typer.echo(f"NOT promoted: v{manifest.version} stays published but unpromoted ({comparison.reason})")
    typer.echo(f"version={manifest.version}")


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Option("--out", help="folder of day=YYYY-MM-DD partitions")] = DEMO_DATA,
    days: Annotated[int, typer.Option("--days", min=1, help="days to write when the folder is empty")] = 5,
    next_day: Annotated[bool, typer.Option("--next-day", help="append the day after the last one")] = False,
) -> None:
    """Write demo data (scikit-learn's bundled breast-cancer set) as daily partitions."""
    from training import demo

    paths = [demo.write_next_day(out)] if next_day else demo.write_days(out, days)
    for path in paths:
        typer.echo(str(path))


@app.command()
def models(
    model: Annotated[str | None, typer.Option("--model")] = None,
    registry: RegistryOpt = None,
    show: Annotated[int | None, typer.Option("--show", help="print this version's model card (needs --model)")] = None,
) -> None:
    """List models, versions, metrics and aliases, or show one version's model card."""
    reg = _registry(registry)
    if show is not None:
        from training.card import CARD_NAME, CARD_PNG

        if model is None:
            raise typer.BadParameter("needs --model", param_hint="--show")
        card = reg.read_extra(model, show, CARD_NAME)
        if card is None:
            raise NonstopError(f"{model} v{show} has no model card: it was published before cards were written")
        typer.echo(card.decode())
        typer.echo(f"chart: {reg.extra_uri(model, show, CARD_PNG)}")
        return
    names = [model] if model else reg.models()
    if not names:
        typer.echo(f"no models in {public_uri(reg.uri)}")
    for name in names:
        aliases = reg.aliases(name)
        typer.echo(f"{name}: aliases " + (", ".join(f"{a}->v{r.version}" for a, r in aliases.items()) or "none"))
        for version in reg.versions(name):
            manifest = reg.manifest(name, version)
            marks = [a for a, r in aliases.items() if r.version == version]
            metric = manifest.gate.metric if manifest.gate else "accuracy"
            typer.echo(
                f"  v{version}  {manifest.created_at:%Y-%m-%d %H:%M:%S}  {metric}={manifest.metrics.get(metric, float('nan')):.4f}"
                f"  rows={manifest.data.rows}  parent={manifest.parent_version}  {' '.join(marks)}"
            )
        for leftover in reg.leftovers(name):
            typer.echo(f"  skipped: {leftover}")


@app.command("promote")
def promote_cmd(
    version: Annotated[int, typer.Argument(help="version to point the alias at")],
    model: ModelOpt,
    alias: AliasOpt = PRODUCTION,
    registry: RegistryOpt = None,
    reason: ReasonOpt = "",
) -> None:
    """Point an alias at a version; replicas following it swap within their poll interval."""
    record = _registry(registry).promote(model, version, alias, actor=_actor("promote"), reason=reason)
    typer.echo(f"{model}@{alias} -> v{record.version}")


@app.command()
def rollback(model: ModelOpt, alias: AliasOpt = PRODUCTION, registry: RegistryOpt = None, reason: ReasonOpt = "") -> None:
    """Point an alias back at its previous target."""
    record = _registry(registry).rollback(model, alias, actor=_actor("rollback"), reason=reason)
    typer.echo(f"{model}@{alias} -> v{record.version} (rolled back)")


@app.command()
def sign(model: ModelOpt, registry: RegistryOpt = None) -> None:
    """Sign the versions and aliases written before NONSTOP_SIGNING_KEY was set.

    Run once when turning signing on: afterwards replicas with the key refuse anything
    unsigned. A version is signed only if its artifact still matches its digest."""
    signed = _registry(registry).sign_unsigned(model)
    typer.echo(f"signed: {', '.join(signed)}" if signed else f"{model}: everything was already signed")


@app.command()
def up(
    registry: RegistryOpt = None,
    http_port: HttpPortOpt = SERVE_PORT,
    config: Annotated[Path | None, typer.Option("--config", help="Serve config (default: the packaged serve_config.yaml)")] = None,
) -> None:
    """Start a local Ray head (if none), train a first version if needed, deploy, wait."""
    settings = Settings.from_env(registry=registry)
    cluster = _cluster(http_port)
    serve_config = local.load_serve_config(config)
    target = local.deployment_config(serve_config)["user_config"]
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
    """Stop the local Ray cluster and Serve's haproxy, and check the port is free."""
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
        raise local.ClusterError(f"no local Ray cluster at {cluster.address} (run `nonstop up`)")
    details = local.app_status(cluster)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    try:
        board = read_board()
    finally:
        ray.shutdown()
    report = status_report(details, board)
    reg = _registry(registry)
    for model in sorted({r.status.model for r in report.replicas if r.status and r.status.model}):
        report.aliases[model] = reg.aliases(model)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    typer.echo(f"application: {report.status}")
    for replica in report.replicas:
        typer.echo(f"  replica {replica.replica_id} [{replica.state}] {_describe(replica.status)}")
    for model, aliases in report.aliases.items():
        for name, record in aliases.items():
            typer.echo(f"  {model}@{name} -> v{record.version}  history {[e.version for e in record.history]}")


def _describe(status: ReplicaStatus | None) -> str:
    """One line per replica: what it holds, or that it is not ready and why."""
    if status is None:
        return "has not reported yet"
    held = ", ".join(f"{v.model} v{v.version} ({v.role}) since {v.since:%Y-%m-%d %H:%M:%S}" for v in status.versions)
    error = f"  last error: {status.last_error.message}" if status.last_error else ""
    serves = f"serves {held}" if held else f"NOT READY, nothing loaded for {status.target}"
    return f"pid={status.pid} {serves}{error}"


@app.command("kube-render")
def kube_render(
    check: Annotated[bool, typer.Option("--check", help="exit 1 if the generated file is stale; write nothing")] = False,
    kuberay_dir: Annotated[Path, typer.Option("--kuberay-dir", help="the kustomize tree to write into")] = Path("kuberay"),
    config: Annotated[Path | None, typer.Option("--config", help="Serve config (default: the packaged one)")] = None,
) -> None:
    """Render serve_config.yaml into kuberay/'s RayService (serveConfigV2)."""
    from nonstop_ops import kube

    argv = ["--kuberay-dir", str(kuberay_dir)] + (["--config", str(config)] if config else []) + (["--check"] if check else [])
    raise typer.Exit(kube.main(argv))


EXIT_CODES: dict[type[NonstopError], int] = {NonstopError: 2, local.ClusterError: 3}


def exit_code(exc: NonstopError) -> int:
    """The code of the nearest listed ancestor of the error's type."""
    return next(EXIT_CODES[k] for k in type(exc).__mro__ if k in EXIT_CODES)


def main() -> None:
    """Errors end as one line on stderr: exit 2 for anything refused (input, data, the
    registry's content, configuration), 3 when there is no cluster to talk to."""
    try:
        app()
    except NonstopError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(exit_code(exc))
    except ValidationError as exc:
        typer.echo(f"error: invalid {exc.title}: {validation_problems(exc)}", err=True)
        sys.exit(2)


from nonstop_ops import cli_history  # noqa: E402, F401  (registers `nonstop history`; it needs `app` above)
from nonstop_ops import cli_rollout  # noqa: E402, F401  (registers `nonstop rollout ...`)
