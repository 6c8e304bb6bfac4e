"""The rollout report: every kind of upgrade under continuous load, measured as a client.

Starts its own local cluster (ports 36xxx, its own registry), serves a random forest big
enough to take seconds to load, runs the scenarios of harness/rollout.py with traffic
flowing, and writes report.json, report.md and timeline.png:

    .venv/bin/python -m benchmarks.rollout --out benchmarks/out/rollout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ray  # noqa: E402

from nonstop_ops.cluster import lifecycle as local  # noqa: E402
from nonstop_ops.cluster.serve_config import load_serve_config  # noqa: E402
from nonstop.config import Settings  # noqa: E402
from nonstop.registry import Registry  # noqa: E402
from benchmarks.cpu_share import CpuSampler  # noqa: E402
from harness.rollout import SCENARIOS, RolloutCheck, RolloutResult, Stack, wider_data  # noqa: E402
from training import demo  # noqa: E402
from training.job import TrainOptions, train  # noqa: E402

MODEL = "breast_cancer"
CLUSTER = local.LocalCluster.isolated(28000, "nonstop-rollout")
BIN_S = 1.0
# the candidates each scenario trains on the scenario data (refuse_schema trains on a wider copy)
CANDIDATES = {"alias": 1, "pin": 1, "refuse_corrupt": 1, "rollback": 1}


class Candidates:
    """Versions trained before the measured run and handed out as the scenarios ask for
    them, so that every dip on the timeline is the server's (training on the cores that
    serve, while traffic flows, takes much of the throughput). Anything not prepared is
    trained on the spot, and its span is drawn on the timeline as the benchmark's work."""

    def __init__(self, train_one: Callable[[Path], int], registry: Registry) -> None:
        self._train_one = train_one
        self._registry = registry
        self._ready: dict[str, deque[int]] = {}
        self.live_spans: list[tuple[float, float]] = []

    def prepare(self, path: Path, count: int) -> None:
        self._ready.setdefault(str(path), deque()).extend(self._train_one(path) for _ in range(count))

    def __call__(self, path: Path, promote: bool) -> int:
        queue = self._ready.get(str(path))
        if queue:
            version = queue.popleft()
        else:
            started = time.time()
            version = self._train_one(path)
            self.live_spans.append((started, time.time()))
        if promote:  # same data and seed as production: never worse, as train(promote=True) checks
            self._registry.promote(MODEL, version)
        return version


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _cpus(sampler: CpuSampler, trigger: float, done: float, settle: float) -> dict[str, dict[str, float] | None]:
    return {"before": sampler.cpus(trigger - settle, trigger), "during": sampler.cpus(trigger, done)}


def _cpu_cell(cpus: dict[str, dict[str, float] | None]) -> str:
    before, during = cpus["before"], cpus["during"]
    if before is None or during is None:
        return "– (under a second)"
    return f"{before['replicas']:.2f} / {during['replicas']:.2f} ({during['replicas'] / before['replicas']:.0%}) · {during['loads']:.2f}"


def markdown(result: RolloutResult, args: argparse.Namespace, cpus: dict[str, dict[str, dict[str, float] | None]]) -> str:
    lines = [
        "# Rollout report",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, ray {ray.__version__}; "
        f"2 replicas behind the HAProxy ingress; model: random forest of {args.trees} trees "
        f"(load and verify: {result.model_load_s.get('load_seconds', 0):.2f}s); "
        + (
            f"{args.rate:.0f} requests/s offered on a fixed schedule, at most {args.concurrency} in flight; "
            if args.rate
            else f"{args.concurrency} concurrent clients, each sending when answered; "
        )
        + f"{args.settle:.0f}s before and after each trigger.",
        "",
        "CPUs: the replicas' CPU before / during the swap (during as a share of before), then what the loads took during it "
        "(loader actors and load board), sampled once a second (benchmarks/cpu_share.py).",
        "",
        "| scenario | sent | failed | req/s before / during / after | p50 ms before / during / after | p99 ms before / during / after | all on target after (s) | two versions answered (s) | CPUs: replicas before / during · loads |",
        "|---|---:|---:|---|---|---|---:|---:|---|",
    ]
    for r in result.reports:
        lines.append(
            f"| {r.title} | {r.sent} | {r.failed} "
            f"| {_fmt(r.before.throughput_rps, 0)} / {_fmt(r.during.throughput_rps, 0)} / {_fmt(r.after.throughput_rps, 0)} "
            f"| {_fmt(r.before.p50_ms)} / {_fmt(r.during.p50_ms)} / {_fmt(r.after.p50_ms)} "
            f"| {_fmt(r.before.p99_ms)} / {_fmt(r.during.p99_ms)} / {_fmt(r.after.p99_ms)} "
            f"| {_fmt(r.converged_s)} | {_fmt(r.two_versions_s)} | {_cpu_cell(cpus[r.name])} |"
        )
    lines += ["", "Notes:", ""]
    for r in result.reports:
        for note in r.notes:
            lines.append(f"- {r.name}: {note}")
    failures = Counter((s.status, (s.error or "")[:60]) for s in result.samples if not s.ok)
    lines += ["", f"Failures by kind: {dict(failures) or 'none'}", ""]
    return "\n".join(lines)


