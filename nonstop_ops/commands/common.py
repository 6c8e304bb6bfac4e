"""What every `nonstop` command shares: its options, the registry it opens, who acts, the
output, and the exit code each error ends with.

Every command reads the registry from --registry or NONSTOP_REGISTRY. The command modules
import this one, never the root app (nonstop_ops/cli.py), which imports them.
"""

from __future__ import annotations

import getpass
import json
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from nonstop.config import Settings
from nonstop.errors import NonstopError
from nonstop.registry import Registry
from nonstop_ops.cluster import ClusterError
from nonstop_ops.cluster.serve_config import serve_port

RegistryOpt = Annotated[str | None, typer.Option("--registry", help="registry URI (default: $NONSTOP_REGISTRY or ./registry)")]
ModelOpt = Annotated[str, typer.Option("--model", help="model name")]
AliasOpt = Annotated[str, typer.Option("--alias", help="alias to move")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="why, for the promotion ledger (`nonstop history`)")]
HttpPortOpt = Annotated[int, typer.Option("--http-port", help="Serve HTTP port on 127.0.0.1")]
DEMO_DATA = Path("data/demo")
SERVE_PORT = serve_port()  # from the packaged serve_config.yaml


def _registry(uri: str | None) -> Registry:
    return _open_registry(Settings.from_env(registry=uri))


def _open_registry(settings: Settings) -> Registry:
    return Registry(settings.registry, signing_key=settings.signing_key)


def _actor(command: str) -> str:
    """Who moved an alias, as the ledger records it: the operating-system user at the CLI."""
    return f"{getpass.getuser()} (nonstop {command} on {socket.gethostname()})"


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


EXIT_CODES: dict[type[NonstopError], int] = {NonstopError: 2, ClusterError: 3}


def exit_code(exc: NonstopError) -> int:
    """The code of the nearest listed ancestor of the error's type."""
    return next(EXIT_CODES[k] for k in type(exc).__mro__ if k in EXIT_CODES)
