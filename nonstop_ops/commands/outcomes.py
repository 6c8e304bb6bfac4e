"""`nonstop outcomes` and `nonstop quality`: labels for served requests, and what they say of each version.

`outcomes` reads a CSV or Parquet file of `request_id,label` and stores it beside the
captures, checked against the task of the version the alias serves (nonstop/outcomes.py:
the same checks as `POST /v1/models/{model}/outcomes`). `quality` joins the captures
with the outcomes and prints each version's live metrics per role (nonstop/quality.py):
with ROC AUC and log loss on the labelled rows that carry probabilities, and in
`omitted` each metric that could not be computed, with the reason.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nonstop.errors import DataValidationError
from nonstop.registry import PRODUCTION, Registry
from nonstop_ops.commands.common import ModelOpt, RegistryOpt, _print_json, _registry

if TYPE_CHECKING:
    import pandas as pd

# pandas, pyarrow (the captures) and scikit-learn (the metrics) are imported by the two
# commands that use them: at the top they cost every `nonstop` command most of a second

app = typer.Typer()
MAX_FILE_BYTES = 512 * 1024 * 1024
DestinationOpt = Annotated[
    str | None, typer.Option("--destination", help="capture destination, if not the registry's captures/ (user_config capture.destination)")
]
_SINCE = re.compile(r"(\d{1,5})([dh])")


def _manifest_version(registry: Registry, model: str, alias: str) -> int:
    version = registry.resolve(model, alias)
    if version is None:
        raise DataValidationError(f"model {model!r} has no alias {alias!r}: name the alias whose version the labels are for")
    return version


def _read(data: Path) -> pd.DataFrame:
    """The file, bounded before it is parsed; its type from its suffix."""
    if not data.is_file():
        raise DataValidationError(f"{data} is not a file")
    size = os.stat(data).st_size
    if size > MAX_FILE_BYTES:
        raise DataValidationError(f"{data} is {size} bytes, over the limit of {MAX_FILE_BYTES}: split it")
    import pandas as pd

    if data.suffix == ".csv":
        return pd.read_csv(data, dtype={"request_id": str})
    if data.suffix == ".parquet":
        return pd.read_parquet(data)
    raise DataValidationError(f"{data}: outcomes are read from .csv or .parquet files")


@app.command()
def outcomes(
    model: ModelOpt,
    data: Annotated[Path, typer.Option("--data", help="a .csv or .parquet file with request_id and label columns")],
    alias: Annotated[str, typer.Option("--alias", help="the alias whose version's task checks the labels")] = PRODUCTION,
    destination: DestinationOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Store labels for served requests beside the captures, joined to them by request id."""
    from nonstop.capture import CaptureConfig, filesystem, root_of
    from nonstop.outcomes import check, from_frame, store

    store_ = _registry(registry)
    manifest = store_.manifest(model, _manifest_version(store_, model, alias))
    checked = check(from_frame(_read(data)), manifest)
    fs, path = filesystem(root_of(store_.uri, CaptureConfig(destination=destination)))
    report = store(fs, path, model, checked)
    _print_json(report.model_dump())
    if report.unknown:
        typer.echo(f"{report.unknown} id(s) match no captured record yet: stored, they join once captured", err=True)


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    match = _SINCE.fullmatch(text.strip())
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a window such as 7d or 12h", param_hint="--since")
    amount, unit = int(match.group(1)), match.group(2)
    return datetime.now(UTC) - (timedelta(days=amount) if unit == "d" else timedelta(hours=amount))


@app.command()
def quality(
    model: ModelOpt,
    since: Annotated[str | None, typer.Option("--since", help="only requests captured in this window: 7d, 12h")] = None,
    alias: Annotated[str, typer.Option("--alias", help="the alias whose version's task sets the metrics")] = PRODUCTION,
    destination: DestinationOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Live quality of each version, per role, on the captured requests whose labels arrived."""
    from nonstop.capture import CaptureConfig, filesystem, root_of
    from nonstop.outcomes import labelled
    from nonstop.quality import class_orders, live_quality

    store_ = _registry(registry)
    manifest = store_.manifest(model, _manifest_version(store_, model, alias))
    fs, path = filesystem(root_of(store_.uri, CaptureConfig(destination=destination)))
    found = labelled(fs, path, model, _since(since))
    classes = class_orders(found.frame, partial(store_.manifest, model))  # each version's probability columns, in order
    lines = live_quality(found.frame, manifest.task, classes=classes, captured=found.captured)
    _print_json([line.model_dump() for line in lines])
