"""The `nonstop` command: run the stack locally, train, and move aliases.

The root app assembles the command modules of nonstop_ops/commands, each a typer app of
its own: a new module is one more name in the import below and one `app.add_typer` line,
in the order `nonstop --help` lists them. A module's app without a name adds its commands
at the top (`nonstop train`); a named one (`typer.Typer(name="rollout")`) is a group
(`nonstop rollout start`). Errors the project raises on purpose end as one line on stderr
and a non-zero exit (`main`), never a traceback.
"""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError

from nonstop.errors import NonstopError, validation_problems
from nonstop_ops.commands import history, kube_render, outcomes, registry, replay, rollout, score, stack, train
from nonstop_ops.commands.common import exit_code

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.add_typer(train.app)
app.add_typer(score.app)
app.add_typer(registry.app)
app.add_typer(stack.app)
app.add_typer(kube_render.app)
app.add_typer(history.app)
app.add_typer(rollout.app)
app.add_typer(outcomes.app)
app.add_typer(replay.app)


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
