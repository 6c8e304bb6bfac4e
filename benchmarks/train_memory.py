"""Peak memory and time of `nonstop train` on 30 daily partitions, before and after the two-pass reader.

    python -m benchmarks.train_memory [--days 30] [--rows 100000] [--features 30]
                                      [--before-ref 72b4ae4] [--out docs/results/train_memory.json]

Writes `--days` partitions `day=YYYY-MM-DD/part-0.parquet` of `--rows` rows × `--features`
float64 features and a binary label, then runs `nonstop train --data <folder>` as a
subprocess twice: with this checkout's code, and with the code of `--before-ref` (the
pandas reader: `git archive` of that commit into a temporary folder, put first on
PYTHONPATH). Peak memory is the high-water mark of the resident set of the process tree,
sampled every 50 ms, and the kernel's own high-water mark of the train process
(`wait4` ru_maxrss); both are set beside the matrix the fit needs (rows × features ×
8 bytes). Starts no Ray cluster. Numbers from a shared 2-core machine are noisy; the
memory figures much less than the times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
FIRST_DAY = date(2026, 10, 1)
MODEL = "bench"
GIB = 1024**3


def write_partitions(folder: Path, days: int, rows: int, features: int) -> int:
    """Deterministic rows: a linear signal with noise, so logistic regression has work to do."""
    weights = np.random.default_rng(0).normal(size=features)
    size = 0
    for day in range(days):
        rng = np.random.default_rng(day + 1)
        matrix = rng.normal(size=(rows, features))
        target = (matrix @ weights + rng.normal(scale=2.0, size=rows) > 0).astype(np.int64)
        frame = pd.DataFrame(matrix, columns=[f"x{i:02d}" for i in range(features)]).assign(target=target)
        path = folder / f"day={(FIRST_DAY + timedelta(days=day)).isoformat()}" / "part-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        size += path.stat().st_size
    return size


def _tree_rss(process: psutil.Process, proportional: bool = False) -> int:
    """The resident set of a process and its descendants; `proportional`: PSS, which
    counts shared memory (Ray's object store) once across the processes mapping it."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_full_info().pss if proportional else member.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_with_maxrss(code: Path, data: Path, registry: Path) -> dict[str, Any]:
    """One `nonstop train` run with `code` first on the import path, waited for with
    wait4 for the kernel's high-water mark of the train process itself."""
    command = [sys.executable, "-m", "nonstop_ops", "train", "--data", str(data), "--model", MODEL, "--registry", str(registry)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, cwd=code, env=env, stdout=out, stderr=err, text=True)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            process = psutil.Process(child.pid)
            while not done.is_set():
                try:
                    peak[0] = max(peak[0], _tree_rss(process))
                except psutil.Error:
                    return
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"nonstop train with {code} failed ({child.returncode}):\n{err.read()[-3000:]}")
        return {
            "seconds": round(seconds, 1),
            "peak_tree_rss_bytes": peak[0],
            "maxrss_bytes": usage.ru_maxrss * 1024,
            "stdout": out.read().strip().splitlines(),
        }


RAY_DATA_READ = """
import sys, time
import numpy as np, ray
data, rows, features, temp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp, logging_level="ERROR")
started = time.perf_counter()
names = [f"x{i:02d}" for i in range(features)]
matrix, labels, offset = np.empty((rows, features)), np.empty(rows, dtype=np.int64), 0
for batch in ray.data.read_parquet(data, columns=[*names, "target"]).iter_batches(batch_format="numpy", batch_size=65536):
    end = offset + len(batch["target"])
    matrix[offset:end] = np.column_stack([batch[n] for n in names])
    labels[offset:end] = batch["target"]
    offset = end
print(round(time.perf_counter() - started, 1), offset)
ray.shutdown()
"""


def ray_data_read(data: Path, rows: int, features: int, temp: Path) -> dict[str, Any]:
    """The alternative reader, measured: Ray Data streaming the same partitions into the
    same matrix, in a local Ray instance of its own (the process tree's PSS, so the
    object store is counted once)."""
    command = [sys.executable, "-c", RAY_DATA_READ, str(data), str(rows), str(features), str(temp)]
    child = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        peak = max(peak, _tree_rss(process, proportional=True))
        time.sleep(0.2)
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"the Ray Data read failed ({child.returncode}):\n{err[-3000:]}")
    seconds, read = out.split()[-2:]
    return {"seconds_reading": float(seconds), "rows": int(read), "peak_tree_pss_bytes": peak}


