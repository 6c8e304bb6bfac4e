"""`nonstop train` and `nonstop demo-data`: fit and publish a version, and write data to fit it on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nonstop.registry import PRODUCTION
from nonstop_ops.commands.common import DEMO_DATA, AliasOpt, ModelOpt, RegistryOpt, _registry
from nonstop_ops.commands.outcomes import DestinationOpt

app = typer.Typer()


@app.command()
def train(
    data: Annotated[
        str,
        typer.Option("--data", help="CSV or Parquet file, a folder of day=YYYY-MM-DD partitions (local or s3://...), or capture://MODEL"),
    ],
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
    n_estimators: Annotated[int, typer.Option("--n-estimators", help="trees, for --estimator forest")] = 100,
    since: Annotated[
        str | None, typer.Option("--since", help="only the partitions of the newest N days, e.g. 30d (the window ends at the newest partition)")
    ] = None,
    destination: DestinationOpt = None,
) -> None:
    """Validate data, fit, score against production, publish (and maybe promote).

    Exit 0: published (and promoted, or not promoted because it scored worse). Exit 2 with
    a message: nothing published because of bad data or a bad --pipeline, or published but
    not promoted because production could not be loaded or evaluated. Types beyond the
    format's trust list: NONSTOP_TRUSTED_TYPES, the setting serving reads too. What has
    to fit in memory, and what does not: docs/training.md."""
    from training.job import TrainOptions
    from training.job import train as run_training

    options = TrainOptions(
        data=data, model=model, label=label, promote=promote, alias=alias, estimator=estimator, pipeline=pipeline,
        task=task, gate_metric=gate_metric, gate_tolerance=gate_tolerance, force_promote=force_promote,
        n_estimators=n_estimators, since=since, capture_destination=destination,
    )  # fmt: skip
    result = run_training(options, _registry(registry))
    manifest, comparison = result.manifest, result.comparison
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in manifest.metrics.items())
    typer.echo(f"published {model} v{manifest.version}: {manifest.task}, {manifest.estimator} ({metrics})")
    typer.echo(f"trained on {manifest.data.rows} rows from {manifest.data.source}")
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
