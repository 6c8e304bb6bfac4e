"""Side by side on one machine, same model, same client: nonstop vs the classic server.

(a) nonstop on Ray Serve with the HAProxy ingress (the default), (b) nonstop on Ray
Serve's default Python proxy, (c) FastAPI + uvicorn with as many workers as (a) has
replicas, predicting request by request. The client is wrk in its own process (or the
project's async driver where wrk is not installed), at concurrency 1, 16 and 64; nonstop
also through the Open Inference Protocol (V2), JSON and binary tensors, at 1 and 64. Also
rows per second for 1,000-row requests (V1 JSON, Arrow, V2 JSON, V2 binary) against
in-process `predict` on the same rows.

    .venv/bin/python -m benchmarks.throughput --out benchmarks/out/throughput
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import numpy as np
import pyarrow as pa

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nonstop_ops.cluster import lifecycle as local  # noqa: E402
from nonstop_ops.cluster.serve_config import load_serve_config, replica_bounds  # noqa: E402
from nonstop.config import Settings  # noqa: E402
from nonstop.loading import TrustPolicy, load_version  # noqa: E402
from nonstop.manifest import Manifest  # noqa: E402
from harness.loadgen import run_load  # noqa: E402
from nonstop.registry import Registry  # noqa: E402
from nonstop.schema import rows_to_matrix  # noqa: E402
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_stream  # noqa: E402
from serve_app.wire.v2_json import BINARY_CONTENT_TYPE, HEADER_LENGTH  # noqa: E402
from training import demo  # noqa: E402
from training.job import TrainOptions, train  # noqa: E402

MODEL = "breast_cancer"
Payload = tuple[bytes, str, dict[str, str]]  # body, its content type, other headers
CONCURRENCIES = (1, 16, 64)
V2_CONCURRENCIES = (1, 64)
# NONSTOP_BENCH_PORT_BASE moves the benchmark's cluster and baseline server, so two
# checkouts can measure side by side without stopping each other's cluster
PORT_BASE = int(os.environ.get("NONSTOP_BENCH_PORT_BASE", "26000"))
BASELINE_PORT = PORT_BASE + 2100
_PATH = re.compile(r"/[\w/:.-]*")  # a URL path a Lua string holds as written


def _json_payload(instances: list[Any]) -> Payload:
    return json.dumps({"instances": instances}).encode(), "application/json", {}


def _arrow_payload(names: list[str], rows: list[list[Any]]) -> Payload:
    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})
    return arrow_stream(table), ARROW_STREAM, {}


def _v2_payload(rows: list[list[Any]], binary: bool) -> Payload:
    """One [N, F] FP64 tensor, as JSON data or with the binary tensor extension; the
    answer comes back the same way."""
    matrix = np.asarray(rows, dtype="<f8")
    tensor: dict[str, Any] = {"name": "input-0", "shape": list(matrix.shape), "datatype": "FP64"}
    if not binary:
        return json.dumps({"inputs": [{**tensor, "data": matrix.ravel().tolist()}]}).encode(), "application/json", {}
    header = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": matrix.nbytes}}], "parameters": {"binary_data_output": True}}
    ).encode()
    return header + matrix.tobytes(), BINARY_CONTENT_TYPE, {HEADER_LENGTH: str(len(header))}


def demo_registry(work: Path) -> tuple[Registry, Manifest]:
    """The demo model trained and promoted in a fresh registry under `work`: what every
    serving benchmark serves, so their figures compare."""
    demo.write_days(work / "data", 5)
    registry = Registry(str(work / "registry"))
    return registry, train(TrainOptions(data=str(work / "data"), model=MODEL, promote=True), registry).manifest


def one_record(manifest: Manifest) -> Payload:
    """A one-row V1 JSON body, features by name: the request the latency tables are about."""
    return _json_payload([dict(zip(manifest.feature_names, manifest.samples.inputs[0], strict=True))])


def _cluster(ingress: str) -> local.LocalCluster:
    return local.LocalCluster.isolated(
        PORT_BASE, f"nonstop-bench-{PORT_BASE}", ingress=ingress, throughput_optimized=ingress == "haproxy"
    )


def run_wrk(
    url: str, payload: Payload | tuple[bytes, str], concurrency: int, seconds: float, nice: int = 0, paths: Sequence[str] = ()
) -> dict[str, Any]:
    """One wrk run; `nice` lowers the client's priority so the server gets the CPU first.
    `paths`: request paths taken in turn on `url`'s server (one per model, say), else `url`'s."""
    body, content_type, *extra = payload
    headers = extra[0] if extra else {}
    unsafe = [p for p in paths if not _PATH.fullmatch(p)]
    if unsafe:
        raise ValueError(f"paths must be plain URL paths, not {unsafe[:3]}")
    folder = Path(tempfile.mkdtemp(prefix="nonstop-wrk-"))
    (folder / "body").write_bytes(body)  # read by the script: binary bodies do not fit in Lua source
    turns = (
        "local paths = {" + ", ".join(f'"{p}"' for p in paths) + "}\nlocal turn = 0\n"
        "request = function()\n  turn = turn + 1\n  return wrk.format(nil, paths[(turn % #paths) + 1])\nend\n"
        if paths
        else ""
    )
    (folder / "post.lua").write_text(
        f'local f = io.open("{folder / "body"}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{content_type}"\n'
        + "".join(f'wrk.headers["{name}"] = "{value}"\n' for name, value in headers.items())
        + turns
    )
    out = subprocess.run(
        ["nice", "-n", str(nice), "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(folder / "post.lua"), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    shutil.rmtree(folder)

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}%\s+([\d.]+)(\w+)", out, re.MULTILINE).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sent = re.search(r"(\d+) requests in", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": ms("50"),
        "p90_ms": ms("90"),
        "p99_ms": ms("99"),
        "errors": int(non_2xx.group(1) if non_2xx else 0) + (sum(map(int, socket.groups())) if socket else 0),
        "requests": int(sent.group(1)) if sent else 0,  # answered, whatever the status
        "client": "wrk",
    }


def _driver(url: str, payload: Payload, concurrency: int, seconds: float) -> dict[str, Any]:
    body, content_type, headers = payload
    result = asyncio.run(
        run_load(
            url, body, concurrency=concurrency, max_requests=10**7, max_seconds=seconds, content_type=content_type,
            extra_headers=headers,
        )
    )  # fmt: skip
    latencies = np.array([s.latency_s for s in result.samples if s.ok]) * 1000
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p90_ms": float(np.percentile(latencies, 90)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "errors": len(result.failed),
        "requests": len(result.samples),
        "client": "harness.loadgen",
    }


def load_client() -> Callable[[str, Payload, int, float], dict[str, Any]]:
    """wrk in its own process where installed (the client that costs the server least), else
    the project's async driver in this process."""
    return run_wrk if shutil.which("wrk") else _driver


