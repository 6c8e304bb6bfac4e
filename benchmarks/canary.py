"""The progressive-delivery report: shadow cost, a promotion and a rollback, under load.

Starts its own local cluster (ports 37xxx, its own registry), serves a logistic
regression, keeps clients sending varied rows with request keys, and in turn:

1. measures a baseline (no rollout),
2. shadow-scores a candidate on every request (the cost a client pays for shadow mode),
3. rolls a good candidate out through every step to promotion, left to the controller,
4. rolls out a candidate trained on shuffled labels, which the controller rolls back.

Writes report.json, report.md and timeline.png (traffic share per version, evidence at
each decision, every ledger entry marked):

    .venv/bin/python -m benchmarks.canary --out benchmarks/out/canary
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import ray  # noqa: E402

from nonstop.config import Settings  # noqa: E402
from nonstop.ledger import LedgerEntry  # noqa: E402
from nonstop.registry import Registry  # noqa: E402
from nonstop_ops.cluster import lifecycle as local  # noqa: E402
from nonstop_ops.cluster.serve_config import deployment_config, load_serve_config  # noqa: E402
from serve_app.rollout.policy import Policy  # noqa: E402
from serve_app.rollout.moves import Rollouts  # noqa: E402
from harness.canary import Answer, CanaryLoad, bodies  # noqa: E402
from harness.rollout import wait_until  # noqa: E402
from training import demo  # noqa: E402
from training.job import TrainOptions, train  # noqa: E402

MODEL = "breast_cancer"
CLUSTER = local.LocalCluster.isolated(29000, "nonstop-canary")
BIN_S = 1.0


def _percentile(answers: list[Answer], q: float) -> float | None:
    latencies = [a.latency_s * 1000 for a in answers if a.ok]
    return float(np.percentile(latencies, q)) if latencies else None


def _phase(answers: list[Answer], start: float, end: float) -> dict[str, float | int | None]:
    inside = [a for a in answers if start <= a.sent_at < end]
    return {
        "sent": len(inside),
        "failed": sum(1 for a in inside if not a.ok),
        "rps": len(inside) / (end - start) if end > start else None,
        "p50_ms": _percentile(inside, 50),
        "p99_ms": _percentile(inside, 99),
    }


def timeline(answers: list[Answer], entries: list[LedgerEntry], phases: dict[str, tuple[float, float]], path: Path) -> None:
    start = min(a.sent_at for a in answers)
    end = max(a.sent_at for a in answers)
    bins = int((end - start) / BIN_S) + 1
    versions = sorted({a.version for a in answers if a.version is not None})
    counts = {v: np.zeros(bins) for v in versions}
    for a in answers:
        if a.version is not None:
            counts[a.version][int((a.sent_at - start) / BIN_S)] += 1
    totals = np.maximum(sum(counts.values()), 1)
    xs = np.arange(bins) * BIN_S
    fig, (share_ax, evidence_ax) = plt.subplots(2, 1, figsize=(14, 8), dpi=110, sharex=True, height_ratios=[3, 2])
    share_ax.stackplot(xs, *[counts[v] / totals * 100 for v in versions], labels=[f"v{v}" for v in versions], alpha=0.85)
    share_ax.set_ylabel("share of responses, %")
    share_ax.set_ylim(0, 100)
    share_ax.set_title("Which version answered (share per second), every ledger entry marked; below: evidence at each decision", pad=22)
    for name, (begin, finish) in phases.items():
        share_ax.text((begin + finish) / 2 - start, 103, name, ha="center", fontsize=9)
    colors = {"start": "black", "advance": "green", "promote": "blue", "rollback": "red", "abort": "gray", "hold": "orange"}
    for entry in entries:
        x = entry.at.timestamp() - start
        color = colors.get(entry.action, "black")
        for ax in (share_ax, evidence_ax):
            ax.axvline(x, color=color, linestyle="--", linewidth=0.9)
        share_ax.text(x, 2, f" {entry.action}", rotation=90, va="bottom", fontsize=8, color=color)
    decided = [e for e in entries if e.evidence and "candidate" in e.evidence]
    if decided:
        at = [e.at.timestamp() - start for e in decided]
        agreement = [e.evidence["agreement"] if e.evidence["agreement"] is not None else np.nan for e in decided]
        drift = [max(e.evidence["candidate"]["input_drift"].values(), default=np.nan) for e in decided]
        evidence_ax.plot(at, agreement, "o-", label="agreement with the primary")
        evidence_ax.plot(at, [e.evidence["output_psi"] or np.nan for e in decided], "s-", label="output PSI")
        evidence_ax.plot(at, drift, "^-", label="max input PSI (candidate)")
        ratio = [
            (e.evidence["candidate"]["p50_ms"] or np.nan) / (e.evidence["primary"]["p50_ms"] or np.nan) for e in decided
        ]
        evidence_ax.plot(at, ratio, "d-", label="p50 latency, candidate / primary")
    evidence_ax.set_xlabel("seconds")
    evidence_ax.set_ylabel("evidence")
    evidence_ax.legend(loc="upper right", fontsize=8)
    share_ax.legend(loc="upper left", fontsize=8)
    for ax in (share_ax, evidence_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/canary"))
    parser.add_argument("--window", type=float, default=15.0, help="evaluation window per step, seconds")
    parser.add_argument("--shadow", type=float, default=30.0, help="seconds of baseline, then of shadow scoring")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nonstop-canary-"))
    data = work / "data"
    demo.write_days(data, 5)
    registry = Registry(str(work / "registry"))
    primary = train(TrainOptions(data=str(data), model=MODEL, promote=True), registry).manifest.version
    good = train(TrainOptions(data=str(data), model=MODEL), registry).manifest.version
    frame = pd.concat([demo.day_frame(i) for i in range(5)], ignore_index=True)
    frame["target"] = np.random.default_rng(7).permutation(frame["target"].to_numpy())
    frame.to_parquet(work / "shuffled.parquet", index=False)
    collapsed = train(TrainOptions(data=str(work / "shuffled.parquet"), model=MODEL), registry).manifest.version
    policy = Policy(steps=(0.05, 0.25, 0.5, 1.0), window_s=args.window, min_requests=50)
    features = registry.manifest(MODEL, primary).feature_names
    live = pd.concat([demo.day_frame(day) for day in range(5, 10)], ignore_index=True)
    config = load_serve_config()
    deployment_config(config)["user_config"]["poll_interval_s"] = 0.5
    local.stop(CLUSTER)
    local.start(CLUSTER, Settings(registry=registry.uri))
    rollouts = Rollouts(registry, MODEL, "production")
    phases: dict[str, tuple[float, float]] = {}
    try:
        local.deploy(CLUSTER, config)
        local.wait_ready(CLUSTER, MODEL)
        ray.init(address=CLUSTER.address, logging_level="ERROR", log_to_driver=False)
        url = f"{CLUSTER.http_url}/v1/models/{MODEL}:predict"
        first_seq = len(registry.ledger(MODEL).entries()) + 1
        with CanaryLoad(url, bodies(live, features, 8), concurrency=args.concurrency, max_seconds=3600) as load:
            began = time.time()
            time.sleep(args.shadow)
            phases["baseline"] = (began, time.time())
            rollouts.start(good, policy.model_copy(update={"shadow": True, "window_s": 3600}), actor="benchmark")
            shadow_began = time.time()
            time.sleep(args.shadow)
            phases["shadow"] = (shadow_began, time.time())
            rollouts.rollback("benchmark", "shadow measured", kind="override")
            time.sleep(3)
            canary_began = time.time()
            rollouts.start(good, policy, actor="benchmark")
            wait_until(lambda: not rollouts.state().active, 12 * args.window + 120, "the good rollout to end")
            time.sleep(5)
            phases["canary: good"] = (canary_began, time.time())
            bad_began = time.time()
            rollouts.start(collapsed, policy, actor="benchmark")
            wait_until(lambda: not rollouts.state().active, 6 * args.window + 120, "the bad rollout to end")
            time.sleep(5)
            phases["canary: shuffled labels"] = (bad_began, time.time())
        answers = load.answers
    finally:
        ray.shutdown()
        local.stop(CLUSTER)
    entries = [e for e in registry.ledger(MODEL).entries() if e.seq >= first_seq]
    measured = {name: _phase(answers, *span) for name, span in phases.items()}
    base, shadow = measured["baseline"], measured["shadow"]
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, ray {ray.__version__}",
        "window_s": args.window, "concurrency": args.concurrency, "versions": {"primary": primary, "good": good, "collapsed": collapsed},
        "phases": measured, "ledger_ok": registry.ledger(MODEL).verify().ok,
        "entries": [e.model_dump(mode="json") for e in entries], "written_at": datetime.now(UTC).isoformat(),
    }  # fmt: skip
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# Progressive delivery report", "",
        f"Machine: {report['machine']}; 2 replicas, HAProxy ingress; {args.concurrency} closed-loop clients sending "
        f"8 rows per request with request keys; window {args.window:g}s, steps {list(policy.steps)}.", "",
        "| phase | sent | failed | req/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name, m in measured.items():
        lines.append(f"| {name} | {m['sent']} | {m['failed']} | {m['rps']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} |")
    if base["p99_ms"] and shadow["p99_ms"]:
        lines += ["", f"Shadow scoring p99 cost: {shadow['p99_ms'] - base['p99_ms']:+.2f} ms "
                  f"({(shadow['p99_ms'] / base['p99_ms'] - 1) * 100:+.0f}%), p50 {shadow['p50_ms'] - base['p50_ms']:+.2f} ms."]  # fmt: skip
    lines += ["", "Ledger entries:", ""] + [f"- #{e.seq} {e.kind}/{e.action} by {e.actor}: {e.reason}" for e in entries]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    timeline(answers, entries, phases, args.out / "timeline.png")
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
