"""`nonstop rollout start|status|pause|resume|advance|abort`: progressive delivery by hand.

Every command writes to (or reads) the promotion ledger, where the rollout lives; the
replicas and the controller follow the ledger, so these work with or without a running
cluster, and leave the same trail as the controller's own decisions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

from nonstop.errors import ConfigError, LedgerTampered
from nonstop.registry import PRODUCTION
from nonstop_ops.cluster import lifecycle as local
from nonstop_ops.commands.common import SERVE_PORT, HttpPortOpt, ModelOpt, ReasonOpt, RegistryOpt, _actor, _print_json, _registry

if TYPE_CHECKING:
    from serve_app.rollout.moves import Rollouts
    from serve_app.rollout.policy import Policy

# The rollout machinery (its evidence and outcome checks bring scipy and scikit-learn) is
# imported by the commands that move a rollout, not by every `nonstop` command at start

app = typer.Typer(name="rollout", no_args_is_help=True, help="Canary a version by weight, judged by a policy, with a ledger.")

AliasOpt = Annotated[str, typer.Option("--alias", help="the alias the candidate would take over")]


def _rollouts(registry: str | None, model: str, alias: str) -> Rollouts:
    from serve_app.rollout.moves import Rollouts

    return Rollouts(_registry(registry), model, alias)


def load_policy(path: Path | None, overrides: dict[str, Any]) -> Policy:
    """The policy file (YAML or JSON, Policy's fields), then the options given on the line."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read policy file {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"policy file {path} must hold a mapping of policy fields")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    from serve_app.rollout.policy import Policy

    return Policy.model_validate(values)


@app.command("start")
def start(
    candidate: Annotated[int, typer.Argument(help="the version to roll out")],
    model: ModelOpt,
    alias: AliasOpt = PRODUCTION,
    policy_file: Annotated[Path | None, typer.Option("--policy", help="YAML/JSON file of policy fields")] = None,
    steps: Annotated[str | None, typer.Option("--steps", help="shares, e.g. 0.05,0.25,0.5,1")] = None,
    window: Annotated[float | None, typer.Option("--window", help="evaluation window per step, seconds")] = None,
    shadow: Annotated[bool, typer.Option("--shadow", help="score in the shadow first, answering no request")] = False,
    manual: Annotated[bool, typer.Option("--manual", help="the controller judges only; advance and abort by hand")] = False,
    registry: RegistryOpt = None,
    reason: ReasonOpt = "",
) -> None:
    """Start a rollout: the candidate answers the first step's share (or only shadows).

    With the policy's `require_replay`, only on a recent passing `nonstop replay` of the
    candidate (exit 2, naming what is missing or failed, without one); the replay relied
    on is shown."""
    parsed_steps = None
    if steps is not None:
        try:
            parsed_steps = tuple(float(s) for s in steps.split(","))
        except ValueError as exc:
            raise typer.BadParameter(f"{steps!r}: give shares separated by commas", param_hint="--steps") from exc
    policy = load_policy(policy_file, {"steps": parsed_steps, "window_s": window, "shadow": shadow or None, "automatic": False if manual else None})
    entry = _rollouts(registry, model, alias).start(candidate, policy, _actor("rollout start"), reason)
    typer.echo(f"#{entry.seq} {entry.reason}; window {policy.window_s:g}s, steps {list(policy.steps)}")
    if entry.evidence is not None and "replay" in entry.evidence:
        from serve_app.rollout.replay_check import ReplayRelied

        typer.echo(ReplayRelied.model_validate(entry.evidence["replay"]).line())


@app.command("status")
def status(
    model: ModelOpt,
    alias: AliasOpt = PRODUCTION,
    registry: RegistryOpt = None,
    http_port: HttpPortOpt = SERVE_PORT,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    live: Annotated[bool, typer.Option("--live/--no-live", help="ask the local cluster's controller for evidence")] = True,
) -> None:
    """The rollout as the ledger tells it, and the controller's live evidence if it runs;
    exits 1, saying why, when the ledger does not verify (the rollout is blocked)."""
    try:
        state = _rollouts(registry, model, alias).state()
    except LedgerTampered as exc:
        if as_json:
            _print_json({"blocked": exc.message, "problems": exc.problems})
        else:
            typer.echo(f"{model}@{alias}: rollout BLOCKED, the primary keeps serving: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    report: dict[str, Any] = {
        "active": state.active, "primary": state.primary, "candidate": state.candidate, "weight": state.weight,
        "paused": state.paused, "outcome": state.outcome, "from_config": state.from_config, "blocked": None,
        "live": _live(model, alias, http_port) if live else None,
    }  # fmt: skip
    if as_json:
        _print_json(report)
        return
    if not state.active:
        typer.echo(f"{model}@{alias} -> v{state.primary}; no rollout under way" + (f" (last: {state.outcome})" if state.outcome else ""))
    else:
        mode = "shadow only" if state.weight == 0 else f"answers {state.weight:.0%}"
        source = " (set by the serve config's canary block)" if state.from_config else ""
        typer.echo(f"{model}@{alias}: v{state.candidate} {mode} against v{state.primary}{' [PAUSED]' if state.paused else ''}{source}")
    live = report["live"]
    if live is None:
        typer.echo("controller: not reachable (no local cluster); the ledger above is the record")
        return
    if live.get("evidence"):
        typer.echo("evidence this window: " + json.dumps(live["evidence"], indent=2))
    if live.get("last_decision"):
        typer.echo(f"last decision: {live['last_decision']}")
    if live.get("last_error"):
        typer.echo(f"controller error: {live['last_error']}")


def _live(model: str, alias: str, http_port: int) -> dict[str, Any] | None:
    import ray

    from serve_app.rollout.controller import NAMESPACE, controller_name

    cluster = local.LocalCluster(http_port=http_port)
    if not local.is_running(cluster):
        return None
    cluster.use()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    try:
        try:
            actor = ray.get_actor(controller_name(model, alias), namespace=NAMESPACE)
        except ValueError:
            return None
        return ray.get(actor.status.remote(), timeout=30)
    finally:
        ray.shutdown()


@app.command("pause")
def pause(model: ModelOpt, alias: AliasOpt = PRODUCTION, registry: RegistryOpt = None, reason: ReasonOpt = "") -> None:
    """Hold the current share: no automatic advance (a failing check still rolls back)."""
    _rollouts(registry, model, alias).pause(_actor("rollout pause"), reason)
    typer.echo("paused")


@app.command("resume")
def resume(model: ModelOpt, alias: AliasOpt = PRODUCTION, registry: RegistryOpt = None, reason: ReasonOpt = "") -> None:
    """Let the controller advance again."""
    _rollouts(registry, model, alias).resume(_actor("rollout resume"), reason)
    typer.echo("resumed")


@app.command("advance")
def advance(model: ModelOpt, alias: AliasOpt = PRODUCTION, registry: RegistryOpt = None, reason: ReasonOpt = "") -> None:
    """Go to the next step now (from the last one: promote), whatever the evidence says."""
    typer.echo(_rollouts(registry, model, alias).advance(_actor("rollout advance"), reason or "advanced by hand", kind="override"))


@app.command("abort")
def abort(model: ModelOpt, alias: AliasOpt = PRODUCTION, registry: RegistryOpt = None, reason: ReasonOpt = "") -> None:
    """Stop the rollout: the candidate answers nothing more; the alias never moved."""
    typer.echo(_rollouts(registry, model, alias).rollback(_actor("rollout abort"), reason or "aborted by hand", kind="override"))
