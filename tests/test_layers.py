"""The layering contracts in pyproject.toml hold, can fail, and the wheel ships no harness."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nonstop", "nonstop_ops", "serve_app", "training")
HARNESS = "harness"  # beside the packages, imported by tests and benchmarks, never installed
LINT = str(Path(sys.executable).parent / "lint-imports")


def lint(folder: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH: grimp must find the packages of `folder`, not the installed ones
    return subprocess.run(
        [LINT, "--config", str(folder / "pyproject.toml")],
        cwd=folder,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin"},
        check=False,
    )


def copy_tree(target: Path) -> Path:
    for package in (*PACKAGES, HARNESS):
        shutil.copytree(ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


def test_the_layers_hold() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("nonstop/registry.py", "import serve_app.replica.holder"),  # the core reaching into serving
        ("serve_app/replica/holder.py", "import training.job"),  # serving and training are siblings
        ("training/job.py", "import nonstop_ops.cli"),  # nothing imports operations
        ("nonstop_ops/cli.py", "import harness.loadgen"),  # the installed code never imports the harness
        ("serve_app/replica/holder.py", "import harness.rollout"),
        ("nonstop_ops/commands/history.py", "import nonstop_ops.cli"),  # a command module importing the root app
    ],
)
def test_an_upward_import_breaks_the_suite(tmp_path: Path, module: str, upward: str) -> None:
    tree = copy_tree(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{upward}  # added by the test\n")
    done = lint(tree)
    assert done.returncode != 0, f"lint-imports accepted `{upward}` in {module}"
    assert "BROKEN" in done.stdout


def test_the_wheel_carries_no_test_harness(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("nonstop-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    top = {name.split("/")[0] for name in names if "/" in name and not name.split("/")[0].endswith(".dist-info")}
    assert top == set(PACKAGES), top
    # a harness module is found by its content, wherever in the wheel it would sit
    modules = {path.read_bytes() for path in (ROOT / HARNESS).glob("*.py")}
    assert len(modules) >= 3 and b"" not in modules, "the harness is not where this test looks"
    harness = [n for n in names if n.startswith((f"{HARNESS}/", "tests/", "benchmarks/")) or archive.read(n) in modules]
    assert not harness, harness
    assert "serve_app/serve_config.yaml" in names
