"""The markdown of benchmarks/many_models.py's result: what docs/many-models.md includes.

Kept apart from the run so that a report can be rewritten from a saved JSON without
starting Ray:

    .venv/bin/python -m benchmarks.many_models_report docs/results/many-models.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from harness.many_models import percentile_ms

HOT_GOAL = 0.9  # the hot set's share of one model's throughput, issue 25


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _mb(value: float) -> str:
    return f"{value / 2**20:.0f}"


def _load_range(result: dict[str, Any]) -> str:
    loads = [s["load1"] for s in result.get("rss", [])]
    start, end = result["load_average_start"][0], result.get("load_average_end", [None])[0]
    during = f"{min(loads):.1f}-{max(loads):.1f} during the run (sampled every second), " if loads else ""
    return f"{start:.1f} at the start, {during}{end:.1f} at the end" if end is not None else f"{start:.1f} at the start"


def _rounds(row: dict[str, Any]) -> str:
    return ", ".join("-" if r is None else f"{r:.0%}" for r in row.get("round_ratios", []))


def _throughput(rows: list[dict[str, Any]], hot: str) -> list[str]:
    lines = [
        f"| clients | one model req/s | p50 ms | p99 ms | hot set of {hot} req/s | p50 ms | p99 ms | ratio | goal ≥ {HOT_GOAL:.0%} | ratio per round | non-2xx |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in rows:
        one, many, ratio = r["one"], r["hot"], r["ratio"]
        errors = one["errors"] + many["errors"]
        met = "met" if ratio is not None and ratio >= HOT_GOAL else "**not met**"
        lines.append(
            f"| {r['clients']} | {one['rps']:.0f} | {_ms(one['p50_ms'])} | {_ms(one['p99_ms'])} | {many['rps']:.0f} "
            f"| {_ms(many['p50_ms'])} | {_ms(many['p99_ms'])} | {ratio:.0%} | {met} | {_rounds(r)} | {errors} |"
        )
    return lines


def _sweep(rows: list[dict[str, Any]], labels: list[str]) -> list[str]:
    head = " | ".join(f"{label} RSS MB" for label in labels)
    lines = [
        f"| pass | s | requests | cold loads | cold, client p50 / p99 ms | load on the replica p50 / p99 ms | hits | hit p50 ms "
        f"| 503 Retry-After | failed | {head} |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(labels),
    ]
    for r in rows:
        rss = " | ".join(f"{r['rss_mb'][label]:.0f}" for label in labels)
        lines.append(
            f"| {r['pass']} | {r['seconds']:.1f} | {r['requests']} | {r['cold']} | {_ms(r['client_cold_ms']['p50'])} / "
            f"{_ms(r['client_cold_ms']['p99'])} | {_ms(r['replica_load_ms']['p50'])} / {_ms(r['replica_load_ms']['p99'])} "
            f"| {r['hit']} | {_ms(r['client_hit_p50_ms'])} | {r['retry_after_503']} | {r['failed']} | {rss} |"
        )
    client = [s for r in rows for s in r["cold_client_s"]]
    replica = [s for r in rows for s in r["replica_load_s"]]
    lines.append(
        f"| all | | {sum(r['requests'] for r in rows)} | {len(client)} | {_ms(percentile_ms(client, 50))} / "
        f"{_ms(percentile_ms(client, 99))} | {_ms(percentile_ms(replica, 50))} / {_ms(percentile_ms(replica, 99))} "
        f"| {sum(r['hit'] for r in rows)} | | {sum(r['retry_after_503'] for r in rows)} | {sum(r['failed'] for r in rows)} |"
        + " |" * len(labels)
    )
    return lines


def _memory(result: dict[str, Any]) -> list[str]:
    lines = [
        "| replica | RSS at the start MB | peak RSS MB | growth MB | limit MB (start + budget + overhead) | within |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, m in result["memory"].items():
        lines.append(
            f"| {label} | {_mb(m['baseline'])} | {_mb(m['peak'])} | {m['growth'] / 2**20:.1f} | {_mb(m['limit'])} "
            f"| {'yes' if m['within'] else '**no**'} |"
        )
    for label, (start, peak) in result.get("loaders_mb", {}).items():
        lines.append(f"| {label} (its loader actor, holds no model) | {start:.0f} | {peak:.0f} | {peak - start:.1f} | | |")
    return lines


def _retrain(r: dict[str, Any], models: int) -> list[str]:
    load, during, check = r["load"], r["during_publish"], r["check"]
    lines = [
        "| | requests | 2xx | 503 Retry-After | failed | answered by another model | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in (("the whole load", load), ("while publishing and promoting", during), ("check: each model once, after", check)):
        lines.append(
            f"| {name} | {t['requests']} | {t['ok']} | {t['retry_after_503']} | {t['failed']} | {t['wrong_model']} "
            f"| {_ms(t['p50_ms'])} | {_ms(t['p99_ms'])} |"
        )
    lines += [
        "",
        f"{r['published']} of {models} models published and promoted in {r['publish_s']:.0f} s; in the check afterwards, "
        f"{check['ok'] - check['stale_count']} of {check['requests']} answered with their new version"
        + (f" (not yet: {', '.join(check['stale'])})" if check["stale_count"] else "")
        + ".",
    ]
    if r["retry_after_reasons"]:
        lines += ["", "The 503s with Retry-After said: " + "; ".join(f"`{reason}`" for reason in r["retry_after_reasons"])]
    return lines


def report(result: dict[str, Any]) -> str:
    args, budget = result["args"], result["budget"]
    labels = list(result["memory"])
    retrain = result["retrain"]
    failed = retrain["load"]["failed"]
    lines = [
        "# Many models on the cluster",
        "",
        f"{args['models']} small models (logistic regression on 3 features) behind one app on 2 replicas, through HAProxy "
        f"over HTTP on 127.0.0.1: `{result['command']}` (under the machine's Ray lock), {result['started']} to "
        f"{result['finished']}, {result['machine']}. Load average {_load_range(result)}: a shared machine, other work beside "
        "the benchmark's own; the clients (wrk for the hot set, Python and httpx after it) run on the same 2 cores as the replicas.",
        "",
        f"Served by `select: {{pattern: \"m*\"}}`, each model following `production`, its poller every {args['poll']} s. "
        f"Budget per replica: {budget['max_models']} models and {budget['max_bytes']:,} estimated bytes "
        f"({budget['bytes_per_model_est']} bytes per model, so the count binds first), `load_wait_s` {budget['load_wait_s']:g}, "
        f"2 loads at once. Publishing the {args['models']} models took {result['initial_publish_s']:.0f} s "
        f"({args['publishers']} publisher processes"
        + (", beforehand with `--publish-only`, outside the Ray lock)." if args.get("registry") not in (None, "None") else ")."),
        "",
        f"### Hot set against one model ({args['seconds']} s each, one model then the hot set, "
        f"{args.get('rounds', '1')} rounds per level, wrk -t1 at nice {args.get('client_nice', '10')}, the hot set's paths in turn)",
        "",
        *_throughput(result["throughput"], args["hot"]),
        "",
        f"### Touching all {args['models']} models repeatedly",
        "",
        f"{args['passes']} passes, each model once per pass in a new random order, {args['sweep_clients']} clients. A request is "
        "cold when its model's load count went up on a replica during the pass (read from the replicas' own per-model lines, "
        "`nonstop status`); \"client\" is that request's latency as the client saw it (waiting for a load slot included), "
        "\"on the replica\" the load's own time there (read, audit, verify in the loader actor, hand-over).",
        "",
        *_sweep(result["sweep"], labels),
        "",
        f"### Replica memory over the whole run (stated overhead: {result['memory_overhead_mb']:.0f} MB)",
        "",
        "Resident memory of each replica process, sampled every second from the throughput runs to the end of the retrain, "
        f"against its RSS before the many-models load (one model served) plus the byte budget plus {result['memory_overhead_mb']:.0f} MB "
        "for what the byte estimate leaves out: the Python objects around each held version (holder, poller, manifest) and the "
        "allocator's slack after hundreds of loads and evictions.",
        "",
        *_memory(result),
        "",
        f"### Nightly retrain of all {args['models']} under load",
        "",
        f"A new version of every model published and promoted by {args['publishers']} publisher processes "
        f"(nice {args['publisher_nice']}) while {args['retrain_clients']} clients send requests round all {args['models']} models: "
        f"**{failed} failed requests**.",
        "",
        *_retrain(retrain, int(args["models"])),
        "",
        f"Replicas restarted during the run: {'yes' if result['replicas_restarted'] else 'no'}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    source = Path(sys.argv[1])
    text = report(json.loads(source.read_text()))
    source.with_suffix(".md").write_text(text)
    print(text)
