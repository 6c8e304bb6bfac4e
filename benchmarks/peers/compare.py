"""nonstop against its peers, side by side on one machine: `make bench-peers`.

One fitted estimator (the demo StandardScaler + LogisticRegression), served by nonstop
(its skops artifact, 2 replicas behind HAProxy) and by KServe, MLServer and a classic
FastAPI server (its joblib export, each peer in its own virtualenv under the scratch
folder). The client is one `wrk -t1`; levels: 1, 16 and 64 concurrent clients with
one-row JSON requests, then 1, 4, 16 and 64 with 1,000-row requests: JSON lists and by
name, one V2 JSON [N, F] tensor (nonstop and KServe; MLServer's lists are that already),
and Arrow (nonstop only).

Both body shapes a user sends: features as lists in schema order, and features by name,
each server its own way (nonstop's README and the FastAPI server: V1 objects; KServe and
MLServer, whose V1 or V2 decoders take names only as columns: a V2 tensor per feature
decoded as pandas). And the client at two priorities: niced (`nice -n 10`, the servers
get the CPU first, as the benchmark always ran) and at the servers' own priority (what a
client on the same machine without `nice` sees); `--client-nice` picks. A ratio a user
can reproduce is the lowest of these, which the report names.

Each round runs every server in turn, one alive at a time, the order reversed from one
round to the next; the report gives medians over rounds, the ratio of nonstop to the best
peer at each level, and the load average around each server's run (other work on the
machine shows there). It needs a quiet machine: on a busy one the figures measure the
other work.

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

from benchmarks.peers.servers import MODEL, PEERS, Payload, Running, ensure_venv, v1_body, v1_objects_body, v2_body  # noqa: E402
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
LISTS, NAMED, V2, ARROW = "lists", "named", "v2", "arrow"
SHAPES = {LISTS: "JSON lists", NAMED: "JSON by name", V2: "V2 JSON tensor", ARROW: "Arrow"}
SHAPES_NOTE = (
    "JSON lists: features as lists in schema order. JSON by name: features keyed by name, each server its own way "
    "(nonstop and FastAPI: V1 objects; KServe and MLServer: a V2 tensor per feature, decoded as pandas). "
    "V2 JSON tensor: one FP64 [N, F] tensor of the Open Inference Protocol (nonstop and KServe; MLServer's lists are this). "
    "Arrow: an Arrow IPC stream (nonstop only)."
)
CLIENT_NICENESS = (10, 0)  # below the servers (as the benchmark always ran), and at their priority
LEVELS = (1, 16, 64)
BIG_LEVELS = (1, 4, 16, 64)
BIG_ROWS = 1000
PEER_PORT = 26900  # the nonstop cluster uses 26001-26800
WARM_UP_S = 3


def nonstop_cluster(worker_niceness: int = 0) -> local.LocalCluster:
    return local.LocalCluster.isolated(26000, "nonstop-peers", worker_niceness=worker_niceness)


def big_body_rows(samples: list[list[float]]) -> list[list[float]]:
    """The rows of a 1,000-row request: the samples in turn."""
    return [samples[i % len(samples)] for i in range(BIG_ROWS)]


def prepare(scratch: Path) -> tuple[Registry, Path, list[list[float]], list[str]]:
    """Train once; the same fitted estimator goes to the registry (skops) and to joblib."""
    demo.write_days(scratch / "data", 5)
    registry = Registry(str(scratch / "registry"))
    manifest = train(TrainOptions(data=str(scratch / "data"), model=MODEL, promote=True), registry).manifest
    loaded = load_version(registry, MODEL, manifest.version, TrustPolicy())
    model_dir = scratch / "model"
    model_dir.mkdir(exist_ok=True)
    joblib.dump(loaded.estimator, model_dir / "model.joblib")
    (model_dir / "features.json").write_text(json.dumps(manifest.feature_names))  # for named instances
    samples = [[float(v) for v in row] for row in manifest.samples.inputs]
    return registry, model_dir, samples, manifest.feature_names


Case = tuple[str, Payload]  # the route and the body sent to it


def measure(small: dict[str, Case], big: dict[str, Case], seconds: float, nices: list[int]) -> dict[str, Any]:
    """One server's levels, each a separate wrk run, for every body shape and client
    priority; the load average before and after."""
    load_before = os.getloadavg()
    result: dict[str, Any] = {"by_nice": {}}
    for nice in nices:
        url, body = next(iter(small.values()))
        run_wrk(url, body, 16, WARM_UP_S, nice=nice)
        one_row = {shape: {str(c): run_wrk(u, b, c, seconds, nice=nice) for c in LEVELS} for shape, (u, b) in small.items()}
        bigs: dict[str, Any] = {}
        for kind, (u, b) in big.items():
            run_wrk(u, b, 4, 1, nice=nice)
            bigs[kind] = {str(c): run_wrk(u, b, c, seconds, nice=nice) for c in BIG_LEVELS}
        result["by_nice"][str(nice)] = {"one_row": one_row, "big": bigs}
    result["load_avg"] = {"before": load_before, "after": os.getloadavg()}
    return result


def run_nonstop(
    registry: Registry, rows: list[list[float]], big_rows: list[list[float]], names: list[str], seconds: float,
    nices: list[int], worker_niceness: int = 0,
) -> dict[str, Any]:  # fmt: skip
    cluster = nonstop_cluster(worker_niceness)
    with local.serving(cluster, Settings(registry=registry.uri), load_serve_config(), MODEL):
        url = f"{cluster.http_url}/v1/models/{MODEL}:predict"
        small = {LISTS: (url, v1_body(rows)), NAMED: (url, v1_objects_body(names, rows))}
        big = {
            LISTS: (url, v1_body(big_rows)),
            NAMED: (url, v1_objects_body(names, big_rows)),
            V2: (f"{cluster.http_url}/v2/models/{MODEL}/infer", v2_body(big_rows)),
            ARROW: (url, _arrow_payload(names, big_rows)),
        }
        return measure(small, big, seconds, nices)


def run_peer(
    name: str, scratch: Path, model_dir: Path, rows: list[list[float]], big_rows: list[list[float]], names: list[str],
    seconds: float, nices: list[int],
) -> dict[str, Any]:  # fmt: skip
    peer = next(p for p in PEERS if p.name == name)
    with Running(peer, scratch, model_dir, PEER_PORT, peer.body(rows)) as server:
        small = {LISTS: (server.url, peer.body(rows)), NAMED: (server.named_url, peer.named_body(names, rows))}
        big = {LISTS: (server.url, peer.body(big_rows)), NAMED: (server.named_url, peer.named_body(names, big_rows))}
        if server.v2_url is not None:
            big[V2] = (server.v2_url, v2_body(big_rows))
        return measure(small, big, seconds, nices)


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarize(all_rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Medians over rounds per server, client priority, shape, level and figure (over the
    rounds in which the server started); the spread alongside."""
    servers = list(dict.fromkeys(s for r in all_rounds for s in r))
    out: dict[str, Any] = {}
    for server in servers:
        rounds = [r[server] for r in all_rounds if server in r]
        entry: dict[str, Any] = {"by_nice": {}, "rounds": len(rounds)}
        for nice, first in rounds[0]["by_nice"].items():
            one_row: dict[str, Any] = {}
            for shape in first["one_row"]:
                one_row[shape] = {}
                for c in map(str, LEVELS):
                    runs = [r["by_nice"][nice]["one_row"][shape][c] for r in rounds]
                    figures = {k: _median(runs, k) for k in ("rps", "p50_ms", "p90_ms", "p99_ms")}
                    figures["rps_range"] = [min(r["rps"] for r in runs), max(r["rps"] for r in runs)]
                    figures["errors"] = sum(r["errors"] for r in runs)
                    one_row[shape][c] = figures
            big: dict[str, Any] = {}
            for kind in first["big"]:
                big[kind] = {}
                for c in map(str, BIG_LEVELS):
                    runs = [r["by_nice"][nice]["big"][kind][c] for r in rounds]
                    big[kind][c] = {
                        "rows_per_s": _median(runs, "rps") * BIG_ROWS,
                        "p50_ms": _median(runs, "p50_ms"),
                        "p99_ms": _median(runs, "p99_ms"),
                        "errors": sum(r["errors"] for r in runs),
                    }
            entry["by_nice"][nice] = {"one_row": one_row, "big": big}
        entry["load_avg_1min"] = [r["load_avg"]["before"][0] for r in rounds] + [r["load_avg"]["after"][0] for r in rounds]
        out[server] = entry
    return out


