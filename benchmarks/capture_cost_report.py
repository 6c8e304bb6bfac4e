"""The pure half of benchmarks/capture_cost.py: the run's schedule, the cost of capture
against capture off, and the report, apart from anything that starts Ray so that a unit
test can hold them (tests/unit/benchmarks/test_capture_cost.py).

Cost is the share of capture-off throughput lost with capture on, at the same number of
clients, from the median over rounds of each: positive is slower, negative (noise on a
shared machine) faster. The CPU cost is the same share of the replicas' CPU per request
answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One capture configuration of the run, and the most throughput it may cost (issue 21)."""

    name: str
    enabled: bool
    sample_rate: float = 1.0
    goal_pct: float | None = None  # None: the baseline
    unwritable: bool = False  # a destination nothing can be written to: every row dropped


OFF = Setting("off", enabled=False)
FULL = Setting("100%", True, 1.0, goal_pct=10.0)
# serving must go on as if capture were off: its goal is the one of capture that works
UNWRITABLE = Setting("100%, unwritable", True, 1.0, goal_pct=10.0, unwritable=True)
SETTINGS = (OFF, Setting("1%", True, 0.01, goal_pct=2.0), FULL, UNWRITABLE)
BY_NAME = {s.name: s for s in SETTINGS}
LEVELS = (16, 64)


def schedule(rounds: int, settings: tuple[Setting, ...] = SETTINGS, levels: tuple[int, ...] = LEVELS) -> list[tuple[int, Setting, tuple[int, ...]]]:
    """(round, setting, client levels in order) for every phase. The settings run in
    reverse order every other round, and the levels every other phase, so that load that
    grows or fades on a shared machine does not fall on one setting or one level."""
    phases = []
    for round_ in range(rounds):
        ordered = settings if round_ % 2 == 0 else tuple(reversed(settings))
        for setting in ordered:
            phases.append((round_, setting, levels if len(phases) % 2 == 0 else tuple(reversed(levels))))
    return phases


def cost_pct(off_rps: float, on_rps: float) -> float:
    """Throughput lost to capture, in % of capture off's (negative: on was faster)."""
    if off_rps <= 0:
        raise ValueError(f"capture off answered {off_rps} req/s: no baseline to compare with")
    return (off_rps - on_rps) / off_rps * 100.0


def medians(runs: list[dict[str, Any]], clients: int) -> dict[str, float]:
    """req/s, p50, p99 and the replicas' CPU per request (when every round has it) at
    `clients`: the median of the rounds, each figure on its own."""
    level = [r for r in runs if r["clients"] == clients]
    if not level:
        raise ValueError(f"no run at {clients} clients")
    keys = ["rps", "p50_ms", "p99_ms", "errors"]
    if all(r.get("replica_cpu_us") is not None for r in level):
        keys.append("replica_cpu_us")
    return {key: float(median(r[key] for r in level)) for key in keys}


def spread(runs: list[dict[str, Any]], clients: int, key: str) -> str:
    """The lowest and highest of one figure over the rounds at `clients`."""
    values = [r[key] for r in runs if r["clients"] == clients and r.get(key) is not None]
    return f"{min(values):,.0f}-{max(values):,.0f}" if values else "n/a"


def verdict(setting: Setting, cost: float) -> str:
    if setting.goal_pct is None:
        return ""
    return f"≤ {setting.goal_pct:g} %: {'met' if cost <= setting.goal_pct else 'NOT met'}"


def _load(results: dict[str, Any]) -> str:
    loads = [r["load_1m"] for s in results["settings"].values() for r in s["runs"]]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "n/a"


