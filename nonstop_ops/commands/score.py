"""`nonstop score`: a registry version applied to a dataset with Ray Data (nonstop/batch)."""

from __future__ import annotations

from typing import Annotated

import typer

from nonstop.columns import MAX_STRING_LENGTH
from nonstop.config import Settings
from nonstop.redact import public_uri
from nonstop.registry import PRODUCTION
from nonstop_ops.commands.common import ModelOpt, RegistryOpt, _print_json

app = typer.Typer()


@app.command()
def score(
    model: ModelOpt,
    data: Annotated[str, typer.Option("--data", help="Parquet or CSV file, folder of Parquet partitions, or s3://…")],
    out: Annotated[str, typer.Option("--out", help="folder or s3://… for scored/ and rejects/ Parquet")],
    version: Annotated[int | None, typer.Option("--version", min=1, help="version to score with (default: the alias's)")] = None,
    alias: Annotated[str, typer.Option("--alias", help="alias naming the version when --version is not given")] = PRODUCTION,
    keep: Annotated[list[str] | None, typer.Option("--keep", help="input column carried to the outputs (repeatable): a row key")] = None,
    probabilities: Annotated[bool, typer.Option("--probabilities", help="add the class probabilities")] = False,
    compare: Annotated[int | None, typer.Option("--compare", min=1, help="also score with this version and summarise agreement")] = None,
    label: Annotated[str | None, typer.Option("--label", help="column of labels: carried through, and scored with --compare")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="scoring actors, one model load each")] = 1,
    worker_cpus: Annotated[float | None, typer.Option("--worker-cpus", min=0, help="CPUs each worker reserves (default: half a CPU where free, else none)")] = None,
    task_cpus: Annotated[float | None, typer.Option("--task-cpus", min=0, help="CPUs each read and write task reserves (default: one where free, else none)")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="rows per batch a worker scores at once")] = 8192,
    max_string_length: Annotated[int, typer.Option("--max-string-length", min=1, help="longest category string accepted, as serving's limit")] = MAX_STRING_LENGTH,
    registry: RegistryOpt = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster (default: $RAY_ADDRESS, a running local cluster, or a new one)")] = None,
) -> None:
    """Score a dataset with a registry version, on the Ray cluster.

    Exit 0: every row scored or written to rejects/ with its reason. Exit 2: refused before
    any row was scored (a corrupt, untrusted or unsigned version; --keep columns the data
    lacks; probabilities from a model without them)."""
    import ray

    from nonstop.batch.job import ScoreOptions, prepare
    from nonstop.batch.job import score as run_scoring

    options = ScoreOptions(
        model=model, version=version, alias=alias, data=data, out=out, keep=tuple(keep or ()), label=label,
        probabilities=probabilities, compare=compare, workers=workers, worker_cpus=worker_cpus, task_cpus=task_cpus,
        batch_size=batch_size, max_string_length=max_string_length,
    )  # fmt: skip
    settings = Settings.from_env(registry=registry)
    prepared = prepare(options, settings)  # refused here, before a cluster is joined or a row read
    typer.echo(f"scoring {public_uri(data)} with {model} v{prepared.version} on {workers} worker(s)", err=True)
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    summary = run_scoring(options, settings, prepared)
    typer.echo(
        f"scored {summary.scored} rows with {model} v{summary.version}, rejected {summary.rejected} "
        f"({summary.rows_per_s:,.0f} rows/s) into {summary.out}"
    )
    if summary.comparison is not None:
        typer.echo(summary.comparison.line())
    _print_json(summary.model_dump())