def ratios(summary: dict[str, Any]) -> dict[str, Any]:
    """nonstop ÷ the best peer, per client priority, body shape and level: throughput
    (higher is better) and p50/p99 (lower is better), the best peer chosen per figure;
    `lowest` is the smallest throughput ratio at the top level, the one to quote."""
    peers = [s for s in summary if s != NONSTOP]
    ours = summary[NONSTOP]
    out: dict[str, Any] = {"by_nice": {}}
    for nice, mine in ours["by_nice"].items():
        theirs = [summary[p]["by_nice"][nice] for p in peers if nice in summary[p]["by_nice"]]
        one_row: dict[str, Any] = {}
        for shape, levels in mine["one_row"].items():
            one_row[shape] = {
                c: {
                    "rps": levels[c]["rps"] / max(t["one_row"][shape][c]["rps"] for t in theirs),
                    "p50_ms": levels[c]["p50_ms"] / min(t["one_row"][shape][c]["p50_ms"] for t in theirs),
                    "p99_ms": levels[c]["p99_ms"] / min(t["one_row"][shape][c]["p99_ms"] for t in theirs),
                }
                for c in map(str, LEVELS)
            }
        big = {
            kind: {
                c: mine["big"][kind][c]["rows_per_s"] / max(t["big"][kind][c]["rows_per_s"] for t in theirs if kind in t["big"])
                for c in map(str, BIG_LEVELS)
            }
            for kind in mine["big"]
            if any(kind in t["big"] for t in theirs)
        }  # against the peers that took the shape
        out["by_nice"][nice] = {"one_row": one_row, "big": big}
    top = str(LEVELS[-1])
    candidates = [
        (r["one_row"][shape][top]["rps"], f"one-row {shape}, client nice {nice}")
        for nice, r in out["by_nice"].items()
        for shape in r["one_row"]
    ]
    low = min(candidates)
    out["lowest"] = {"ratio": low[0], "where": f"{low[1]}, {top} clients"}
    return out


