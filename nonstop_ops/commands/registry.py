"""`nonstop models`, `promote`, `rollback` and `sign`: read the registry and move its aliases."""

from __future__ import annotations

from typing import Annotated

import typer

from nonstop.errors import NonstopError
from nonstop.redact import public_uri
from nonstop.registry import PRODUCTION
from nonstop_ops.commands.common import AliasOpt, ModelOpt, ReasonOpt, RegistryOpt, _actor, _registry

app = typer.Typer()


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
