"""Decoding cost of the JSON body shapes, in-process: rows per second of CPU, before and after.

What a replica spends turning a request body into the float matrix, for the shapes a
client sends: V1 `instances` as lists in schema order, as objects keyed by feature name
(keys in the schema's order, as a client serialising its records sends them, and
shuffled), and V2 JSON (one [N, F] FP64 tensor, and one tensor per feature), at 1 and
1,000 rows of the benchmark's 30-feature schema. The whole codec runs (`body_matrix`,
`v2_json.decode`): parse, checks, conversion. Then the whole V1 predict route, the
replica's ASGI app called in-process on the demo model (routing, body, decode, predict,
answer), with lists and with objects: what a named-feature body costs a replica's CPU.
No HTTP server, no HAProxy, no client: figures from outside are the peers benchmark's.

`--baseline REV` measures the code of that git revision beside the working tree's: each
side runs in its own subprocess (the revision's tree exported to a scratch folder), the
two alternating for `--rounds` rounds, so that load from other work on the machine falls
on both alike. Each figure is the best of a round's repeats, in CPU time of the decoding
thread (`time.thread_time`), so another process's load costs it little; the report gives
the median over rounds.

    .venv/bin/python -m benchmarks.codecs --baseline HEAD~1 --rounds 5 --out docs/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ROWS = (1, 1000)
FEATURES = 30
CPU_BUDGET_S = 0.3  # per case and round: enough repeats for a stable best


def _schema() -> tuple[list[str], list[list[float]]]:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).data
    return [str(c).replace(" ", "_") for c in frame.columns], frame.to_numpy().tolist()


def _bodies(rows: int, names: list[str], data: list[list[float]]) -> dict[str, tuple[str, bytes]]:
    """Each shape's body, with the same values: (protocol, body)."""
    values = [data[i % len(data)] for i in range(rows)]
    shuffled = list(reversed(names))
    records = [dict(zip(names, row, strict=True)) for row in values]
    columns = list(zip(*values, strict=True))
    return {
        "V1 lists": ("v1", json.dumps({"instances": values}).encode()),
        "V1 objects, schema order": ("v1", json.dumps({"instances": records}).encode()),
        "V1 objects, other order": ("v1", json.dumps({"instances": [{k: r[k] for k in shuffled} for r in records]}).encode()),
        "V2 one [N, F] tensor": (
            "v2",
            json.dumps({"inputs": [{"name": "x", "shape": [rows, FEATURES], "datatype": "FP64", "data": sum(values, [])}]}).encode(),
        ),
        "V2 a tensor per feature": (
            "v2",
            json.dumps(
                {"inputs": [{"name": n, "shape": [rows], "datatype": "FP64", "data": list(c)} for n, c in zip(names, columns, strict=True)]}
            ).encode(),
        ),
    }


def measure() -> dict[str, float]:
    return {**measure_codecs(), **measure_route()}


def measure_codecs() -> dict[str, float]:
    """Rows per CPU second of each case, in this process, with the code on sys.path."""
    from nonstop.manifest import FeatureSpec
    from serve_app.wire import v2_json
    from serve_app.wire.limits import Limits
    from serve_app.wire.v1_json import body_matrix

    limits = Limits()
    names, data = _schema()
    features = [FeatureSpec(name=n, kind="number", dtype="float64") for n in names]
    figures: dict[str, float] = {}
    for rows in ROWS:
        for shape, (protocol, body) in _bodies(rows, names, data).items():
            if protocol == "v1":
                decode: Any = lambda b=body: body_matrix(b, "application/json", features, limits)  # noqa: E731
            else:
                decode = lambda b=body: v2_json.decode(b, None, "m", features, limits)  # noqa: E731
            decode()  # warm, and a refusal fails the benchmark here
            figures[f"{shape} | {rows}"] = rows / _best_seconds(decode)
    return figures


def _best_seconds(run: Callable[[], Any]) -> float:
    """The best CPU time of one call, over batches of calls long enough for the clock."""
    repeats = 1
    while True:
        started = time.thread_time()
        for _ in range(repeats):
            run()
        if time.thread_time() - started > 0.02:
            break
        repeats *= 4
    best, spent = float("inf"), 0.0
    while spent < CPU_BUDGET_S:
        started = time.thread_time()
        for _ in range(repeats):
            run()
        took = time.thread_time() - started
        spent, best = spent + took, min(best, took / repeats)
    return best


async def _best_seconds_async(run: Callable[[], Awaitable[Any]]) -> float:
    """`_best_seconds` for a coroutine, timed inside the running loop."""
    repeats = 1
    while True:
        started = time.thread_time()
        for _ in range(repeats):
            await run()
        if time.thread_time() - started > 0.02:
            break
        repeats *= 4
    best, spent = float("inf"), 0.0
    while spent < CPU_BUDGET_S:
        started = time.thread_time()
        for _ in range(repeats):
            await run()
        took = time.thread_time() - started
        spent, best = spent + took, min(best, took / repeats)
    return best


