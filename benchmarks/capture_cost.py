"""What capture costs a serving stack, and how fast `nonstop replay` reads back what it wrote.

In one run, on one local cluster serving the demo model (benchmarks/throughput.py's
cluster, ports, model and client): the Serve config is redeployed with capture off, on
at 1 % sampling, on at 100 % (each rate to a destination of its own, so what each wrote
is counted apart) and on at 100 % to a destination nothing can be written to, and
one-row requests are sent at 16 and 64 clients; the settings run in reverse order every
other round and the levels every other phase (capture_cost_report.schedule). Every
replica's written and dropped rows are read from the status board when a setting takes
over: a new capture config is applied after the buffer is written, so the counters then
hold all that the setting before answered. Replicas are held at the autoscaler's floor:
a scale-up during one setting would make it look cheaper. The replicas' CPU is sampled
throughout (benchmarks/cpu_share.py), and each run gives the CPU they spent per request
answered beside its requests per second. Then `nonstop replay` (its library function,
on the same cluster beside the idle replicas) replays the day captured at 100 %, against
the same rows predicted in this process.

    flock /tmp/nonstop-ray.lock .venv/bin/python -m benchmarks.capture_cost --out docs/results
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks import throughput
from benchmarks.capture_cost_report import BY_NAME, FULL, OFF, Setting, report, schedule
from benchmarks.cpu_share import CpuSampler
from benchmarks.score import BATCH
from nonstop.batch.replay import LABEL, REQUEST_ID, ROW, SERVED_PREDICTION, SERVED_VERSION, ReplayOptions, captured_rows, replay
from nonstop.batch.scorer import BatchScorer
from nonstop.capture import RECORDS, filesystem, read
from nonstop.columns import MAX_STRING_LENGTH
from nonstop.config import Settings
from nonstop.loading import TrustPolicy, load_version
from nonstop.redact import public_uri
from nonstop.registry import Registry
from nonstop_ops.cluster import ClusterError
from nonstop_ops.cluster import lifecycle as local
from nonstop_ops.cluster.serve_config import deployment_config, load_serve_config, replica_bounds
from serve_app.replica.status_board import read_board, status_report

MODEL = throughput.MODEL
WARM_UP = (4, 2.0)  # clients, seconds: after each redeploy, before the levels are measured


def folder(work: Path, setting: Setting) -> str:
    """Each sample rate writes to a folder of its own, so the records of each are counted apart
    and a replica's status names the setting it applied. The unwritable one lies under a
    file (`blocker`), where no one, root included, can create a folder."""
    if setting.unwritable:
        return str(blocker(work) / "captures")
    return str(work / "captures" / f"rate-{setting.sample_rate:g}")


def blocker(work: Path) -> Path:
    return work / "a-file"


def destination(work: Path, setting: Setting) -> str | None:
    return folder(work, setting) if setting.enabled else None


def with_capture(config: dict[str, Any], setting: Setting, where: str | None) -> dict[str, Any]:
    """The shipped Serve config with this capture setting, its replicas held at the floor."""
    config = copy.deepcopy(config)
    deployment = deployment_config(config)
    floor = replica_bounds(config)[0]
    if "autoscaling_config" in deployment:
        deployment["autoscaling_config"].update(min_replicas=floor, initial_replicas=floor, max_replicas=floor)
    user = deployment.setdefault("user_config", {})
    user["capture"] = {**user.get("capture", {}), "enabled": setting.enabled, "sample_rate": setting.sample_rate,
                       "destination": where}  # fmt: skip
    return config


def apply(cluster: local.LocalCluster, config: dict[str, Any], setting: Setting, where: str | None, replicas: int) -> tuple[int, int]:
    """Redeploy, then wait until every replica reports the setting in force; returns the
    rows all replicas have written and dropped so far (their counters, read once applied)."""
    local.deploy(cluster, config)
    expected = public_uri(where) if where else None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = status_report(local.app_status(cluster), read_board())
        running = [r for r in found.replicas if r.state == "RUNNING"]
        captures = [r.status.capture for r in running if r.status is not None and r.status.capture is not None]
        if (
            found.status == "RUNNING" and len(running) == replicas and len(captures) == replicas
            and all(c.enabled == setting.enabled and c.destination == expected for c in captures)
        ):  # fmt: skip
            return sum(c.captured_rows for c in captures), sum(c.dropped_rows for c in captures)
        time.sleep(0.5)
    raise ClusterError(f"capture {setting.name} not applied by {replicas} running replicas within 120 s")


def measure_settings(
    cluster: local.LocalCluster, work: Path, rounds: int, seconds: float, body: throughput.Payload, replicas: int, cpu: CpuSampler
) -> dict[str, dict[str, Any]]:
    """Every phase of the schedule; per setting its runs (each with the replicas' CPU per
    request), requests answered, and the rows its replicas wrote and dropped (counter
    deltas from one setting's start to the next's)."""
    client: Callable[..., dict[str, Any]] = throughput.load_client()
    blocker(work).write_text("not a folder")
    url = f"{cluster.http_url}/v1/models/{MODEL}:predict"
    shipped = load_serve_config()
    results: dict[str, dict[str, Any]] = {}
    current: Setting | None = None
    counters = (0, 0)

    def switch(setting: Setting) -> None:
        nonlocal current, counters
        where = destination(work, setting)
        now = apply(cluster, with_capture(shipped, setting, where), setting, where, replicas)
        if current is not None:
            done = results[current.name]
            done["written_by_replicas"] += now[0] - counters[0]
            done["dropped"] += now[1] - counters[1]
        current, counters = setting, now

    for round_, setting, levels in schedule(rounds):
        if setting != current:
            switch(setting)
        entry = results.setdefault(setting.name, {"runs": [], "answered": 0, "written_by_replicas": 0, "dropped": 0})
        entry["answered"] += client(url, body, *WARM_UP)["requests"]
        for clients in levels:
            load = os.getloadavg()[0]
            started = time.time()
            run = client(url, body, clients, seconds)
            used = cpu.cpus(started, time.time())
            run["replica_cpu_us"] = used["replicas"] / run["rps"] * 1e6 if used is not None and run["rps"] > 0 else None
            entry["answered"] += run["requests"]
            entry["runs"].append({**run, "round": round_, "clients": clients, "load_1m": load, "setting": setting.name})
            print(f"round {round_} capture {setting.name} c={clients}: {run['rps']:.0f} req/s, p99 {run['p99_ms']:.1f} ms, "
                  f"replicas {run['replica_cpu_us'] or float('nan'):.0f} CPU µs/request", flush=True)  # fmt: skip
    if current != OFF:
        switch(OFF)  # the last setting's buffers written, its counters read
    for name, entry in results.items():
        where = destination(work, BY_NAME[name])
        table = read(*filesystem(where), RECORDS, MODEL) if where and not BY_NAME[name].unwritable else None
        entry["written"] = table.num_rows if table is not None else 0
    return results


def replay_against_in_process(settings: Settings, registry: Registry, root: str, since: datetime, out: Path) -> dict[str, Any]:
    """The day captured at 100 %: read back in this process (timed), replayed by the
    library function of `nonstop replay` on the connected cluster (timed end to end), and
    the same rows predicted and checked-and-scored in this process."""
    started = time.perf_counter()
    rows = captured_rows(root, MODEL, since)
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    done = replay(ReplayOptions(model=MODEL, candidate=1, since=since, destination=root, out=str(out)), settings)
    seconds = time.perf_counter() - started

    loaded = load_version(registry, MODEL, 1, TrustPolicy())
    matrix = rows.select(loaded.manifest.feature_names).to_pandas().to_numpy(dtype=np.float64)
    started = time.perf_counter()
    for start in range(0, len(matrix), BATCH):
        loaded.predict(matrix[start : start + BATCH])
    predict_seconds = time.perf_counter() - started
    scorer = BatchScorer(loaded, keep=(REQUEST_ID, ROW, SERVED_VERSION, LABEL, SERVED_PREDICTION), max_string_length=MAX_STRING_LENGTH)
    started = time.perf_counter()
    for start in range(0, rows.num_rows, BATCH):
        scorer(rows.slice(start, BATCH))
    pipeline_seconds = time.perf_counter() - started
    return {
        "replay": {
            "rows": rows.num_rows, "candidate": 1, "scored": done.scored, "rejected": done.rejected,
            "agreement": done.comparison.agreement if done.comparison.agreement is not None else float("nan"),
            "seconds": seconds, "rows_per_s": done.captured / seconds, "read_seconds": read_seconds,
            "ledger_seq": done.ledger_seq,
        },
        "in_process": {
            "predict_seconds": predict_seconds, "predict_rows_per_s": len(matrix) / predict_seconds,
            "pipeline_seconds": pipeline_seconds, "pipeline_rows_per_s": rows.num_rows / pipeline_seconds,
            "fast_path": loaded.fast is not None,
        },
    }  # fmt: skip


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/capture-cost"))
    parser.add_argument("--seconds", type=float, default=10.0, help="per client level and phase")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.capture_cost " + " ".join(sys.argv[1:])
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="nonstop-capture-bench-"))
    registry, manifest = throughput.demo_registry(work)
    settings = Settings(registry=registry.uri)
    replicas = replica_bounds(load_serve_config())[0]
    cluster = throughput._cluster("haproxy")
    since = datetime.now(UTC) - timedelta(minutes=1)
    first = with_capture(load_serve_config(), OFF, None)
    with local.serving(cluster, settings, first, MODEL):
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        try:
            with CpuSampler() as cpu:
                measured = measure_settings(cluster, work, args.rounds, args.seconds, throughput.one_record(manifest), replicas, cpu)
            replayed = replay_against_in_process(settings, registry, folder(work, FULL), since, work / "replay")
        finally:
            ray.shutdown()
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}",
        "ray": ray.__version__, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "command": command,
        "seconds": args.seconds, "rounds": args.rounds, "replicas": replicas, "client": _client_name(),
        "load_start": load_start, "load_end": os.getloadavg()[0], "settings": measured, **replayed,
    }  # fmt: skip
    (args.out / "capture-cost.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results)
    (args.out / "capture-cost.md").write_text(text)
    print(text)


def _client_name() -> str:
    return "wrk (one thread, its own process)" if throughput.load_client() is throughput.run_wrk else "the project's async driver"


if __name__ == "__main__":
    main()
