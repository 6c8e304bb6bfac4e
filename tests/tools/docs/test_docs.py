"""The documentation site builds offline with no warning, and what the documents cite exists.

The site is built by mkdocs with the project's own mkdocs.yml (strict, offline). The link
and test-id checks (doc_checks) run on README.md, SECURITY.md and every page; each check is
also fed a broken document, so a checker that stopped checking would fail here too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from . import doc_checks

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "mkdocs.yml").is_file())
# Python's HTTP clients honour these: anything the build tried to fetch would fail on a closed port
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
# material's end-of-life notice is printed, not logged: it is not a build warning, only noise
QUIET = {"NO_MKDOCS_2_WARNING": "1"}


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE, **QUIET},
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's site, built once for this module."""
    folder = tmp_path_factory.mktemp("site")
    result = build(ROOT / "mkdocs.yml", folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return folder


def test_the_site_builds_strict_offline_and_loads_no_web_font(site: Path) -> None:
    pages = [page.read_text() for page in site.rglob("*.html")]
    assert len(pages) > 10
    assert not [page for page in pages if "fonts.googleapis.com" in page or "fonts.gstatic.com" in page]


def test_the_pages_include_the_benchmark_reports(site: Path) -> None:
    """A figure a report holds reaches the built page through the include."""
    performance = (site / "performance" / "index.html").read_text()
    first_row = next(line for line in (ROOT / "docs/results/peers.md").read_text().splitlines() if line.startswith("| **nonstop**"))
    cells = [cell.strip() for cell in first_row.strip("|").split("|")][1:]
    assert all(f">{cell}<" in performance for cell in cells), cells


def test_a_report_included_from_its_second_line_loses_only_its_title() -> None:
    """Pages skip a report's own `# title` (the page's headings frame it), and nothing else."""
    included = [
        (page, match.group(1))
        for page in doc_checks.documents(ROOT)
        for match in re.finditer(r'--8<-- "([^":]+):2:"', page.read_text())
    ]
    assert included
    assert not [(str(page), report) for page, report in included if not (ROOT / report).read_text().startswith("# ")]


@pytest.mark.parametrize(
    ("page", "named"),
    [
        ("See [there](missing.md).\n", "missing.md"),
        ("# Title\n\nSee [there](#no-such-heading).\n", "no-such-heading"),
        ('--8<-- "docs/results/no-such-report.md"\n', "no-such-report.md"),
    ],
    ids=["dead link", "dead anchor", "missing include"],
)
def test_the_strict_build_fails_on_a_broken_page(tmp_path: Path, page: str, named: str) -> None:
    config = (ROOT / "mkdocs.yml").read_text().split("\nnav:")[0]  # every page under docs/, no nav
    (tmp_path / "mkdocs.yml").write_text(config)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(page)
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert named in result.stdout + result.stderr


def test_every_relative_link_and_anchor_resolves() -> None:
    problems = [p for d in doc_checks.documents(ROOT) for p in doc_checks.dead_links(ROOT, d)]
    assert not problems, "\n".join(map(str, problems))


def test_every_cited_test_exists() -> None:
    problems = [p for d in doc_checks.documents(ROOT) for p in doc_checks.missing_tests(ROOT, d)]
    assert not problems, "\n".join(map(str, problems))


def test_every_project_file_named_exists() -> None:
    problems = [p for d in doc_checks.documents(ROOT) for p in doc_checks.missing_files(ROOT, d)]
    assert not problems, "\n".join(map(str, problems))


def test_no_report_table_is_copied_into_a_page() -> None:
    """A measured figure has one home, its report: the pages include it, never retype it."""
    results = ROOT / "docs" / "results"
    rows = {
        line.strip()
        for report in results.glob("*.md")
        for line in report.read_text().splitlines()
        if line.startswith("|") and re.search(r"\d", line) and not re.fullmatch(r"[|\s:-]+", line)
    }
    pages = [d for d in doc_checks.documents(ROOT) if not d.resolve().is_relative_to(results.resolve())]
    copied = [f"{page.relative_to(ROOT)}: {line}" for page in pages for line in page.read_text().splitlines() if line.strip() in rows]
    assert not copied, "\n".join(copied)


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A small project: one test file, one module, one security page, and a README citing them, rightly and wrongly."""
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    (tmp_path / "tests" / "unit" / "test_a.py").write_text(
        "import pytest\n\n"
        "def test_present():\n    pass\n\n"
        "@pytest.mark.parametrize('x', [1])\ndef test_many(x):\n    pass\n\n"
        "class TestGroup:\n    def test_member(self):\n        pass\n"
    )
    (tmp_path / "serve_app").mkdir()
    (tmp_path / "serve_app" / "here.py").write_text("")
    (tmp_path / "SECURITY.md").write_text("# Security: one page\n\n## Ports\n\nNone.\n")
    (tmp_path / "README.md").write_text(
        "# Project\n\n"
        "## What it keeps\n\n"
        "Good: [security](SECURITY.md), [ports](SECURITY.md#ports), [up](#what-it-keeps), [tests](tests/unit/).\n"
        "Dead: [gone](docs/gone.md), [nowhere](SECURITY.md#nowhere), [here](#not-a-heading).\n\n"
        "Proved by `tests/unit/test_a.py::test_present`, `::test_many[1]`, `tests/unit/test_a.py::TestGroup::test_member`,\n"
        "`unit/test_a.py::test_present`, `test_present`, `tests/unit/`.\n"
        "Not proved: `tests/unit/test_a.py::test_absent`, `::test_gone`, `tests/unit/test_b.py::test_x`,\n"
        "`tests/missing/`, `test_nothing_of_that_name`.\n"
        "Moved: `serve_app/gone.py`; kept: `serve_app/here.py`, `benchmarks/out/run.json`.\n\n"
        "```bash\npytest tests/ignored_in_code_blocks/test_z.py::test_y  # [x](ignored.md)\n```\n"
    )
    return tmp_path


def test_the_checks_report_each_dead_link_and_each_missing_test_by_line(broken: Path) -> None:
    problems = {str(p) for p in doc_checks.check(broken)}
    assert problems == {
        "README.md:6: link to docs/gone.md: no such file",
        "README.md:6: link to SECURITY.md#nowhere: no such anchor",
        "README.md:6: link to #not-a-heading: no such anchor",
        "README.md:10: tests/unit/test_a.py::test_absent: no such test",
        "README.md:10: ::test_gone: no such test",
        "README.md:10: tests/unit/test_b.py: no such file under tests/",
        "README.md:11: tests/missing/: no such folder or file",
        "README.md:11: test_nothing_of_that_name: no test of that name",
        "README.md:12: serve_app/gone.py: no such file",
    }


def test_the_checks_pass_a_document_once_it_is_fixed(broken: Path) -> None:
    readme = broken / "README.md"
    text = readme.read_text()
    kept = [line for line in text.splitlines() if not line.startswith(("Dead:", "Not proved:", "`tests/missing/`", "Moved:"))]
    readme.write_text("\n".join(kept) + "\n")
    assert doc_checks.check(broken) == []
