"""`nonstop` starts without the libraries only some commands use: every command (and every
CLI test's subprocess) would otherwise pay for scikit-learn, scipy, pandas and Ray at start."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("sklearn", "scipy", "pandas", "ray")


def test_the_cli_imports_no_heavy_library_until_a_command_needs_it() -> None:
    probe = f"import json, sys, nonstop_ops.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout) == []