def idle_rss(code: Path) -> int:
    """What the interpreter and the training imports hold before any data: the floor."""
    script = "import resource, training.job, nonstop_ops.cli; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    done = subprocess.run([sys.executable, "-c", script], cwd=code, env={**os.environ, "PYTHONPATH": str(code)},
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout.strip()) * 1024


def export(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def report(result: dict[str, Any]) -> str:
    matrix = result["matrix_bytes"]
    lines = [
        "# Peak memory of `nonstop train` (benchmarks/train_memory.py)",
        "",
        f"{result['days']} daily Parquet partitions of {result['rows_per_day']:,} rows × {result['features']} float64 features "
        f"and a binary label ({result['parquet_bytes'] / GIB:.2f} GiB on disk); the matrix the fit needs is "
        f"{result['rows']:,} × {result['features']} × 8 bytes = {matrix / GIB:.2f} GiB. Built-in estimator (logistic "
        "regression behind an imputer and a scaler), one `nonstop train` subprocess per run, no Ray cluster. "
        f"Taken {result['taken']} on {result['machine']}; `{result['command']}`. Raw: `train_memory.json`.",
        "",
        "| code | peak RSS of the process tree | × matrix | kernel high-water (ru_maxrss) | × matrix | time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, label in (("before", f"before (`{result['before_ref']}`, pandas reader)"), ("after", "after (two-pass reader)")):
        run = result[name]
        lines.append(
            f"| {label} | {run['peak_tree_rss_bytes'] / GIB:.2f} GiB | {run['peak_tree_rss_bytes'] / matrix:.1f} | "
            f"{run['maxrss_bytes'] / GIB:.2f} GiB | {run['maxrss_bytes'] / matrix:.1f} | {run['seconds']:.0f} s |"
        )
    if "ray_data_read" in result:
        ray = result["ray_data_read"]
        lines += [
            "",
            f"Reading alone, the same partitions into the same matrix through Ray Data (`read_parquet(...).iter_batches`, "
            f"a local Ray instance of its own): peak {ray['peak_tree_pss_bytes'] / GIB:.2f} GiB "
            f"({ray['peak_tree_pss_bytes'] / matrix:.1f} × the matrix; proportional set size of the process tree, the object "
            f"store counted once) in {ray['seconds_reading']:.0f} s of reading, after Ray's start. The fit has to happen in "
            "one process either way, so `nonstop train` reads with pyarrow and starts no cluster.",
        ]
    lines += [
        "",
        f"The interpreter with the training imports holds {result['idle_rss_bytes'] / GIB:.2f} GiB before reading any "
        "data; it is included in both peaks.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--before-ref", default="72b4ae4", help="the commit whose pandas reader is measured as 'before'")
    parser.add_argument("--ray-data", action="store_true", help="also measure Ray Data reading into the matrix (starts Ray: run under the lock)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "train_memory.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="train-memory-") as tmp:
        work = Path(tmp)
        data = work / "data"
        size = write_partitions(data, args.days, args.rows, args.features)
        (work / "before").mkdir()
        before = export(args.before_ref, work / "before")
        runs = {
            "before": run_with_maxrss(before, data, work / "registry-before"),
            "after": run_with_maxrss(REPO, data, work / "registry-after"),
        }
        rows = args.days * args.rows
        if args.ray_data:
            runs["ray_data_read"] = ray_data_read(data, rows, args.features, work / "ray")
        result = {
            "taken": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / GIB:.0f} GiB, "
            f"Python {platform.python_version()}, 1-minute load average {os.getloadavg()[0]:.1f} at the end",
            "command": "python -m benchmarks.train_memory " + " ".join(sys.argv[1:]),
            "days": args.days,
            "rows_per_day": args.rows,
            "rows": rows,
            "features": args.features,
            "parquet_bytes": size,
            "matrix_bytes": rows * args.features * 8,
            "before_ref": args.before_ref,
            "idle_rss_bytes": idle_rss(REPO),
            **runs,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
