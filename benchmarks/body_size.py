"""What a 1,000-row body's bytes cost apart from its decoding: why bodies by name trail lists.

Features by name repeat every name in every row, so a 1,000-row body by name is about
twice the bytes of the same rows as lists. Three bodies of the same rows go to one nonstop
app (the peers benchmark's model and cluster, 2 replicas behind HAProxy): lists; by
name; and lists padded with spaces to by name's size, which is decoded as lists (simdjson
skips whitespace) but carried as by name is, through the client, the kernel, HAProxy and
the replica's body reader. Padded against lists is what the extra bytes cost; by name
against padded is what decoding names costs. One `wrk -t1` at nice 10, rounds
alternating the order; medians of rows per second.

    .venv/bin/python -m benchmarks.body_size --clients 4 16 --rounds 3 --seconds 5 --out docs/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.peers.compare import BIG_ROWS, MODEL, big_body_rows, nonstop_cluster, prepare
from benchmarks.peers.servers import JSON, v1_body, v1_objects_body
from benchmarks.throughput import run_wrk
from nonstop.config import Settings
from nonstop_ops.cluster import lifecycle as local
from nonstop_ops.cluster.serve_config import load_serve_config

LISTS, NAMED, PADDED = "lists", "by name", "lists padded to by name's size"
CLIENT_NICE = 10


def bodies(rows: list[list[float]], names: list[str]) -> dict[str, bytes]:
    listed, _ = v1_body(rows)
    named, _ = v1_objects_body(names, rows)
    padded = listed[:-1] + b" " * (len(named) - len(listed)) + listed[-1:]  # whitespace before the closing brace
    return {LISTS: listed, NAMED: named, PADDED: padded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="nonstop-body-size-"))
    registry, _, samples, names = prepare(scratch)
    rows = big_body_rows(samples)
    payloads = bodies(rows, names)
    runs: dict[str, dict[int, list[float]]] = {shape: {c: [] for c in args.clients} for shape in payloads}
    errors = 0
    cluster = nonstop_cluster()
    load = os.getloadavg()[0]
    with local.serving(cluster, Settings(registry=registry.uri), load_serve_config(), MODEL):
        url = f"{cluster.http_url}/v1/models/{MODEL}:predict"
        run_wrk(url, (payloads[LISTS], JSON), 4, 3, nice=CLIENT_NICE)  # warm-up
        for r in range(args.rounds):
            for shape in payloads if r % 2 == 0 else reversed(payloads):
                for clients in args.clients:
                    result = run_wrk(url, (payloads[shape], JSON), clients, args.seconds, nice=CLIENT_NICE)
                    runs[shape][clients].append(result["rps"] * BIG_ROWS)
                    errors += result["errors"]
                    print(f"round {r + 1} {shape} c={clients}: {runs[shape][clients][-1]:,.0f} rows/s", flush=True)
    summary = {shape: {c: statistics.median(v) for c, v in levels.items()} for shape, levels in runs.items()}
    lines = [
        "# A 1,000-row body's bytes apart from its decoding",
        "",
        f"Taken {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, 1-minute load average {load:.1f} at the "
        f"start; wrk -t1 at nice {CLIENT_NICE}, {args.seconds:g} s per run, medians of {args.rounds} rounds "
        f"(`python -m benchmarks.body_size --clients {' '.join(map(str, args.clients))} --rounds {args.rounds} "
        f"--seconds {args.seconds:g}`); {errors} errors. The same {BIG_ROWS:,} rows of {len(names)} features in each body.",
        "",
        "| body | bytes | " + " | ".join(f"c={c} rows/s" for c in args.clients) + " | " + " | ".join(f"c={c} of lists" for c in args.clients) + " |",
        "|---|---:|" + "---:|" * (2 * len(args.clients)),
    ]
    for shape, payload in payloads.items():
        rates = " | ".join(f"{summary[shape][c]:,.0f}" for c in args.clients)
        shares = " | ".join(f"{summary[shape][c] / summary[LISTS][c]:.0%}" for c in args.clients)
        lines.append(f"| {shape} | {len(payload):,} | {rates} | {shares} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "body-size.json").write_text(json.dumps({"runs": runs, "summary": summary, "errors": errors, "load_avg": load}, indent=1))
    (args.out / "body-size.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