def measure_route() -> dict[str, float]:
    """Rows per CPU second of the whole V1 predict route in-process (the replica's ASGI app
    called directly: routing, body, decode, predict, answer), lists against objects, on
    the demo model: what a named-feature body costs a replica, not the decoder alone."""
    from nonstop.loading import TrustPolicy
    from nonstop.registry import Registry
    from serve_app.config import ModelTarget
    from serve_app.replica.dataplane import DataPlane
    from serve_app.replica.holder import ModelHolder
    from serve_app.rest.api import create_api
    from serve_app.wire.limits import Limits
    from training import demo
    from training.job import TrainOptions, train

    model = "breast_cancer"
    figures: dict[str, float] = {}

    async def run(registry: Any, names: list[str], sample: list[Any]) -> None:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(ModelTarget(model=model, poll_interval_s=3600))
        app = create_api(DataPlane(holder), Limits())
        path = f"/v1/models/{model}:predict"
        for rows in ROWS:
            for shape, instances in (("lists", [sample] * rows), ("objects", [dict(zip(names, sample, strict=True))] * rows)):
                body = json.dumps({"instances": instances}).encode()
                scope = {
                    "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                    "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                    "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
                }  # fmt: skip
                call = lambda b=body, s=scope: _call(app, s, b)  # noqa: E731
                await call()  # warm, and a refusal fails the benchmark here
                figures[f"V1 route, {shape} | {rows}"] = rows / await _best_seconds_async(call)
        await holder.close()

    with tempfile.TemporaryDirectory(prefix="nonstop-codecs-route-") as scratch:
        demo.write_days(Path(scratch) / "data", 1)
        registry = Registry(str(Path(scratch) / "registry"))
        manifest = train(TrainOptions(data=str(Path(scratch) / "data"), model=model, promote=True), registry).manifest
        asyncio.run(run(registry, manifest.feature_names, manifest.samples.inputs[0]))
    return figures


async def _call(app: Any, scope: dict[str, Any], body: bytes) -> None:
    """One request through the ASGI app, its body in one message; a non-200 fails."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect: the request ends on its own
        return {}

    status: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(dict(scope), receive, send)
    if status != [200]:
        raise RuntimeError(f"the route answered {status}")


def _export(revision: str, into: Path) -> Path:
    """The revision's tree, for its code to run from."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _run(tree: Path) -> dict[str, float]:
    """This file's `measure`, run on the code of `tree` (this script, not the tree's copy)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, __file__, "--measure"], cwd=tree, env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _report(after: list[dict[str, float]], before: list[dict[str, float]], baseline: str | None, command: str) -> str:
    lines = [
        "# Decoding JSON bodies: rows per CPU second",
        "",
        f"Taken {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, with `{command}`. Median over {len(after)} rounds of each round's best, in CPU "
        "time of the decoding thread (in-process, one core); "
        + (f"`before` is revision `{baseline}`, run alternately with the working tree." if baseline else ""),
        "",
    ]
    header = "| shape | rows per request | rows/s |" + (" before | after / before |" if before else "")
    lines += [header, "|---|---:|---:|" + ("---:|---:|" if before else "")]
    for key in after[0]:
        shape, rows = key.split(" | ")
        now = statistics.median(r[key] for r in after)
        row = f"| {shape} | {int(rows):,} | {now:,.0f} |"
        if before:
            then = statistics.median(r[key] for r in before)
            row += f" {then:,.0f} | {now / then:.2f}x |"
        lines.append(row)
    lines.append("")
    for rows in ROWS:
        lists = statistics.median(r[f"V1 lists | {rows}"] for r in after)
        objects = statistics.median(r[f"V1 objects, schema order | {rows}"] for r in after)
        route = statistics.median(r[f"V1 route, objects | {rows}"] / r[f"V1 route, lists | {rows}"] for r in after)
        lines.append(
            f"- {rows:,} row(s): V1 objects (schema order) decode at {objects / lists:.0%} of the rows/s of V1 lists; "
            f"through the whole route, at {route:.0%}."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="a git revision to measure beside the working tree")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/out")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # one side's run, as JSON
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure()))
        return
    after: list[dict[str, float]] = []
    before: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="nonstop-codecs-") as scratch:
        old = _export(args.baseline, Path(scratch)) if args.baseline else None
        for round_ in range(args.rounds):
            sides = [("after", ROOT), ("before", old)] if old else [("after", ROOT)]
            for side, tree in sides if round_ % 2 == 0 else reversed(sides):
                figures = _run(tree)
                (after if side == "after" else before).append(figures)
                print(f"round {round_ + 1} {side}: " + ", ".join(f"{k} {v:,.0f}" for k, v in figures.items()), flush=True)
    command = "python -m benchmarks.codecs" + (f" --baseline {args.baseline}" if args.baseline else "") + f" --rounds {args.rounds}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "codecs.json").write_text(json.dumps({"after": after, "before": before, "baseline": args.baseline}, indent=1))
    (args.out / "codecs.md").write_text(_report(after, before, args.baseline, command))
    print((args.out / "codecs.md").read_text())


if __name__ == "__main__":
    main()
