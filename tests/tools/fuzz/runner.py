"""Run fuzz targets in child processes and report what each found.

A child that dies (a native crash, an unexpected exception, a hang or a memory blow-up,
all caught by libFuzzer) is a finding: its output and the crashing input are kept under
the artifacts folder. Shared by the short run in the test suite and `make fuzz`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TARGETS = ("json", "arrow", "v2", "manifest", "alias")
_DONE = re.compile(rb"Done (\d+) runs in (\d+) second")


@dataclass(frozen=True)
class FuzzResult:
    target: str
    seconds: float
    returncode: int
    runs: int
    counts: dict[str, int]
    output: str

    @property
    def crashed(self) -> bool:
        return self.returncode != 0

    def line(self) -> str:
        refused = sum(v for k, v in self.counts.items() if k.startswith("refused:"))
        return (
            f"{self.target}: {self.seconds:.0f} s, {self.runs} runs, crashes {int(self.crashed)}, "
            f"unexpected exceptions (5xx) {int(self.crashed)}, accepted {self.counts.get('accepted', 0)}, "
            f"typed refusals {refused} (counts at the last checkpoint)"
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


def run(targets: tuple[str, ...], work: Path, seconds: int) -> list[FuzzResult]:
    """All targets side by side, each for `seconds`."""
    started = time.monotonic()
    children = {t: start(t, work, seconds) for t in targets}
    results = []
    for target, (process, log, stats) in children.items():
        returncode = process.wait(timeout=seconds + 300)
        output = log.read_bytes()
        done = _DONE.search(output)
        counts = json.loads(stats.read_text()) if stats.exists() else {}
        runs = int(done.group(1)) if done else int(counts.get("runs", 0))
        results.append(FuzzResult(target, time.monotonic() - started, returncode, runs, counts, output.decode(errors="replace")))
    return results


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 1800
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("build/fuzz")
    targets = tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else TARGETS
    results = run(targets, work, seconds)
    for result in results:
        print(result.line())
    sys.exit(1 if any(r.crashed for r in results) else 0)


if __name__ == "__main__":
    main()
