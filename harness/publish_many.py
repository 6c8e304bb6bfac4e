"""Publish and promote a new version of each named small model, as a nightly job would.

Run as a process of its own (`python -m harness.publish_many`), so that publishing,
which is Python from end to end (fit, evaluate, card, sign), never holds the GIL of the
process that drives and records the load. One JSON line per model on stdout: the version
published and promoted, and when.

    python -m harness.publish_many --registry /tmp/reg --seed-offset 1000 m000 m001
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from harness.small_models import publish_small
from nonstop.registry import Registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True)
    parser.add_argument("--seed-offset", type=int, default=0, help="each model's seed is its number plus this")
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    registry = Registry(args.registry)
    for model in args.models:
        version = publish_small(registry, model, int(model.lstrip("m") or 0) + args.seed_offset)
        print(json.dumps({"model": model, "version": version, "promoted_at": time.time()}), flush=True)


def publish_in_parallel(registry: str, models: Sequence[str], seed_offset: int, processes: int, nice: int = 0) -> list[dict[str, Any]]:
    """`models` split over `processes` publishers (each its own interpreter), at `nice`;
    their lines, once all have finished. A publisher that fails fails the run."""
    chunks = [list(models[i::processes]) for i in range(processes)]
    running = [
        subprocess.Popen(
            ["nice", "-n", str(nice), sys.executable, "-m", "harness.publish_many", "--registry", registry,
             "--seed-offset", str(seed_offset), *chunk],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        for chunk in chunks
        if chunk
    ]
    lines: list[dict[str, Any]] = []
    for process in running:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"publisher {process.pid} exited with {process.returncode}")
        lines += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return lines


if __name__ == "__main__":
    main()
