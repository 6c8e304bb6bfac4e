"""nonstop against its peers, side by side on one machine: `make bench-peers`.

One fitted estimator (the demo StandardScaler + LogisticRegression), served by nonstop
(its skops artifact, 2 replicas behind HAProxy) and by KServe, MLServer and a classic
FastAPI server (its joblib export, each peer in its own virtualenv under the scratch
folder). The client is one niced `wrk -t1`; levels: 1, 16 and 64 concurrent clients with
one-row JSON requests, then the same with 1,000-row requests (and Arrow for nonstop).
Each round runs every server in turn, one alive at a time, the order reversed from one
round to the next; the report gives medians over rounds, the ratio of nonstop to the best
peer at each level, and the load average around each server's run (other work on the
machine shows there).

    .venv/bin/python -m benchmarks.peers.compare --rounds 3 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.peers.servers import MODEL, PEERS, Payload, Running, ensure_venv, v1_body  # noqa: E402
from benchmarks.throughput import _arrow_payload, run_wrk  # noqa: E402
from nonstop.config import Settings  # noqa: E402
from nonstop.loading import TrustPolicy, load_version  # noqa: E402
from nonstop.registry import Registry  # noqa: E402
from nonstop_ops.cluster import lifecycle as local  # noqa: E402
from nonstop_ops.cluster import ClusterError  # noqa: E402
from nonstop_ops.cluster.serve_config import load_serve_config  # noqa: E402
from training import demo  # noqa: E402
from training.job import TrainOptions, train  # noqa: E402

NONSTOP = "nonstop"
LEVELS = (1, 16, 64)
BIG_ROWS = 1000
PEER_PORT = 26900  # the nonstop cluster uses 26001-26800
WARM_UP_S = 3


def _cluster(worker_niceness: int = 0) -> local.LocalCluster:
    return local.LocalCluster.isolated(26000, "nonstop-peers", worker_niceness=worker_niceness)


def prepare(scratch: Path) -> tuple[Registry, Path, list[list[float]], list[str]]:
    """Train once; the same fitted estimator goes to the registry (skops) and to joblib."""
    demo.write_days(scratch / "data", 5)
    registry = Registry(str(scratch / "registry"))
    manifest = train(TrainOptions(data=str(scratch / "data"), model=MODEL, promote=True), registry).manifest
    loaded = load_version(registry, MODEL, manifest.version, TrustPolicy())
    model_dir = scratch / "model"
    model_dir.mkdir(exist_ok=True)
    joblib.dump(loaded.estimator, model_dir / "model.joblib")
    samples = [[float(v) for v in row] for row in manifest.samples.inputs]
    return registry, model_dir, samples, manifest.feature_names


def measure(url: str, small: Payload, bigs: dict[str, Payload], seconds: float) -> dict[str, Any]:
    """One server's levels, each a separate wrk run; the load average before and after."""
    load_before = os.getloadavg()
    run_wrk(url, small, 16, WARM_UP_S, nice=10)
    result: dict[str, Any] = {"one_row": {}, "big": {}}
    for c in LEVELS:
        result["one_row"][str(c)] = run_wrk(url, small, c, seconds, nice=10)
    for kind, body in bigs.items():
        run_wrk(url, body, 4, 1, nice=10)
        result["big"][kind] = {str(c): run_wrk(url, body, c, seconds, nice=10) for c in LEVELS}
    result["load_avg"] = {"before": load_before, "after": os.getloadavg()}
    return result


def run_nonstop(
    registry: Registry, rows: list[list[float]], big_rows: list[list[float]], names: list[str], seconds: float, worker_niceness: int = 0
) -> dict[str, Any]:
    cluster = _cluster(worker_niceness)
    with local.serving(cluster, Settings(registry=registry.uri), load_serve_config(), MODEL):
        url = f"{cluster.http_url}/v1/models/{MODEL}:predict"
        bigs = {"json": v1_body(big_rows), "arrow": _arrow_payload(names, big_rows)}
        return measure(url, v1_body(rows), bigs, seconds)


