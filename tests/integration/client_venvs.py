"""Venvs for clients that cannot share the project's (they pin protobuf, pandas or psutil
below what Ray Serve 2.60 runs with here): built once per machine from PyPI and reused.
The tests run a script with the venv's python and read what it prints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def client_python(requirement: str, module: str) -> Path:
    """The python of a venv holding `requirement`, in which `module` imports."""
    home = Path(tempfile.gettempdir()) / f"nonstop-{requirement.replace('==', '-').replace('[', '-').replace(']', '')}"
    python = home / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", f"import {module}"], capture_output=True, check=False).returncode == 0:
        return python
    building = Path(tempfile.mkdtemp(prefix="nonstop-client-"))
    subprocess.run([sys.executable, "-m", "venv", building], check=True)
    install = [building / "bin" / "pip", "install", "-q", requirement]
    subprocess.run(install, check=True, timeout=900, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    shutil.rmtree(home, ignore_errors=True)
    building.rename(home)  # whole or not at all; its python finds its packages from where it is
    return python