def measure(url: str, payload: Payload, seconds: float, levels: tuple[int, ...] = CONCURRENCIES) -> dict[int, dict[str, Any]]:
    client = load_client()
    client(url, payload, 4, 2)  # warm-up
    return {c: client(url, payload, c, seconds) for c in levels}


def rows_per_second(url: str, payloads: dict[str, Payload], seconds: float) -> dict[str, float]:
    """1,000-row requests from 2 concurrent clients, per body format: rows answered per second."""
    client = load_client()
    return {name: client(url, payload, 2, seconds)["rps"] * 1000 for name, payload in payloads.items()}


def in_process_rows_per_second(registry: Registry, rows: list[list[float]]) -> dict[str, float]:
    """The limit: rows/s of the served predict path (numpy, when checked) and of sklearn's."""
    loaded = load_version(registry, MODEL, registry.resolve(MODEL, "production") or 1, TrustPolicy())
    matrix = rows_to_matrix(rows, loaded.manifest.features)

    def rate(predict: Any) -> float:
        started, count = time.perf_counter(), 0
        while time.perf_counter() - started < 3:
            predict(matrix)
            count += 1
        return count * len(rows) / (time.perf_counter() - started)

    return {"served_path": rate(loaded.predict), "sklearn": rate(loaded.estimator.predict)}


def run_serve(
    ingress: str, registry: Registry, body: Payload, big: dict[str, Payload], v2: dict[str, tuple[Payload, Payload]], seconds: float
) -> dict[str, Any]:
    """V1 and Arrow bodies, then V2's (`v2`: name -> one-record and 1,000-row payloads)."""
    cluster = _cluster(ingress)
    with local.serving(cluster, Settings(registry=registry.uri), load_serve_config(), MODEL):
        url = f"{cluster.http_url}/v1/models/{MODEL}:predict"
        v2_url = f"{cluster.http_url}/v2/models/{MODEL}/infer"
        return {
            "by_concurrency": measure(url, body, seconds),
            "v2_by_concurrency": {name: measure(v2_url, one, seconds, V2_CONCURRENCIES) for name, (one, _) in v2.items()},
            "rows_per_s_1000": {
                **rows_per_second(url, big, seconds),
                **rows_per_second(v2_url, {name: many for name, (_, many) in v2.items()}, seconds),
            },
        }


