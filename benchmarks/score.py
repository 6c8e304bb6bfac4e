"""`nonstop score` throughput against in-process `predict`, 1 and 2 workers, memory high-water.

A dataset of --rows rows (the demo model's 30 features and an id, in --partitions
Parquet files) is scored by `nonstop score`'s job (nonstop/batch/job.py) on a local Ray
instance of 2 CPUs, once with one scoring actor and once with two, from the read to the
written Parquet. Each is preceded by the same job on a small dataset (--small rows): a
job's fixed cost (starting the actor pool and its model loads, planning the read), so the
rate past start-up is (rows - small) / (seconds - small's seconds). The baselines are the
same version loaded in this process predicting the same rows, batch by batch, as a matrix
already in memory (the arithmetic alone, the most any scoring path could reach), and the
same read → check → score → write in this process without Ray. Memory: the peak of the summed RSS of this process and
every process Ray started for it, sampled every 0.2 s (shared pages count once per
process, so this overstates), and the peak of this process alone.

    flock /tmp/nonstop-ray.lock .venv/bin/python -m benchmarks.score --out docs/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from nonstop.batch.job import ScoreOptions, score
from nonstop.batch.scorer import BatchScorer
from nonstop.columns import MAX_STRING_LENGTH
from nonstop.config import Settings
from nonstop.loading import TrustPolicy, load_version
from nonstop.registry import Registry
from training import demo
from training.job import TrainOptions, train

MODEL = "breast_cancer"
BATCH = 8192


class Peak:
    """The highest summed RSS of this process tree, sampled in a thread while running."""

    def __init__(self, every_s: float = 0.2) -> None:
        self._every_s, self._stop = every_s, threading.Event()
        self.tree = self.own = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            own = me.memory_info().rss
            total = own
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    continue
            self.tree, self.own = max(self.tree, total), max(self.own, own)
            self._stop.wait(self._every_s)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def write_dataset(folder: Path, rows: int, partitions: int) -> list[str]:
    """Demo rows (bootstrap samples with noise) in `day=<i>` folders, an `id` key each."""
    names: list[str] = []
    per = rows // partitions
    for part in range(partitions):
        frame = demo.day_frame(1000 + part, per).drop(columns=["target"])
        names = list(frame.columns)
        frame.insert(0, "id", np.arange(per, dtype=np.int64) + part * per)
        path = folder / f"day={part:03d}" / "part-0.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return names


def in_process(registry: Registry, folder: Path, names: list[str]) -> dict[str, Any]:
    loaded = load_version(registry, MODEL, 1, TrustPolicy())
    matrix = pd.read_parquet(folder)[loaded.manifest.feature_names].to_numpy(dtype=np.float64)
    started = time.perf_counter()
    for start in range(0, len(matrix), BATCH):
        loaded.predict(matrix[start : start + BATCH])
    seconds = time.perf_counter() - started
    return {"rows": len(matrix), "seconds": seconds, "rows_per_s": len(matrix) / seconds, "fast_path": loaded.fast is not None}


def in_process_pipeline(registry: Registry, folder: Path, out: Path) -> dict[str, Any]:
    """The same work as one scoring actor, in this process without Ray: read the Parquet in
    batches, check and score each (BatchScorer), write the scored rows."""
    scorer = BatchScorer(load_version(registry, MODEL, 1, TrustPolicy()), keep=("id",), max_string_length=MAX_STRING_LENGTH)
    started = time.perf_counter()
    rows, writer = 0, None
    for batch in ds.dataset(folder, format="parquet", partitioning="hive").to_batches(batch_size=BATCH):
        table = scorer(pa.Table.from_batches([batch]))
        writer = writer or pq.ParquetWriter(out, table.schema)
        writer.write_table(table)
        rows += table.num_rows
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def scored(settings: Settings, small: Path, folder: Path, out: Path, workers: int) -> dict[str, Any]:
    def options(data: Path, name: str) -> ScoreOptions:
        return ScoreOptions(model=MODEL, data=str(data), out=str(out / name), keep=("id",), workers=workers, batch_size=BATCH)

    start_up = score(options(small, "small"), settings)
    with Peak() as peak:
        started = time.perf_counter()
        summary = score(options(folder, "full"), settings)
        wall = time.perf_counter() - started
    rows = summary.scored + summary.rejected
    past = (rows - start_up.scored - start_up.rejected) / max(summary.seconds - start_up.seconds, 1e-9)
    return {
        "workers": workers, "scored": summary.scored, "rejected": summary.rejected,
        "job_seconds": summary.seconds, "wall_seconds": wall, "rows_per_s": summary.rows_per_s,
        "small_rows": start_up.scored + start_up.rejected, "small_seconds": start_up.seconds, "past_start_rows_per_s": past,
        "peak_tree_rss_mb": peak.tree / 2**20, "peak_driver_rss_mb": peak.own / 2**20,
    }  # fmt: skip


def report(results: dict[str, Any]) -> str:
    base, pipe = results["in_process"], results["in_process_pipeline"]
    lines = [
        "# Batch scoring throughput (benchmarks/score.py)",
        "",
        f"Machine: {results['machine']}; Ray {results['ray']}; {results['rows']:,} rows × {results['features']} "
        f"features in {results['partitions']} Parquet partitions ({results['data_mb']:.0f} MB on disk); "
        f"the demo model (linear, numpy fast path: {base['fast_path']}); batches of {BATCH} rows; one run each, "
        "on a 2-core machine shared with other work, so the figures are indicative. Raw: `score.json`.",
        "",
        "| run | rows/s | past start-up | vs in-process pipeline, past start-up | seconds | start-up (small job) | "
        "peak RSS, all processes | peak RSS, driver |",
        "|---|---|---|---|---|---|---|---|",
        f"| in-process `predict`, matrix in memory | {base['rows_per_s']:,.0f} | | | {base['seconds']:.1f} | | | |",
        f"| in-process read → check and score (BatchScorer) → write, no Ray | {pipe['rows_per_s']:,.0f} | | 100 % | "
        f"{pipe['seconds']:.1f} | | | |",
    ]
    for run in results["score"]:
        lines.append(
            f"| `nonstop score`, {run['workers']} worker(s), read → score → write | {run['rows_per_s']:,.0f} | "
            f"{run['past_start_rows_per_s']:,.0f} | {run['past_start_rows_per_s'] / pipe['rows_per_s']:.0%} | "
            f"{run['job_seconds']:.1f} | {run['small_seconds']:.1f} s ({run['small_rows']:,} rows) | "
            f"{run['peak_tree_rss_mb']:,.0f} MB | {run['peak_driver_rss_mb']:,.0f} MB |"
        )
    one, two = results["score"][0], results["score"][-1]
    lines += [
        "",
        f"Scaling from 1 to 2 workers past start-up: ×{two['past_start_rows_per_s'] / one['past_start_rows_per_s']:.2f}. "
        "A job costs a few seconds before its first row (the actor pool, one model load per actor, the read's plan), "
        "whatever its size; past that, the rate is what more rows cost. The in-process pipeline runs on one core; "
        "`nonstop score` runs its read tasks, its actors and Ray itself on the same two cores. It also does all the "
        "pipeline does: reads and decodes the Parquet, checks every value by serving's rules, carries the key, and "
        "writes the scored and rejected rows.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--partitions", type=int, default=20)
    parser.add_argument("--small", type=int, default=50_000, help="rows of the job that measures the fixed cost")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/score"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nonstop-score-bench-") as tmp:
        root = Path(tmp)
        demo.write_days(root / "train", 3)
        registry = Registry(str(root / "registry"))
        train(TrainOptions(data=str(root / "train"), model=MODEL, promote=True), registry)
        names = write_dataset(root / "data", args.rows, args.partitions)
        write_dataset(root / "small", args.small, args.partitions)
        data_mb = sum(p.stat().st_size for p in (root / "data").rglob("*.parquet")) / 2**20
        baseline = in_process(registry, root / "data", names)
        pipeline = in_process_pipeline(registry, root / "data", root / "in-process.parquet")
        settings = Settings(registry=registry.uri)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")  # workers inherit PYTHONPATH
        try:
            runs = [scored(settings, root / "small", root / "data", root / f"out-{w}", w) for w in (1, 2)]
        finally:
            ray.shutdown()
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.1f} GB",
        "ray": ray.__version__, "rows": baseline["rows"], "features": len(names), "partitions": args.partitions,
        "data_mb": data_mb, "in_process": baseline, "in_process_pipeline": pipeline, "score": runs,
    }  # fmt: skip
    (args.out / "score.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "score.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
