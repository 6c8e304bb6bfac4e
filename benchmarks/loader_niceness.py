"""How long a CPU-bound load takes at each niceness on a saturated machine: why a loader
niced below serving converges late at saturation, and so runs at serving's priority within
a metered share (serve_app/replica/load_governor.py).

A fixed amount of pure-Python work (a stand-in for skops rebuilding a forest) runs in a
process of its own at each niceness in turn, rounds alternating the order, while
`--busy` processes at nice 0 spin (the replicas at saturation; 0 measures against
whatever else the machine runs). Reported: the wall time for the work, and its ratio to
the CPU time it took (how many times slower than alone). The share of the machine the
load takes is about CPU / (wall x cores): what serving gives up while it runs.

    .venv/bin/python -m benchmarks.loader_niceness --busy 2 --rounds 3 --out docs/results
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

NICENESS = (19, 15, 10, 5, 0)


def _work(nice: int, units: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    os.nice(nice - os.nice(0))
    started, cpu = time.monotonic(), time.process_time()
    total = 0
    for i in range(units):
        total += i * i % 7
    out.put((time.monotonic() - started, time.process_time() - cpu))


def _spin(stop: multiprocessing.Event) -> None:  # type: ignore[type-arg]
    while not stop.is_set():
        sum(range(10_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=2, help="nice-0 spinning processes (the replicas at saturation)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--units", type=int, default=3_000_000, help="loop iterations of the stand-in load")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    results: dict[int, list[tuple[float, float]]] = {n: [] for n in NICENESS}
    load = os.getloadavg()[0]
    try:
        for r in range(args.rounds):
            for nice in NICENESS if r % 2 == 0 else reversed(NICENESS):
                queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
                worker = multiprocessing.Process(target=_work, args=(nice, args.units, queue))
                worker.start()
                results[nice].append(queue.get())
                worker.join()
                print(f"round {r + 1} nice {nice}: wall {results[nice][-1][0]:.2f} s, cpu {results[nice][-1][1]:.2f} s", flush=True)
    finally:
        stop.set()
        for p in spinners:
            p.join()
    cores = os.cpu_count() or 1
    lines = [
        "# A load's wall time by niceness on a saturated machine",
        "",
        f"Taken {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cores} cores, {args.busy} nice-0 spinners beside it, "
        f"1-minute load average {load:.1f} at the start; medians of {args.rounds} rounds "
        f"(`python -m benchmarks.loader_niceness --busy {args.busy} --rounds {args.rounds}`).",
        "",
        "| niceness | wall s | CPU s | slower than alone | share of the machine |",
        "|---:|---:|---:|---:|---:|",
    ]
    summary = {}
    for nice in NICENESS:
        wall = statistics.median(w for w, _ in results[nice])
        cpu = statistics.median(c for _, c in results[nice])
        summary[nice] = {"wall_s": wall, "cpu_s": cpu}
        lines.append(f"| {nice} | {wall:.2f} | {cpu:.2f} | {wall / cpu:.1f}x | {cpu / (wall * cores):.0%} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loader-niceness.json").write_text(json.dumps({"busy": args.busy, "load_avg": load, "summary": summary}, indent=1))
    (args.out / "loader-niceness.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
