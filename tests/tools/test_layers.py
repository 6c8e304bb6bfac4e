"""The layering contracts in pyproject.toml hold and can fail, serve_app has no import
cycle, and the wheel ships no harness."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("nonstop", "nonstop_ops", "serve_app", "training")
HARNESS = "harness"  # beside the packages, imported by tests and benchmarks, never installed
LINT = str(Path(sys.executable).parent / "lint-imports")


def lint(folder: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH: grimp must find the packages of `folder`, not the installed ones.
    # COLUMNS: lint-imports wraps its report at the terminal's width (80 without one), which
    # would split a long contract name from its KEPT/BROKEN.
    return subprocess.run(
        [LINT, "--config", str(folder / "pyproject.toml")],
        cwd=folder,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin", "COLUMNS": "400"},
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
        ("nonstop/registry/aliases.py", "import serve_app.replica.holder"),  # the core reaching into serving
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


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        ("serve_app/rest/v2_routes.py", "import serve_app.grpc_v2.servicer", "transports never import each other"),
        ("serve_app/grpc_v2/servicer.py", "import serve_app.rest.v2_routes", "transports never import each other"),
        ("serve_app/wire/v2_tensors.py", "import serve_app.rest.body", "never import a transport"),
        ("serve_app/rollout/moves.py", "import serve_app.grpc_v2.servicer", "never import a transport"),
        ("serve_app/replica/dataplane.py", "import serve_app.edge", "never import a transport"),
    ],
)
def test_a_forbidden_import_between_serve_app_wings_breaks_its_contract(
    tmp_path: Path, module: str, forbidden: str, contract: str
) -> None:
    tree = copy_tree(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{forbidden}  # added by the test\n")
    done = lint(tree)
    broken = [line for line in done.stdout.splitlines() if line.endswith(" BROKEN")]
    assert done.returncode != 0 and any(contract in line for line in broken), done.stdout


# Import cycles among a package's modules (import-linter has no contract for them): the
# strongly connected groups of grimp's import graph, found in a child process so that the
# package is the one on its PYTHONPATH, not the one this process imported.
CYCLES = """
import json, sys
import grimp

graph = grimp.build_graph(sys.argv[1], cache_dir=None)
index, low, stack, on_stack, cycles = {}, {}, [], set(), []

def visit(module):
    index[module] = low[module] = len(index)
    stack.append(module)
    on_stack.add(module)
    for imported in sorted(graph.find_modules_directly_imported_by(module)):
        if imported not in index:
            visit(imported)
            low[module] = min(low[module], low[imported])
        elif imported in on_stack:
            low[module] = min(low[module], index[imported])
    if low[module] == index[module]:
        group = []
        while not group or group[-1] != module:
            group.append(stack.pop())
            on_stack.discard(group[-1])
        if len(group) > 1:
            cycles.append(sorted(group))

for module in sorted(graph.modules):
    if module not in index:
        visit(module)
print(json.dumps(cycles))
"""


def import_cycles(folder: Path, package: str) -> list[list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", CYCLES, package],
        cwd=folder,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.parametrize("package", [*PACKAGES, HARNESS])
def test_no_package_has_an_import_cycle(package: str) -> None:
    """Deferred and TYPE_CHECKING imports count too: grimp sees every import statement."""
    assert import_cycles(ROOT, package) == []


def test_a_planted_import_cycle_is_found(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    state = tree / "serve_app" / "replica" / "state.py"
    state.write_text(state.read_text() + "\nimport serve_app.replica.holder  # added by the test\n")
    cycles = import_cycles(tree, "serve_app")
    assert any({"serve_app.replica.holder", "serve_app.replica.state"} <= set(group) for group in cycles), cycles


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
