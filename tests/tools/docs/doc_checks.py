"""What the documentation cites must exist: every relative link and anchor, every test id,
every file of the project named by its path.

README.md, SECURITY.md and the pages under docs/ name the test that proves each promise and
link to each other; a moved file, a renamed test or a reworded heading breaks them silently.
These functions find such breaks without running anything: links are resolved on disk,
anchors against the headings of the target (as GitHub renders README.md and SECURITY.md, as
the site's Markdown renders docs/), and test ids against the test files parsed with `ast`
(the same names pytest collects, without importing Ray or any test module).

Cited forms of a test id: `tests/x/test_y.py::test_z` (a class and method, or a
parametrized id with its brackets, too); a path relative to a folder of tests/
(`serve_app/test_y.py::test_z`, `test_y.py::test_z`), which must match the end of a real
path; `::test_z`, the same file as the last one cited before it in the document; a bare
`test_z` in backticks, a test function defined in some test file; and a path
`tests/...` to a file or folder.
"""

from __future__ import annotations

import ast
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import unquote

from markdown.extensions.toc import slugify  # the site's own, so the two cannot drift

# a fenced block: ``` or ~~~ at the start of a line, to the same fence
_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,}).*?^\1\2[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_HTML_ID = re.compile(r"""\b(?:id|name)\s*=\s*["']([^"']+)["']""")
_ATTR_ID = re.compile(r"\{[^}]*#([\w-]+)[^}]*\}\s*$")
# `--8<-- "path"`, `"path:section"` or `"path:first:last"` (lines, 1-based, either may be empty)
_SNIPPET = re.compile(
    r"""^[ \t]*-{1,}8<-{1,}[ \t]+["']([^"':]+)(?::([a-z][\w-]*)|:(\d*):(\d*))?["'][ \t]*$""", re.MULTILINE
)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")

_PATH = r"(?:[\w.-]+/)*[\w.-]+\.py"
_CITATION = re.compile(
    rf"(?P<file>(?<![\w./-])(?:tests/{_PATH}|(?:[\w.-]+/)*test_\w+\.py))(?P<parts>(?:::\w+)*)(?:\[[^\]\s]*\])?"
    rf"|(?P<cont>(?<![\w\]])(?:::\w+)+)(?:\[[^\]\s]*\])?"
    r"|(?P<dir>(?<![\w./-])tests/(?:[\w-]+(?:/[\w-]+)*/?)?(?![\w./-]))"
)
_BARE_TEST = re.compile(r"test_\w+")
# a file of the project by its path from the root (`serve_app/rest/front.py`), outside tests/
# (cited tests are checked above) and outside what runs leave behind (benchmarks/out/)
PROJECT_FOLDERS = ("nonstop", "serve_app", "training", "nonstop_ops", "harness", "benchmarks", "kuberay", "examples", ".ci")
_SOURCE = re.compile(
    rf"(?<![\w./-])(?:{'|'.join(re.escape(f) for f in PROJECT_FOLDERS)})/(?:[\w.-]+/)*[\w.-]+\.(?:py|ya?ml|json|proto|toml|md)(?![\w/-])"
)


@dataclass(frozen=True)
class Problem:
    """One broken reference, located in its document."""

    document: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: {self.what}"


def documents(root: Path) -> list[Path]:
    """The documents checked: the README, the security page and every page of the site."""
    found = [root / name for name in ("README.md", "SECURITY.md") if (root / name).is_file()]
    return found + sorted((root / "docs").rglob("*.md"))


def _blank(match: re.Match[str]) -> str:
    """Keep a span's newlines, so offsets still give line numbers."""
    return re.sub(r"[^\n]", " ", match.group(0))


def without_code_blocks(text: str) -> str:
    return _FENCE.sub(_blank, text)


def without_code(text: str) -> str:
    return _INLINE_CODE.sub(_blank, without_code_blocks(text))


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _is_site_page(root: Path, document: Path) -> bool:
    return document.resolve().is_relative_to((root / "docs").resolve())


def expand_snippets(root: Path, text: str) -> str:
    """Inline what `--8<-- "path"` (`"path:section"`, `"path:first:last"`) includes, paths from the root."""

    def include(match: re.Match[str]) -> str:
        path = root / match.group(1)
        if not path.is_file():
            return ""
        included = path.read_text(encoding="utf-8")
        if match.group(2):
            section = re.search(
                rf"--8<-- \[start:{re.escape(match.group(2))}\].*?\n(.*?)^.*--8<-- \[end:{re.escape(match.group(2))}\]",
                included,
                re.DOTALL | re.MULTILINE,
            )
            included = section.group(1) if section else ""
        elif match.group(3) is not None:
            lines = included.splitlines()
            first, last = match.group(3), match.group(4)
            included = "\n".join(lines[int(first) - 1 if first else 0 : int(last) if last else None])
        return included

    return _SNIPPET.sub(include, text)


def _heading_text(raw: str) -> str:
    """A heading as rendered text: links become their text, code and emphasis marks go."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    text = _ATTR_ID.sub("", text)
    text = re.sub(r"<[^>]+>", "", text)
    return text.replace("`", "").replace("**", "").replace("*", "")


def github_slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, each space a hyphen."""
    kept = "".join(c for c in text.strip().lower() if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def site_slug(text: str) -> str:
    """The site's heading anchor: Python-Markdown's `toc` slugify, as mkdocs uses it."""
    return slugify(text, "-")


def anchors(root: Path, document: Path) -> set[str]:
    """Every anchor a link may name in `document`: headings, explicit ids, included headings."""
    text = document.read_text(encoding="utf-8")
    site = _is_site_page(root, document)
    if site:
        text = expand_snippets(root, text)
    text = without_code_blocks(text)
    found: set[str] = set(_HTML_ID.findall(text))
    seen: dict[str, int] = {}
    for match in _HEADING.finditer(text):
        explicit = _ATTR_ID.search(match.group(2))
        if explicit:
            found.add(explicit.group(1))
            continue
        title = _heading_text(match.group(2))
        slug = site_slug(title) if site else github_slug(title)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else (f"{slug}_{count}" if site else f"{slug}-{count}"))
    return found


def dead_links(root: Path, document: Path) -> list[Problem]:
    """Relative links (and images) in `document` whose file, folder or anchor does not exist."""
    text = without_code(document.read_text(encoding="utf-8"))
    name = str(document.relative_to(root))
    targets = [(m.start(), m.group(1)) for m in _LINK.finditer(text)]
    targets += [(m.start(), m.group(1)) for m in _REFERENCE.finditer(text)]
    problems = []
    for offset, target in sorted(targets):
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # another site: not checked here (offline)
        path_part, _, anchor = target.partition("#")
        path = (document.parent / unquote(path_part)).resolve() if path_part else document
        if not path.exists():
            problems.append(Problem(name, _line(text, offset), f"link to {target}: no such file"))
        elif anchor and path.suffix == ".md" and unquote(anchor) not in anchors(root, path):
            problems.append(Problem(name, _line(text, offset), f"link to {target}: no such anchor"))
    return problems


def _names(tree: ast.Module) -> set[str]:
    """What pytest collects from a module, by name: test functions, Test classes, their tests."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name) and t.id.startswith("test"))
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names.add(node.name)
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name.startswith("test"):
                    names.add(f"{node.name}::{item.name}")
    return names


@cache
def _tests_by_file(tests: Path) -> dict[str, frozenset[str]]:
    index = {}
    for path in sorted(tests.rglob("*.py")):
        relative = str(path.relative_to(tests.parent))
        names = _names(ast.parse(path.read_text(encoding="utf-8"))) if path.name.startswith("test_") else set()
        index[relative] = frozenset(names)
    return index


def tests_by_file(root: Path) -> dict[str, frozenset[str]]:
    """Python files under tests/ ('tests/x/test_y.py') and the test names each defines."""
    return _tests_by_file((root / "tests").resolve())


def _files_matching(index: dict[str, frozenset[str]], cited: str) -> list[str]:
    return [path for path in index if path == cited or path.endswith("/" + cited)]


def missing_tests(root: Path, document: Path) -> list[Problem]:
    """Test ids, test files and tests/ folders cited in `document` that do not exist."""
    index = tests_by_file(root)
    text = without_code_blocks(document.read_text(encoding="utf-8"))
    name = str(document.relative_to(root))
    every_test = frozenset().union(*index.values()) if index else frozenset()
    problems: list[Problem] = []
    last_files: list[str] = []
    for match in _CITATION.finditer(text):
        line = _line(text, match.start())
        if match.group("dir"):
            if not (root / match.group("dir")).exists():
                problems.append(Problem(name, line, f"{match.group('dir')}: no such folder or file"))
            continue
        if match.group("file"):
            cited = match.group("file")
            files = _files_matching(index, cited)
            if not files:
                problems.append(Problem(name, line, f"{cited}: no such file under tests/"))
                continue
            if Path(cited).name.startswith("test_"):  # `::name` after it means a test of this file
                last_files = files
            parts = match.group("parts")
        else:
            parts = match.group("cont")
            cited, files = "", last_files
            if not files:
                problems.append(Problem(name, line, f"{parts}: no test file cited before it"))
                continue
        test = parts.removeprefix("::")
        if test and not any(test in index[path] for path in files):
            problems.append(Problem(name, line, f"{cited}{parts}: no such test"))
    for match in _INLINE_CODE.finditer(text):
        if _BARE_TEST.fullmatch(match.group(2)) and match.group(2) not in every_test:
            problems.append(Problem(name, _line(text, match.start()), f"{match.group(2)}: no test of that name"))
    return problems


def missing_files(root: Path, document: Path) -> list[Problem]:
    """Project files named by their path in `document` (outside fenced blocks) that do not
    exist: a module moved or renamed leaves its old path in the prose."""
    text = without_code_blocks(document.read_text(encoding="utf-8"))
    name = str(document.relative_to(root))
    return [
        Problem(name, _line(text, m.start()), f"{m.group(0)}: no such file")
        for m in _SOURCE.finditer(text)
        if not Path(m.group(0)).name.startswith("test_") and not m.group(0).startswith("benchmarks/out/")
        and not (root / m.group(0)).is_file()
    ]  # fmt: skip


def check(root: Path, paths: Iterable[Path] | None = None) -> list[Problem]:
    """Every broken link, missing test id and missing project file in the documents under `root`."""
    problems = []
    for document in paths if paths is not None else documents(root):
        problems += dead_links(root, document) + missing_tests(root, document) + missing_files(root, document)
    return problems