def table(result: dict[str, Any]) -> str:
    summary, ratio = result["summary"], result["ratios"]
    lines: list[str] = [SHAPES_NOTE, ""]
    for nice in summary[NONSTOP]["by_nice"]:
        lines += [f"## Client at nice {nice}", ""]
        for shape in summary[NONSTOP]["by_nice"][nice]["one_row"]:
            lines += [
                f"One-row requests, {SHAPES[shape]}, client at nice {nice}:",
                "",
                "| server | " + " | ".join(f"c={c} req/s | c={c} p50 ms | c={c} p99 ms" for c in LEVELS) + " |",
                "|---|" + "---:|" * (3 * len(LEVELS)),
            ]
            for server, entry in summary.items():
                if nice not in entry["by_nice"]:
                    continue
                levels = entry["by_nice"][nice]["one_row"][shape]
                cells = [f"{levels[c]['rps']:,.0f} | {levels[c]['p50_ms']:.2f} | {levels[c]['p99_ms']:.1f}" for c in map(str, LEVELS)]
                label = f"**{server}**" if server == NONSTOP else server
                if entry["rounds"] < result["rounds"]:
                    label += f" ({entry['rounds']} of {result['rounds']} rounds: it did not start in the others)"
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            if ratio:
                r = ratio["by_nice"][nice]["one_row"][shape]
                cells = [f"{r[c]['rps']:.2f}× | {r[c]['p50_ms']:.2f}× | {r[c]['p99_ms']:.2f}×" for c in map(str, LEVELS)]
                lines.append("| nonstop ÷ best peer | " + " | ".join(cells) + " |")
            lines.append("")
        lines += [
            f"{BIG_ROWS:,}-row requests, rows per second (p99 ms), client at nice {nice}:",
            "",
            "| server | body | " + " | ".join(f"c={c}" for c in BIG_LEVELS) + " |",
            "|---|---|" + "---:|" * len(BIG_LEVELS),
        ]
        for server, entry in summary.items():
            for kind, levels in entry["by_nice"].get(nice, {"big": {}})["big"].items():
                cells = [f"{levels[c]['rows_per_s']:,.0f} ({levels[c]['p99_ms']:.0f})" for c in map(str, BIG_LEVELS)]
                lines.append(f"| {server} | {SHAPES[kind]} | " + " | ".join(cells) + " |")
        for kind, levels in (ratio["by_nice"][nice]["big"] if ratio else {}).items():
            lines.append(f"| nonstop ÷ best peer | {SHAPES[kind]} | " + " | ".join(f"{levels[str(c)]:.2f}×" for c in BIG_LEVELS) + " |")
        lines.append("")
    errors = {
        s: sum(levels[c]["errors"] for n in e["by_nice"].values() for levels in n["one_row"].values() for c in map(str, LEVELS))
        for s, e in summary.items()
    }
    loads = {s: f"{min(e['load_avg_1min']):.1f}-{max(e['load_avg_1min']):.1f}" for s, e in summary.items()}
    if ratio:
        lines += [f"Lowest throughput ratio: **{ratio['lowest']['ratio']:.2f}×** ({ratio['lowest']['where']}).", ""]
    lines += [
        f"Errors (non-2xx or socket), one-row runs, all rounds: {errors}. "
        f"1-minute load average around each server's runs: {loads}.",
    ]
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> None:
    summary = result["summary"]
    names = list(summary)
    nices = list(summary[NONSTOP]["by_nice"])
    fig, axes = plt.subplots(len(nices), 3, figsize=(16, 4.6 * len(nices)), dpi=110, squeeze=False)
    width = 0.8 / len(names)
    panels = ((LISTS, "one-row requests per second, lists"), (NAMED, "one-row requests per second, named features"))
    for row, nice in zip(axes, nices, strict=True):
        for axis, (shape, label) in zip(row[:2], panels, strict=True):
            for i, name in enumerate(names):
                levels = summary[name]["by_nice"].get(nice, {}).get("one_row", {}).get(shape)
                if levels:
                    axis.bar([j + i * width for j in range(len(LEVELS))], [levels[str(c)]["rps"] for c in LEVELS], width, label=name)
            axis.set_title(f"{label}; client nice {nice}", fontsize=10)
        for i, name in enumerate(names):
            levels = summary[name]["by_nice"].get(nice, {}).get("big", {}).get(LISTS)
            if levels:
                row[2].bar([j + i * width for j in range(len(LEVELS))], [levels[str(c)]["rows_per_s"] for c in LEVELS], width, label=name)
        row[2].set_title(f"rows per second, {BIG_ROWS:,}-row list requests; client nice {nice}", fontsize=10)
        for axis in row:
            axis.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(LEVELS))])
            axis.set_xticklabels([f"{c} clients" for c in LEVELS])
            axis.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
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
    parser.add_argument(
        "--client-nice", type=int, nargs="+", default=list(CLIENT_NICENESS),
        help="wrk's niceness, each in turn: 10 leaves the servers the CPU first; 0 is their own priority",
    )  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.scratch = args.scratch.resolve()
    args.scratch.mkdir(parents=True, exist_ok=True)
    versions = {p.name: ensure_venv(p, args.scratch) for p in PEERS if p.name in args.servers}
    registry, model_dir, samples, names = prepare(Path(tempfile.mkdtemp(prefix="peers-", dir=args.scratch)))
    rows = samples[:1]
    big_rows = big_body_rows(samples)
    rounds: list[dict[str, dict[str, Any]]] = []
    for n in range(args.rounds):
        order = args.servers if n % 2 == 0 else list(reversed(args.servers))
        this: dict[str, dict[str, Any]] = {}
        for server in order:
            print(f"round {n + 1}/{args.rounds}: {server} (load average {os.getloadavg()[0]:.2f})", flush=True)
            for attempt in (1, 2):  # a busy machine can keep a server from starting; once more, then skip
                try:
                    if server == NONSTOP:
                        this[server] = run_nonstop(
                            registry, rows, big_rows, names, args.seconds, args.client_nice, args.worker_niceness
                        )
                    else:
                        this[server] = run_peer(server, args.scratch, model_dir, rows, big_rows, names, args.seconds, args.client_nice)
                    break
                except (RuntimeError, ClusterError) as exc:
                    print(f"  {server} failed to start (attempt {attempt}): {exc}", flush=True)
        rounds.append({s: this[s] for s in args.servers if s in this})
        (args.scratch / "rounds.json").write_text(json.dumps(rounds, indent=2))  # kept if a later round fails
    summary = summarize(rounds)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "client": f"wrk -t1 at nice {', '.join(map(str, args.client_nice))} in turn; 3 s warm-up at 16 clients",
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
