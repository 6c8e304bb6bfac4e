"""Where a request's time goes: CPU per process and per layer, and what makes the tail.

Starts the benchmark's nonstop stack (2 replicas behind HAProxy, ports 27xxx), then for each
concurrency level runs one niced `wrk -t1` and, over the same window:

- CPU seconds of every process of the cluster (psutil), per request answered: HAProxy,
  each replica, Serve's HAProxy manager (which parses HAProxy's per-request metrics
  lines), controller, proxy, raylet, GCS;
- py-spy samples of each replica, each sample charged to the deepest layer its stack
  reaches (Serve's replica wrapper, the HTTP server, FastAPI/Starlette, decoding,
  batching, predict, encoding, metrics, the model poller);
- HAProxy's own per-request log (it logs to RAY_SERVE_HAPROXY_LOG_TARGET, pointed here at
  a UDP socket of this script): time queued in HAProxy, connect, replica response, and
  which replica answered, so the tail can be split between HAProxy and the replicas.

    .venv/bin/python -m benchmarks.profile_serving --seconds 10 --out docs/results
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.peers.compare import BIG_ROWS, big_body_rows, prepare
from benchmarks.peers.servers import MODEL, v1_body
from benchmarks.throughput import run_wrk
from nonstop.config import Settings
from nonstop_ops.cluster import lifecycle as local
from nonstop_ops.cluster.serve_config import deployment_config, load_serve_config

LOG_PORT = 27950
PYSPY_RATE = 250
# (layer, pattern in a py-spy frame); a sample goes to the deepest frame that matches any.
LAYERS = (
    ("Serve replica wrapper", "ray/serve/"),
    ("Ray core (metrics push, RPC)", "ray/_private/"),
    ("Ray core (metrics push, RPC)", "ray/util/"),
    ("HTTP server (uvicorn)", "uvicorn/"),
    ("HTTP server (uvicorn)", "h11/"),
    ("FastAPI / Starlette", "starlette/"),
    ("FastAPI / Starlette", "fastapi/"),
    ("FastAPI / Starlette", "pydantic"),
    ("nonstop routes", "serve_app/rest/"),
    ("read the body", "serve_app/rest/body.py"),
    ("nonstop data plane", "serve_app/replica/dataplane.py"),
    ("batching (serve.batch)", "ray/serve/batching.py"),
    ("decode (serve_app/wire)", "serve_app/wire/"),
    ("predict", "loading.py"),
    ("predict", "compiled.py"),
    ("predict", "sklearn/"),
    ("encode (json.dumps, response)", "serve_app/rest/common.py"),
    ("encode (json.dumps, response)", "json/encoder.py"),
    ("nonstop metrics", "serve_app/replica/serving_metrics.py"),
    ("model poller / status", "serve_app/replica/holder.py"),
    ("model poller / status", "nonstop/registry/"),
    ("event loop (asyncio)", "asyncio/"),
)
HTTPLOG = re.compile(
    r"(?P<server>SERVE_REPLICA_\S+|SERVE_PROXY\S+|<NOSRV>) "
    r"(?P<tq>-?\d+)/(?P<tw>-?\d+)/(?P<tc>-?\d+)/(?P<tr>-?\d+)/(?P<ta>-?\d+) (?P<status>\d{3})"
)


def layer_of(stack: list[str]) -> str:
    """The deepest layer a sampled stack reaches (stack listed root first)."""
    for frame in reversed(stack):
        for name, pattern in reversed(LAYERS):
            if pattern in frame:
                return name
    return "other (Python outside the layers above)"


def pyspy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", str(PYSPY_RATE),
         "-f", "raw", "-o", str(out), "--nonblocking", "--full-filenames"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def layers(raw: Path) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    if not raw.exists():
        return {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[layer_of(stack.split(";"))] += int(count)
    return dict(counts.most_common())


class HAProxyLog:
    """HAProxy's per-request httplog lines, received as syslog datagrams."""

    def __init__(self, port: int) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", port))
        self._sock.settimeout(0.2)
        self.records: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536).decode(errors="replace")
            except TimeoutError:
                continue
            match = HTTPLOG.search(data)
            if match:
                record = {k: int(v) for k, v in match.groupdict().items() if k != "server"}
                self.records.append(record | {"server": match["server"], "at": time.monotonic()})

    def window(self, start: float, end: float) -> list[dict[str, Any]]:
        return [r for r in self.records if start <= r["at"] <= end]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


def classify(proc: psutil.Process) -> str:
    try:
        name, cmdline = proc.name(), " ".join(proc.cmdline())
    except psutil.Error:
        return "gone"
    if name == "haproxy":
        return "HAProxy"
    match = re.search(r"ray::(\w+)", cmdline)
    if "ServeReplica" in cmdline or "SERVE_REPLICA" in cmdline:
        return f"replica {proc.pid}"
    if match:
        return f"ray::{match.group(1)}"
    for known in ("raylet", "gcs_server", "dashboard", "log_monitor"):
        if known in cmdline:
            return known
    return name


def cpu_by_role(pids: list[int]) -> dict[str, float]:
    totals: collections.Counter[str] = collections.Counter()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            times = proc.cpu_times()
            totals[classify(proc)] += times.user + times.system
        except psutil.Error:
            continue
    return dict(totals)


def percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    array = np.array(values, dtype=float)
    return {f"p{q}": float(np.percentile(array, q)) for q in (50, 90, 99)} | {"max": float(array.max())}


def profile_level(cluster: local.LocalCluster, url: str, body: Any, c: int, seconds: float, scratch: Path, log: HAProxyLog) -> dict[str, Any]:
    pids = local.cluster_pids(cluster)
    replicas = [p for p in pids if classify(psutil.Process(p)).startswith("replica")]
    before = cpu_by_role(pids)
    spies = {pid: pyspy(pid, seconds - 2, scratch / f"c{c}-{pid}.raw") for pid in replicas}
    start = time.monotonic()
    load_avg = os.getloadavg()
    result = run_wrk(url, body, c, seconds, nice=10)
    end = time.monotonic()
    for spy in spies.values():
        spy.wait(timeout=60)
    after = cpu_by_role(pids)
    requests = result["rps"] * seconds
    cpu_ms = {role: (after.get(role, 0) - before.get(role, 0)) * 1000 / requests for role in after}
    records = log.window(start, end)
    by_server = collections.Counter(r["server"] for r in records)
    return {
        "wrk": result,
        "load_avg_before": load_avg,
        "cpu_ms_per_request": dict(sorted(cpu_ms.items(), key=lambda kv: -kv[1])),
        "replica_layers": {pid: layers(scratch / f"c{c}-{pid}.raw") for pid in replicas},
        "haproxy": {
            "requests_logged": len(records),
            "queue_ms": percentiles([r["tw"] for r in records]),
            "connect_ms": percentiles([r["tc"] for r in records]),
            "replica_response_ms": percentiles([r["tr"] for r in records]),
            "total_ms": percentiles([r["ta"] for r in records]),
            "by_replica": dict(by_server),
            "slowest": sorted(records, key=lambda r: -r["ta"])[:10],
        },
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Where a request's time goes ({results['date']}; {results['machine']}; {results['rows']}-row JSON lists)", ""]
    if results["env"] or results["access_log"] or results["worker_niceness"]:
        lines += [
            f"Changed: environment {results['env']}, access log {results['access_log'] or 'as configured'}, "
            f"worker niceness {results['worker_niceness']}.",
            "",
        ]
    for c, level in results["levels"].items():
        w = level["wrk"]
        lines += [
            f"## {c} clients: {w['rps']:,.0f} req/s, p50 {w['p50_ms']:.2f} ms, p99 {w['p99_ms']:.1f} ms "
            f"(1-min load average before: {level['load_avg_before'][0]:.2f})",
            "",
            "CPU per request, by process (ms):",
            "",
            "| process | CPU ms / request |",
            "|---|---:|",
        ]
        lines += [f"| {role} | {ms:.3f} |" for role, ms in level["cpu_ms_per_request"].items() if ms >= 0.005]
        lines += ["", "Replica CPU samples by layer (share of samples, both replicas):", "", "| layer | share |", "|---|---:|"]
        merged: collections.Counter[str] = collections.Counter()
        for counts in level["replica_layers"].values():
            merged.update(counts)
        total = sum(merged.values()) or 1
        lines += [f"| {name} | {n / total:.1%} |" for name, n in merged.most_common()]
        h = level["haproxy"]
        lines += [
            "",
            f"HAProxy's log ({h['requests_logged']} requests): queued in HAProxy {h['queue_ms']}, "
            f"replica response {h['replica_response_ms']}, total {h['total_ms']}; by replica {h['by_replica']}.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/profile"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--levels", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="extra environment for `ray start`")
    parser.add_argument("--access-log", choices=("on", "off"), help="override the deployment's logging_config")
    parser.add_argument("--worker-niceness", type=int, default=0, help="Ray's worker niceness (Ray's own default: 15)")
    parser.add_argument("--rows", type=int, choices=(1, BIG_ROWS), default=1, help="rows per request, as JSON lists")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="nonstop-profile-"))
    registry, _, samples, _ = prepare(scratch)
    os.environ["RAY_SERVE_HAPROXY_LOG_TARGET"] = f"127.0.0.1:{LOG_PORT}"  # read by `ray start`
    os.environ.update(dict(pair.split("=", 1) for pair in args.env))
    config = load_serve_config()
    if args.access_log:
        deployment_config(config).setdefault("logging_config", {})["enable_access_log"] = args.access_log == "on"
    cluster = local.LocalCluster.isolated(27000, "nonstop-profile", worker_niceness=args.worker_niceness)
    log = HAProxyLog(LOG_PORT)
    local.stop(cluster)
    local.start(cluster, Settings(registry=registry.uri))
    try:
        local.deploy(cluster, config)
        local.wait_ready(cluster, MODEL)
        url = f"{cluster.http_url}/v1/models/{MODEL}:predict"
        body = v1_body(samples[:1] if args.rows == 1 else big_body_rows(samples))
        run_wrk(url, body, 16, 3, nice=10)  # warm-up
        levels = {str(c): profile_level(cluster, url, body, c, args.seconds, scratch, log) for c in args.levels}
    finally:
        log.close()
        local.stop(cluster)
    results = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "env": args.env,
        "access_log": args.access_log,
        "worker_niceness": args.worker_niceness,
        "rows": args.rows,
        "levels": levels,
    }
    (args.out / "profile.json").write_text(json.dumps(results, indent=2, default=str))
    text = markdown(results)
    (args.out / "profile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
