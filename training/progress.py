"""Progress on the slow steps of a training run, for a person watching a terminal.

It goes to stderr, and only when both stdout and stderr are terminals: scripts and tests
read stdout, and a redirected log should hold results, not spinner frames.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


@contextmanager
def step(description: str) -> Iterator[None]:
    """A spinner while the step runs, left behind as a ticked line with its duration."""
    with Progress(
        SpinnerColumn(finished_text="[green]✓"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not (sys.stdout.isatty() and sys.stderr.isatty()),
    ) as progress:
        task = progress.add_task(description, total=1)
        yield
        progress.update(task, completed=1)
