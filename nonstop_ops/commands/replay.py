"""`nonstop replay`: a candidate scored offline on the traffic production answered, the
evidence signed into the ledger (nonstop/batch/replay.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from nonstop.columns import MAX_STRING_LENGTH
from nonstop.config import Settings
from nonstop.registry import PRODUCTION
from nonstop_ops.commands.common import ModelOpt, RegistryOpt, _actor, _print_json
from nonstop_ops.commands.outcomes import DestinationOpt, _since

app = typer.Typer()


@app.command()
def replay(
    version: Annotated[int, typer.Argument(min=1, help="the candidate version to replay")],
    model: ModelOpt,
    since: Annotated[str, typer.Option("--since", help="captured in this window: 1d, 12h")] = "1d",
    alias: Annotated[str, typer.Option("--alias", help="the alias the evidence is recorded under")] = PRODUCTION,
    out: Annotated[str | None, typer.Option("--out", help="folder or s3://… for the scored rows (default: <captures>/replays/…)")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="scoring actors, one model load each")] = 1,
    worker_cpus: Annotated[float | None, typer.Option("--worker-cpus", min=0, help="CPUs each worker reserves (default: half a CPU where free, else none)")] = None,
    max_string_length: Annotated[int, typer.Option("--max-string-length", min=1, help="as serving's limit")] = MAX_STRING_LENGTH,
    destination: DestinationOpt = None,
    registry: RegistryOpt = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster (default: $RAY_ADDRESS, a running local one, or a new one)")] = None,
) -> None:
    """Score captured traffic with a candidate; the evidence goes into the ledger.

    The candidate's answers are compared with what production answered and with the
    labels that arrived.

    Exit 0: the evidence is in the ledger (`nonstop history` shows and verifies it).
    Exit 2: refused (a candidate that must not run, no captured traffic in the window)."""
    import ray

    from nonstop.batch.replay import ReplayOptions
    from nonstop.batch.replay import replay as run_replay

    window = _since(since)
    if window is None:  # --since has a default
        raise typer.BadParameter("a window is required", param_hint="--since")
    options = ReplayOptions(
        model=model, candidate=version, since=window, alias=alias, destination=destination, out=out,
        actor=_actor("replay"), workers=workers, worker_cpus=worker_cpus, max_string_length=max_string_length,
    )  # fmt: skip
    settings = Settings.from_env(registry=registry)
    report = run_replay(options, settings, connect=lambda: ray.init(address=address, ignore_reinit_error=True, log_to_driver=False))
    typer.echo(
        f"replayed {report.captured} captured rows (served by v{', v'.join(map(str, report.served_versions))}) "
        f"with v{report.candidate}: {report.scored} scored, {report.rejected} rejected"
    )
    typer.echo(report.comparison.line())
    typer.echo(f"evidence: ledger entry #{report.ledger_seq} of {model} (nonstop history --model {model})")
    _print_json(report.model_dump(mode="json"))