def timeline(result: RolloutResult, path: Path, busy: list[tuple[float, float]] | None = None) -> None:
    start = result.started_at
    end = max(s.sent_at for s in result.samples)
    bins = int((end - start) / BIN_S) + 1
    per_version: dict[str, list[float]] = {}
    failures = [0] * bins
    for s in result.samples:
        i = int((s.sent_at - start) / BIN_S)
        if s.ok and s.version:
            per_version.setdefault(s.version, [0.0] * bins)[i] += 1 / BIN_S
        elif not s.ok:
            failures[i] += 1
    xs = [i * BIN_S for i in range(bins)]
    fig, ax = plt.subplots(figsize=(14, 5.5), dpi=110)
    for version in sorted(per_version, key=int):
        # a version that is not answering draws nothing, rather than a line along zero
        rates = [r if r else float("nan") for r in per_version[version]]
        ax.plot(xs, rates, linewidth=1.4, label=f"v{version}")
    failed_x = [x for x, f in zip(xs, failures, strict=True) if f]
    if failed_x:
        ax.scatter(failed_x, [0] * len(failed_x), marker="x", color="red", s=60, zorder=5, label="failed requests")
        for x, f in zip(xs, failures, strict=True):
            if f:
                ax.annotate(str(f), (x, 0), textcoords="offset points", xytext=(0, 8), color="red", ha="center")
    top = ax.get_ylim()[1]
    for i, (begin, end) in enumerate(busy or []):
        label = "benchmark training a candidate (not the server)" if i == 0 else None
        ax.axvspan(begin - start, end - start, color="grey", alpha=0.25, label=label)
    for event in result.events:
        x = event.at - start
        ax.axvline(x, color="black", linestyle="--", linewidth=0.8)
        ax.text(x, top * 0.98, f" {event.scenario}", rotation=90, va="top", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_ylabel("successful responses per second")
    ax.set_title("Responses per second by the model version that answered; dashed lines: upgrade triggers")
    ax.legend(loc="lower right", ncol=4, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/rollout"))
    parser.add_argument("--trees", type=int, default=1000, help="forest size: how long a version takes to load")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds measured before and after each trigger")
    parser.add_argument("--concurrency", type=int, default=8, help="clients; with --rate, requests in flight at most")
    parser.add_argument("--rate", type=float, help="requests per second on a fixed schedule (default: closed loop)")
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), choices=SCENARIOS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nonstop-rollout-"))
    data = work / "data"
    demo.write_days(data, 5)
    registry = Registry(str(work / "registry"))

    def fit(path: Path, promote: bool) -> int:
        options = TrainOptions(data=str(path), model=MODEL, promote=promote, estimator="forest", n_estimators=args.trees)
        return train(options, registry).manifest.version

    fit(data, True)
    candidates = Candidates(lambda path: fit(path, False), registry)
    candidates.prepare(data, sum(CANDIDATES.get(name, 0) for name in args.scenarios))
    if "refuse_schema" in args.scenarios:
        candidates.prepare(wider_data(data), 1)
    config = load_serve_config()
    local.stop(CLUSTER)
    local.start(CLUSTER, Settings(registry=registry.uri))
    try:
        local.deploy(CLUSTER, config)
        meta = local.wait_ready(CLUSTER, MODEL)
        ray.init(address=CLUSTER.address, logging_level="ERROR", log_to_driver=False)
        stack = Stack(CLUSTER, registry, config, MODEL)
        check = RolloutCheck(
            stack, data, settle_s=args.settle, train=candidates, concurrency=args.concurrency, rate=args.rate, poll_s=1.0
        )
        began = time.time()
        with CpuSampler() as sampler:
            result = check.run(tuple(args.scenarios))
        result.model_load_s = {"load_seconds": meta["load_seconds"]}
        cpus = {r.name: _cpus(sampler, r.trigger_at, r.done_at, args.settle) for r in result.reports}
    finally:
        ray.shutdown()
        local.stop(CLUSTER)
    (args.out / "report.json").write_text(
        json.dumps(
            {
                "trees": args.trees,
                "concurrency": args.concurrency,
                "rate": args.rate,
                "settle_s": args.settle,
                "duration_s": time.time() - began,
                "model_load_s": result.model_load_s,
                "events": [e.__dict__ for e in result.events],
                "benchmark_training_spans": candidates.live_spans,
                "scenarios": [r.as_dict() | {"cpus": cpus[r.name]} for r in result.reports],
            },
            indent=2,
        )
    )
    (args.out / "report.md").write_text(markdown(result, args, cpus))
    timeline(result, args.out / "timeline.png", candidates.live_spans)
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