def run_peer(name: str, scratch: Path, model_dir: Path, rows: list[list[float]], big_rows: list[list[float]], seconds: float) -> dict[str, Any]:
    peer = next(p for p in PEERS if p.name == name)
    with Running(peer, scratch, model_dir, PEER_PORT, peer.body(rows)) as server:
        return measure(server.url, peer.body(rows), {"json": peer.body(big_rows)}, seconds)


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarize(all_rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Medians over rounds per server, level and figure (over the rounds in which the
    server started); the spread alongside."""
    servers = list(dict.fromkeys(s for r in all_rounds for s in r))
    out: dict[str, Any] = {}
    for server in servers:
        rounds = [r for r in all_rounds if server in r]
        entry: dict[str, Any] = {"one_row": {}, "big": {}}
        for c in map(str, LEVELS):
            runs = [r[server]["one_row"][c] for r in rounds]
            entry["one_row"][c] = {k: _median(runs, k) for k in ("rps", "p50_ms", "p90_ms", "p99_ms")}
            entry["one_row"][c]["rps_range"] = [min(r["rps"] for r in runs), max(r["rps"] for r in runs)]
            entry["one_row"][c]["errors"] = sum(r["errors"] for r in runs)
        entry["rounds"] = len(rounds)
        for kind in rounds[0][server]["big"]:
            entry["big"][kind] = {}
            for c in map(str, LEVELS):
                runs = [r[server]["big"][kind][c] for r in rounds]
                entry["big"][kind][c] = {
                    "rows_per_s": _median(runs, "rps") * BIG_ROWS,
                    "p50_ms": _median(runs, "p50_ms"),
                    "p99_ms": _median(runs, "p99_ms"),
                    "errors": sum(r["errors"] for r in runs),
                }
        entry["load_avg_1min"] = [r[server]["load_avg"]["before"][0] for r in rounds] + [
            r[server]["load_avg"]["after"][0] for r in rounds
        ]
        out[server] = entry
    return out


def ratios(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """nonstop ÷ the best peer at each level: throughput (higher is better) and p50/p99
    (lower is better); the best peer is chosen per figure."""
    peers = [s for s in summary if s != NONSTOP]
    ours = summary[NONSTOP]
    out: dict[str, dict[str, float]] = {}
    for c in map(str, LEVELS):
        mine = ours["one_row"][c]
        out[c] = {
            "rps": mine["rps"] / max(summary[p]["one_row"][c]["rps"] for p in peers),
            "p50_ms": mine["p50_ms"] / min(summary[p]["one_row"][c]["p50_ms"] for p in peers),
            "p99_ms": mine["p99_ms"] / min(summary[p]["one_row"][c]["p99_ms"] for p in peers),
            "rows_per_s": ours["big"]["json"][c]["rows_per_s"]
            / max(summary[p]["big"]["json"][c]["rows_per_s"] for p in peers),
        }
    return out


def table(result: dict[str, Any]) -> str:
    summary, ratio = result["summary"], result["ratios"]
    head = "| server | " + " | ".join(f"c={c} req/s | c={c} p50 ms | c={c} p99 ms" for c in LEVELS) + " |"
    lines = [head, "|---|" + "---:|" * (3 * len(LEVELS))]
    for server, entry in summary.items():
        cells = []
        for c in map(str, LEVELS):
            r = entry["one_row"][c]
            cells += [f"{r['rps']:,.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.1f}"]
        label = f"**{server}**" if server == NONSTOP else server
        if entry["rounds"] < result["rounds"]:
            label += f" ({entry['rounds']} of {result['rounds']} rounds: it did not start in the others)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for c in map(str, LEVELS) if ratio else ():
        cells += [f"{ratio[c]['rps']:.2f}×", f"{ratio[c]['p50_ms']:.2f}×", f"{ratio[c]['p99_ms']:.2f}×"]
    if ratio:
        lines.append("| nonstop ÷ best peer | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{BIG_ROWS:,}-row requests, rows per second (p99 ms):",
        "",
        "| server | body | " + " | ".join(f"c={c}" for c in LEVELS) + " |",
        "|---|---|" + "---:|" * len(LEVELS),
    ]
    for server, entry in summary.items():
        for kind, levels in entry["big"].items():
            cells = [f"{levels[c]['rows_per_s']:,.0f} ({levels[c]['p99_ms']:.0f})" for c in map(str, LEVELS)]
            lines.append(f"| {server} | {kind} | " + " | ".join(cells) + " |")
    if ratio:
        lines.append(
            "| nonstop ÷ best peer, JSON | | " + " | ".join(f"{ratio[str(c)]['rows_per_s']:.2f}×" for c in LEVELS) + " |"
        )
    errors = {s: sum(e["one_row"][c]["errors"] for c in map(str, LEVELS)) for s, e in summary.items()}
    loads = {s: f"{min(e['load_avg_1min']):.1f}-{max(e['load_avg_1min']):.1f}" for s, e in summary.items()}
    lines += [
        "",
        f"Errors (non-2xx or socket), all rounds: {errors}. "
        f"1-minute load average around each server's runs: {loads}.",
    ]
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> None:
    summary = result["summary"]
    names = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), dpi=110)
    width = 0.8 / len(names)
    panels = (
        ("one_row", "rps", "one-row requests per second"),
        ("one_row", "p99_ms", "one-row p99 latency (ms)"),
        ("big", "rows_per_s", f"rows per second, {BIG_ROWS:,}-row JSON requests"),
    )
    for axis, (group, key, label) in zip(axes, panels, strict=True):
        for i, name in enumerate(names):
            levels = summary[name][group] if group == "one_row" else summary[name][group]["json"]
            xs = [j + i * width for j in range(len(LEVELS))]
            axis.bar(xs, [levels[str(c)][key] for c in LEVELS], width, label=name)
        axis.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(LEVELS))])
        axis.set_xticklabels([f"{c} clients" for c in LEVELS])
        axis.set_title(label, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    loads = [v for entry in summary.values() for v in entry["load_avg_1min"]]
    fig.suptitle(f"Same estimator, same wrk client, one server at a time; medians of {result['rounds']} rounds; "
                 f"{result['machine']}, {result['date']}; 1-min load average {min(loads):.1f}-{max(loads):.1f}")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--scratch", type=Path, default=Path("benchmarks/out/peers"), help="virtualenvs, model files, logs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per level")
    parser.add_argument("--servers", nargs="*", default=[NONSTOP, *(p.name for p in PEERS)])
    parser.add_argument(
        "--worker-niceness", type=int, default=0, help="nonstop's Ray worker niceness (Ray's own default, 15, for an A/B)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.scratch = args.scratch.resolve()
    args.scratch.mkdir(parents=True, exist_ok=True)
    versions = {p.name: ensure_venv(p, args.scratch) for p in PEERS if p.name in args.servers}
    registry, model_dir, samples, names = prepare(Path(tempfile.mkdtemp(prefix="peers-", dir=args.scratch)))
    rows = samples[:1]
    big_rows = [samples[i % len(samples)] for i in range(BIG_ROWS)]
    rounds: list[dict[str, dict[str, Any]]] = []
    for n in range(args.rounds):
        order = args.servers if n % 2 == 0 else list(reversed(args.servers))
        this: dict[str, dict[str, Any]] = {}
        for server in order:
            print(f"round {n + 1}/{args.rounds}: {server} (load average {os.getloadavg()[0]:.2f})", flush=True)
            for attempt in (1, 2):  # a busy machine can keep a server from starting; once more, then skip
                try:
                    if server == NONSTOP:
                        this[server] = run_nonstop(registry, rows, big_rows, names, args.seconds, args.worker_niceness)
                    else:
                        this[server] = run_peer(server, args.scratch, model_dir, rows, big_rows, args.seconds)
                    break
                except (RuntimeError, ClusterError) as exc:
                    print(f"  {server} failed to start (attempt {attempt}): {exc}", flush=True)
        rounds.append({s: this[s] for s in args.servers if s in this})
        (args.scratch / "rounds.json").write_text(json.dumps(rounds, indent=2))  # kept if a later round fails
    summary = summarize(rounds)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "client": "wrk -t1, niced (nice -n 10); 3 s warm-up at 16 clients",
        "rounds": args.rounds,
        "seconds_per_level": args.seconds,
        "setups": {p.name: p.setup for p in PEERS if p.name in args.servers}
        | {NONSTOP: f"2 replicas, HAProxy ingress, serve_app/serve_config.yaml, Ray worker niceness {args.worker_niceness}"},
        "versions": versions,
        "summary": summary,
        "ratios": ratios(summary) if NONSTOP in summary and len(summary) > 1 else {},
        "rounds_raw": rounds,
    }
    (args.out / "peers.json").write_text(json.dumps(result, indent=2))
    text = (
        f"# nonstop and its peers\n\n{result['date']}; {result['machine']}; {result['client']}; "
        f"{args.seconds:.0f} s per level; medians of {args.rounds} rounds, order reversed every round, "
        "one server alive at a time.\n\n"
        + "\n".join(f"- {name}: {setup}" + (f" ({versions[name]})" if name in versions else "") for name, setup in result["setups"].items())
        + "\n\n"
        + (table(result) if NONSTOP in summary else "")
        + "\n"
    )
    (args.out / "peers.md").write_text(text)
    if result["ratios"]:
        chart(result, args.out / "peers.png")
    print(text)


if __name__ == "__main__":
    main()
