"""Run fuzz targets in child processes and report what each found.

A child that dies (a native crash, an unexpected exception, a hang or a memory blow-up,
all caught by libFuzzer) is a finding: its output and the crashing input are kept under
the artifacts folder, named by kind (`crash-`, `timeout-`, `oom-`). Shared by the short
run in the test suite and `make fuzz`, which can write its figures as a Markdown report:

    python -m tests.tools.fuzz.runner SECONDS WORK [TARGET,...] [--at-once N] [--report FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

TARGETS = ("json", "json-numeric", "arrow", "v2", "v2-numeric", "grpc", "manifest", "alias")
ARTIFACT_TARGETS = tuple(f"artifact-{family}" for family in ("tree", "forest", "extra-trees", "boosting", "svm", "sparse"))
_DONE = re.compile(rb"Done (\d+) runs in (\d+) second")
_EXECS = re.compile(rb"stat::number_of_executed_units: *(\d+)")
FINDING_KINDS = ("crash", "timeout", "oom", "leak")  # libFuzzer's artifact prefixes


@dataclass(frozen=True)
class FuzzResult:
    target: str
    seconds: float
    returncode: int
    runs: int
    counts: dict[str, int]
    output: str
    findings: tuple[str, ...] = ()  # the kept inputs' file names, one per finding
    execs: int = 0  # libFuzzer's executed units (the seeds included), 0 if it printed none

    @property
    def crashed(self) -> bool:
        return self.returncode != 0

    def found(self, kind: str) -> int:
        return sum(1 for name in self.findings if name.startswith(f"{kind}-"))

    def line(self) -> str:
        refused = sum(v for k, v in self.counts.items() if k.startswith("refused:") or k == "refused")
        return (
            f"{self.target}: {self.seconds:.0f} s, {self.runs} runs, crashes {int(self.crashed)}, "
            f"unexpected exceptions (5xx) {int(self.crashed)}, accepted {self.counts.get('accepted', 0)}, "
            f"typed refusals {refused} (counts as last written)"
        )


def start(target: str, work: Path, seconds: int) -> tuple[subprocess.Popen[bytes], Path, Path]:
    folder = work / target
    (folder / "artifacts").mkdir(parents=True, exist_ok=True)
    stats = folder / "stats.json"
    command = [
        sys.executable, "-m", "tests.tools.fuzz.targets", target, str(folder / "corpus"),
        f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048", "-max_len=16384",
        f"-artifact_prefix={folder / 'artifacts'}/", "-print_final_stats=1",
    ]  # fmt: skip
    log = folder / "output.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "FUZZ_STATS": str(stats)})
    return process, log, stats


def run(targets: tuple[str, ...], work: Path, seconds: int, at_once: int | None = None) -> list[FuzzResult]:
    """Every target for `seconds`, side by side, at most `at_once` at a time (all unless told)."""
    waves = [targets[i : i + (at_once or len(targets))] for i in range(0, len(targets), at_once or max(len(targets), 1))]
    results = []
    for wave in waves:
        started = time.monotonic()
        children = {t: start(t, work, seconds) for t in wave}
        for target, (process, log, stats) in children.items():
            returncode = process.wait(timeout=seconds + 300)
            output = log.read_bytes()
            done, execs = _DONE.search(output), _EXECS.search(output)
            counts = json.loads(stats.read_text()) if stats.exists() else {}
            runs = int(done.group(1)) if done else int(counts.get("runs", 0))
            kept = tuple(sorted(p.name for p in (work / target / "artifacts").iterdir() if p.name.startswith(FINDING_KINDS)))
            results.append(FuzzResult(
                target, time.monotonic() - started, returncode, runs, counts, output.decode(errors="replace"), kept,
                int(execs.group(1)) if execs else 0,
            ))  # fmt: skip
    return results


def report(results: list[FuzzResult], command: str, started: datetime) -> str:
    """The run's figures as Markdown, written by the run itself (docs/results/fuzz.md)."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        "# Fuzzing run",
        "",
        f"Written by `{command}`, started {started:%Y-%m-%d %H:%M} UTC, ended {datetime.now(UTC):%H:%M} UTC, "
        f"on {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average at the end {load} (a shared machine: runs per second depend on it).",
        "",
        "Each target ran in its own child process under libFuzzer (`-timeout=10`, `-rss_limit_mb=2048`): a crash "
        "(a native fault or an unexpected Python exception), a hang over 10 s on one input, or memory over 2 GiB "
        "ends the run and is a finding, its input kept. Artifact targets count what a mutated artifact met: "
        "refused (a typed refusal at load), accepted (loaded and answered every output) or raised (a Python "
        "exception from the estimator on content that passed, which verification turns into a refusal).",
        "",
        "| target | wall seconds (start-up included) | executions | executions/s | crashes | hangs | out of memory "
        "| accepted | refused | raised | exit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        refused = sum(v for k, v in r.counts.items() if k.startswith("refused"))
        execs = r.execs or r.runs
        lines.append(
            f"| {r.target} | {r.seconds:.0f} | {execs} | {execs / max(r.seconds, 1):.0f} | {r.found('crash')} | "
            f"{r.found('timeout')} | {r.found('oom')} | {r.counts.get('accepted', 0)} | {refused} | "
            f"{r.counts.get('raised', 0)} | {r.returncode} |"
        )
    found = [f"`{r.target}/artifacts/{name}`" for r in results for name in r.findings]
    lines += ["", f"Findings: {', '.join(found) if found else 'none'}.", ""]
    lines.append("Accepted, refused and raised are as the target last wrote them (every 2 s), so the last moments are not in them.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.fuzz.runner")
    parser.add_argument("seconds", type=int, nargs="?", default=1800)
    parser.add_argument("work", type=Path, nargs="?", default=Path("build/fuzz"))
    parser.add_argument("targets", nargs="?", default=",".join(TARGETS + ARTIFACT_TARGETS), help="comma-separated")
    parser.add_argument("--at-once", type=int, default=None, help="at most this many targets at a time (all unless told)")
    parser.add_argument("--report", type=Path, default=None, help="write the figures as Markdown here")
    args = parser.parse_args()
    started = datetime.now(UTC)
    results = run(tuple(args.targets.split(",")), args.work, args.seconds, args.at_once)
    for result in results:
        print(result.line(), flush=True)
    if args.report is not None:
        command = "python -m tests.tools.fuzz.runner " + " ".join(sys.argv[1:])
        args.report.write_text(report(results, command, started))
    sys.exit(1 if any(r.crashed for r in results) else 0)


if __name__ == "__main__":
    main()