def run_baseline(registry: Registry, body: Payload, big: dict[str, Payload], seconds: float, workers: int) -> dict[str, Any]:
    """The classic server reads JSON only."""
    env = {**os.environ, "BASELINE_REGISTRY": registry.uri, "BASELINE_MODEL": MODEL}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.baseline_server:app", "--host", "127.0.0.1",
         "--port", str(BASELINE_PORT), "--workers", str(workers), "--log-level", "warning"],
        env=env, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{BASELINE_PORT}/v1/models/{MODEL}:predict"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.post(url, content=body[0], headers={"content-type": body[1], **body[2]}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("baseline server did not answer")
            time.sleep(0.3)
        json_only = {"json": big["json"]}
        return {"by_concurrency": measure(url, body, seconds), "rows_per_s_1000": rows_per_second(url, json_only, seconds)}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def chart(results: dict[str, Any], path: Path) -> None:
    names = list(results["servers"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=110)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        runs = results["servers"][name]["by_concurrency"]
        xs = [j + i * width for j in range(len(CONCURRENCIES))]
        left.bar(xs, [runs[c]["rps"] for c in CONCURRENCIES], width, label=name)
        right.bar(xs, [runs[c]["p99_ms"] for c in CONCURRENCIES], width, label=name)
    for axis, label in ((left, "requests per second"), (right, "p99 latency (ms)")):
        axis.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(CONCURRENCIES))])
        axis.set_xticklabels([f"{c} clients" for c in CONCURRENCIES])
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
    left.legend(fontsize=8)
    right.set_yscale("log")
    fig.suptitle("One-record predictions, same model and client, one 2-core machine")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def table(results: dict[str, Any]) -> str:
    base = results["servers"]["c. uvicorn baseline"]["by_concurrency"]
    lines = [
        "| server | clients | req/s | × baseline | p50 ms | p90 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in results["servers"].items():
        for c in CONCURRENCIES:
            r = run["by_concurrency"][c]
            lines.append(
                f"| {name} | {c} | {r['rps']:.0f} | {r['rps'] / base[c]['rps']:.2f} | {r['p50_ms']:.2f} "
                f"| {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |"
            )
    limit = results["in_process_rows_per_s"]
    lines += [
        "",
        "| server | V2 body, one record | clients | req/s | × baseline (V1 JSON) | p50 ms | p90 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in results["servers"].items():
        for body, levels in run.get("v2_by_concurrency", {}).items():
            for c, r in levels.items():
                lines.append(
                    f"| {name} | {body} | {c} | {r['rps']:.0f} | {r['rps'] / base[int(c)]['rps']:.2f} | {r['p50_ms']:.2f} "
                    f"| {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |"
                )
    lines += [
        "",
        "| server | body | rows/s, 1,000-row requests | share of in-process served path | share of in-process sklearn predict |",
        "|---|---|---:|---:|---:|",
    ]
    for name, run in results["servers"].items():
        for body, rows in run["rows_per_s_1000"].items():
            lines.append(
                f"| {name} | {body} | {rows:.0f} | {rows / limit['served_path']:.1%} | {rows / limit['sklearn']:.0%} |"
            )
    lines.append(f"| in-process, served path (numpy) | | {limit['served_path']:.0f} | 100% | |")
    lines.append(f"| in-process, sklearn `predict` | | {limit['sklearn']:.0f} | | 100% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/throughput"))
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    registry, manifest = demo_registry(Path(tempfile.mkdtemp(prefix="nonstop-bench-")))
    names = manifest.feature_names
    body = one_record(manifest)
    big_rows = [manifest.samples.inputs[i % len(manifest.samples.inputs)] for i in range(1000)]
    big = {
        "json": _json_payload([dict(zip(names, row, strict=True)) for row in big_rows]),
        "arrow": _arrow_payload(names, big_rows),
    }
    v2 = {
        "v2 json": (_v2_payload(manifest.samples.inputs[:1], binary=False), _v2_payload(big_rows, binary=False)),
        "v2 binary": (_v2_payload(manifest.samples.inputs[:1], binary=True), _v2_payload(big_rows, binary=True)),
    }
    replicas = replica_bounds(load_serve_config())[0]  # the autoscaler's floor: where an idle stack rests
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "seconds_per_level": args.seconds,
        "in_process_rows_per_s": in_process_rows_per_second(registry, big_rows),
        "servers": {},
    }
    baseline = run_baseline(registry, body, big, args.seconds, replicas)
    results["servers"]["a. nonstop, HAProxy ingress"] = run_serve("haproxy", registry, body, big, v2, args.seconds)
    results["servers"]["b. nonstop, Serve proxy"] = run_serve("proxy", registry, body, big, v2, args.seconds)
    results["servers"]["c. uvicorn baseline"] = baseline
    (args.out / "throughput.json").write_text(json.dumps(results, indent=2))
    chart(results, args.out / "throughput.png")
    text = f"Machine: {results['machine']}; {replicas} replicas / workers; {args.seconds:.0f}s per level.\n\n{table(results)}\n"
    (args.out / "throughput.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
