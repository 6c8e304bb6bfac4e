"""`nonstop history`: read a model's promotion ledger, or ask what served at a moment.

The chain is verified on every read (as everything that acts on it verifies it:
nonstop/ledger.py `verified`), and a broken chain exits 1 after printing what is
wrong, entries that cannot be read at all included: a reader should never take an edited ledger for the truth without being told.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from nonstop.errors import RegistryError
from nonstop.ledger import Ledger, LedgerEntry, ServingAt, Verification
from nonstop.registry import PRODUCTION
from nonstop_ops.commands.common import ModelOpt, RegistryOpt, _print_json, _registry

app = typer.Typer()


def parse_time(text: str) -> datetime:
    """ISO 8601 (`2026-11-29T01:30:00Z`, `2026-11-29 01:30`), or `now`; no zone means UTC."""
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not an ISO 8601 time such as 2026-11-29T01:30:00Z", param_hint="--at") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def describe(entry: LedgerEntry) -> str:
    target = f" -> v{entry.version}" if entry.version is not None else ""
    share = ""
    if entry.candidate is not None and entry.weight is not None:
        share = f" canary v{entry.candidate} at {entry.weight:.0%}"
    why = f": {entry.reason}" if entry.reason else ""
    return (
        f"#{entry.seq:<4} {entry.at:%Y-%m-%d %H:%M:%S.%f}"[:-3]
        + f"Z  {entry.kind}/{entry.action}  {entry.alias}{target}{share}  by {entry.actor}{why}"
    )


def _serving_line(model: str, answer: ServingAt) -> str:
    if answer.version is None:
        return f"{model}@{answer.alias} at {answer.at.isoformat()}: nothing recorded yet (the ledger starts later)"
    canary = f", canary v{answer.candidate} at {answer.weight:.0%}" if answer.candidate is not None else ""
    since = f" (since entry #{answer.since.seq}, {answer.since.at.isoformat()})" if answer.since else ""
    return f"{model}@{answer.alias} at {answer.at.isoformat()}: v{answer.version}{canary}{since}"


def _chain_line(check: Verification) -> str:
    if check.ok:
        return f"chain: ok ({check.entries} entries, {check.signed} signed)"
    return "chain: BROKEN\n" + "\n".join(f"  - {p}" for p in check.problems)


@app.command()
def history(
    model: ModelOpt,
    alias: Annotated[str, typer.Option("--alias", help="alias asked about with --at")] = PRODUCTION,
    at: Annotated[str | None, typer.Option("--at", help="ISO 8601 time (UTC if no zone), or 'now'")] = None,
    registry: RegistryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """The promotion ledger: every alias move, canary step and decision; exits 1 if edited."""
    ledger = _registry(registry).ledger(model)
    check = ledger.verify()
    try:
        _show(ledger, model, alias, at, as_json, check)
    except RegistryError as exc:
        if check.ok:
            raise
        typer.echo(f"cannot show the entries: {exc.message}", err=True)  # the problems follow
    if not as_json or not check.ok:
        typer.echo(_chain_line(check), err=not check.ok)
    if not check.ok:
        raise typer.Exit(1)


def _show(ledger: Ledger, model: str, alias: str, at: str | None, as_json: bool, check: Verification) -> None:
    if at is not None:
        answer = ledger.serving_at(parse_time(at), alias)
        if as_json:
            _print_json({"model": model, "alias": alias, "at": answer.at.isoformat(), "version": answer.version,
                         "candidate": answer.candidate, "weight": answer.weight, "chain_ok": check.ok})  # fmt: skip
        else:
            typer.echo(_serving_line(model, answer))
    elif as_json:
        _print_json({"entries": [e.model_dump(mode="json") for e in ledger.entries()], "chain_ok": check.ok,
                     "problems": check.problems})  # fmt: skip
    else:
        entries = ledger.entries()
        if not entries:
            typer.echo(f"{model}: the ledger is empty (no alias has moved since it was introduced)")
        for entry in entries:
            typer.echo(describe(entry))
