"""`nonstop train` shows progress to a person at a terminal and nothing extra to a script."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

from nonstop.registry import Registry
from tests.conftest import MODEL

STEPS = ("reading", "fitting on", "evaluating on", "writing the model card", "publishing")


def _command(registry: Registry, data: Path) -> list[str]:
    return [sys.executable, "-m", "nonstop_ops", "train", "--data", str(data), "--model", MODEL, "--registry", registry.uri]


def _run_on_terminal(command: list[str]) -> str:
    """Everything the command wrote to a pseudo-terminal standing for both stdout and stderr."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary)
    os.close(secondary)
    output = b""
    try:
        while select.select([primary], [], [], 120)[0]:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(primary)
        process.wait(timeout=120)
    assert process.returncode == 0, output
    return output.decode(errors="replace")


def test_no_progress_when_output_is_not_a_terminal(registry: Registry, demo_data: Path) -> None:
    done = subprocess.run(_command(registry, demo_data), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert [line.split(" ")[0] for line in done.stdout.splitlines()] == ["published", "trained", "compared:", "version=1"]


def test_progress_names_each_step_on_a_terminal(registry: Registry, demo_data: Path) -> None:
    shown = _run_on_terminal(_command(registry, demo_data))
    for step in STEPS:
        assert step in shown, shown
    assert "version=1" in shown
