"""`nonstop` starts without the libraries only some commands use: every command (and every
CLI test's subprocess) would otherwise pay for scikit-learn, scipy, pandas and Ray at start."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("sklearn", "scipy", "pandas", "ray")


def _heavy_after(modules: str) -> list[str]:
    """The heavy libraries a fresh interpreter holds after importing `modules`."""
    probe = f"import json, sys, {modules}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_the_cli_imports_no_heavy_library_until_a_command_needs_it() -> None:
    assert _heavy_after("nonstop_ops.cli") == []


def test_the_rollout_commands_move_a_rollout_without_scikit_learn_scipy_or_pandas() -> None:
    """What `nonstop rollout start|advance|pause|...` import to move one (the policy, its
    evidence, the ledger's moves): eleven such commands in a row is how a rollout by hand goes."""
    modules = "nonstop_ops.commands.rollout, serve_app.rollout.moves, serve_app.rollout.policy, serve_app.rollout.replay_check"
    assert _heavy_after(modules) == []