def report(results: dict[str, Any]) -> str:
    """The Markdown report; its first line is a title the docs page leaves out when it includes it."""
    off = results["settings"][OFF.name]["runs"]
    lines = [
        "# The cost of capture (benchmarks/capture_cost.py)",
        "",
        f"Machine: {results['machine']}; Ray {results['ray']}; taken {results['date']} with `{results['command']}`. "
        f"1-minute load average {results['load_start']:.1f} at the start, {_load(results)} before the runs, "
        f"{results['load_end']:.1f} at the end (a shared 2-core machine: other work ran beside the benchmark, so the "
        "figures are indicative and the costs carry that noise). "
        f"The demo model on {results['replicas']} replicas behind HAProxy (replicas held at the autoscaler's floor), "
        f"one-row V1 JSON requests from {results['client']}, {results['seconds']:g} s per level, {results['rounds']} "
        "round(s), the settings in reverse order every other round and the client levels every other phase; each "
        "setting a redeploy of the Serve config (capture applied in place by every replica). Medians over rounds. "
        "Raw: `capture-cost.json`.",
        "",
        "| capture | clients | req/s | cost vs off | p50 ms | p99 ms | p99 vs off | errors | goal | replicas' CPU µs per request "
        "| CPU cost vs off | goal, on CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for name, data in results["settings"].items():
        for clients in LEVELS:
            base, got = medians(off, clients), medians(data["runs"], clients)
            cost = cost_pct(base["rps"], got["rps"])
            same = name == OFF.name
            cost_cell = "" if same else f"{cost:+.1f} %"
            p99_cell = "" if same else f"×{got['p99_ms'] / base['p99_ms']:.2f}"
            cpu_cells = "| n/a | | |"
            if "replica_cpu_us" in got and "replica_cpu_us" in base:
                cpu_cost = (got["replica_cpu_us"] - base["replica_cpu_us"]) / base["replica_cpu_us"] * 100.0
                cpu_cells = (f"| {got['replica_cpu_us']:.0f} | | |" if same else
                             f"| {got['replica_cpu_us']:.0f} | {cpu_cost:+.1f} % | {verdict(BY_NAME[name], cpu_cost)} |")  # fmt: skip
            lines.append(
                f"| {name} | {clients} | {got['rps']:,.0f} | {cost_cell} | {got['p50_ms']:.2f} | {got['p99_ms']:.2f} "
                f"| {p99_cell} | {got['errors']:.0f} | {verdict(BY_NAME[name], cost)} {cpu_cells}"
            )
    lines += [
        "",
        "How far rounds of one setting differ, capture off: "
        + "; ".join(f"{c} clients {spread(off, c, 'rps')} req/s and {spread(off, c, 'replica_cpu_us')} CPU µs per request" for c in LEVELS)
        + ". The replicas' CPU is sampled once a second (benchmarks/cpu_share.py) over each run; per request it is "
        "that CPU over the requests answered.",
        "",
        "",
        "| capture | responses the client counted (warm-ups included) | records in the store | share written | "
        "written, by the replicas' counters | rows dropped |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, data in results["settings"].items():
        answered, written = data["answered"], data["written"]
        share = f"{written / answered:.2%}" if answered else "n/a"
        lines.append(f"| {name} | {answered:,} | {written:,} | {share} | {data['written_by_replicas']:,} | {data['dropped']:,} |")
    replay, inproc = results["replay"], results["in_process"]
    lines += [
        "",
        "The client counts the responses it read before each run's end; the requests still in flight then are answered "
        "and captured too, which is how more can be written than counted.",
        "",
        f"Replay of the day captured at 100 % ({replay['rows']:,} rows, candidate v{replay['candidate']} against what "
        f"production answered: agreement {replay['agreement']:.4f}, {replay['rejected']} rejected), on the serving "
        "cluster beside its idle replicas (which hold its CPUs, so the replay's actor and tasks reserve none), against "
        "the same rows predicted in this process:",
        "",
        "| run | rows/s | vs in-process `predict` | seconds |",
        "|---|---:|---:|---:|",
        f"| in-process `predict`, the rows as a matrix in memory | {inproc['predict_rows_per_s']:,.0f} | 100 % | "
        f"{inproc['predict_seconds']:.2f} |",
        f"| in-process check and score (BatchScorer), no Ray | {inproc['pipeline_rows_per_s']:,.0f} | "
        f"{inproc['pipeline_rows_per_s'] / inproc['predict_rows_per_s']:.1%} | {inproc['pipeline_seconds']:.2f} |",
        f"| reading the captures and joining the outcomes, in this process | {replay['rows'] / replay['read_seconds']:,.0f} | "
        f"{replay['rows'] / replay['read_seconds'] / inproc['predict_rows_per_s']:.1%} | {replay['read_seconds']:.2f} |",
        f"| `nonstop replay` (library call), end to end: read, score on Ray, write, compare, ledger entry | "
        f"{replay['rows_per_s']:,.0f} | {replay['rows_per_s'] / inproc['predict_rows_per_s']:.1%} | {replay['seconds']:.2f} |",
        "",
    ]
    return "\n".join(lines)
