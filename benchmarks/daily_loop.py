"""The daily loop end to end, over several simulated days, on a real local stack.

Each "day" (seconds here, not hours) does what a business retraining daily does, in order:
1. yesterday's outcomes arrive: the labels of every request answered yesterday are posted
   to the outcomes route (the load held them back all day);
2. yesterday is judged: live quality per version and role on yesterday's labelled captures;
3. a candidate is trained on the captured traffic joined with its outcomes
   (`capture://MODEL`: what was served trains the next version); the first day, with
   nothing captured yet, on the data files; on `--bad-day`, on shuffled labels;
4. the candidate is replayed on yesterday's captured traffic (`nonstop replay`), its
   evidence written to the ledger;
5. the rollout starts only on a passing replay (the policy's `require_replay`); then a
   canary under the day's traffic, judged by the controller, promoted or rolled back;
   the day's traffic runs either way, captured, its labels held for tomorrow.

Day d's traffic is the demo data of day 2 + d (it drifts a little every day; the first
candidate and production were trained on days 0-2). Writes a table of the days and a chart of live quality per version per day with the
decisions marked:

    flock /tmp/nonstop-ray.lock .venv/bin/python -m benchmarks.daily_loop --out docs/results
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.canary import run_rollout  # noqa: E402
from harness.labelled import LabelledLoad  # noqa: E402
from nonstop.batch.replay import ReplayOptions, replay  # noqa: E402
from nonstop.capture import CaptureConfig, filesystem, root_of  # noqa: E402
from nonstop.config import Settings  # noqa: E402
from nonstop.errors import ConfigError  # noqa: E402
from nonstop.outcomes import labelled  # noqa: E402
from nonstop.quality import class_orders, live_quality  # noqa: E402
from nonstop.registry import Registry  # noqa: E402
from nonstop_ops.cluster import lifecycle as local  # noqa: E402
from nonstop_ops.cluster.serve_config import deployment_config, load_serve_config  # noqa: E402
from serve_app.rollout.moves import Rollouts  # noqa: E402
from serve_app.rollout.policy import Policy  # noqa: E402
from serve_app.rollout.replay_check import ReplayRequirement  # noqa: E402
from training import demo  # noqa: E402
from training.job import TrainOptions, train  # noqa: E402

MODEL = "breast_cancer"
CLUSTER = local.LocalCluster.isolated(31000, "nonstop-daily-loop")
OUTCOMES_PER_POST = 10_000  # the route's bound
# Rows of a day's traffic, each sent once (more than a day's requests): training refuses
# data whose rows repeat, as a partition loaded twice would
TRAFFIC_ROWS = 60_000


def post_outcomes(url: str, pairs: list[tuple[str, int]]) -> int:
    """Yesterday's labels, in batches the route takes."""
    posted = 0
    with httpx.Client(timeout=60) as client:
        for start in range(0, len(pairs), OUTCOMES_PER_POST):
            chunk = pairs[start : start + OUTCOMES_PER_POST]
            answer = client.post(url, json={"outcomes": [{"request_id": rid, "label": label} for rid, label in chunk]})
            answer.raise_for_status()
            posted += len(chunk)
    return posted


def quality_since(registry: Registry, since: datetime) -> list[dict[str, Any]]:
    """What `nonstop quality --since` prints: per version and role, on the labelled captures."""
    fs, path = filesystem(root_of(registry.uri, CaptureConfig()))
    found = labelled(fs, path, MODEL, since)
    manifest = registry.manifest(MODEL, registry.resolve(MODEL, "production") or 1)
    lines = live_quality(found.frame, manifest.task, classes=class_orders(found.frame, partial(registry.manifest, MODEL)), captured=found.captured)
    return [line.model_dump(mode="json") for line in lines]


def candidate_for(registry: Registry, day: int, bad_day: int, work: Path) -> tuple[int, str]:
    if day == bad_day:
        frame = demo.day_frame(100 + day)
        frame["target"] = np.random.default_rng(day).permutation(frame["target"].to_numpy())
        path = work / f"shuffled-{day}.parquet"
        frame.to_parquet(path, index=False)
        return train(TrainOptions(data=str(path), model=MODEL), registry).manifest.version, "shuffled labels"
    if day == 1:
        return train(TrainOptions(data=str(work / "data"), model=MODEL), registry).manifest.version, "the data files"
    version = train(TrainOptions(data=f"capture://{MODEL}", model=MODEL), registry).manifest.version
    return version, "captured traffic joined with its outcomes"


def run_day(registry: Registry, day: int, args: argparse.Namespace, work: Path, held: list[tuple[str, int]], yesterday: datetime | None,
            policy: Policy) -> tuple[dict[str, Any], list[tuple[str, int]], datetime]:  # fmt: skip
    outcomes_url = f"{CLUSTER.http_url}/v1/models/{MODEL}/outcomes"
    record: dict[str, Any] = {"day": day, "production_before": registry.resolve(MODEL, "production")}
    if held:
        record["outcomes_posted"] = post_outcomes(outcomes_url, held)
        time.sleep(args.flush_s)  # the replicas write what they buffered
        record["yesterday_quality"] = quality_since(registry, yesterday) if yesterday else []
    candidate, source = candidate_for(registry, day, args.bad_day, work)
    record.update(candidate=candidate, trained_on=source)
    if yesterday is not None:
        report = replay(ReplayOptions(model=MODEL, candidate=candidate, since=yesterday, actor="daily loop"), Settings(registry=registry.uri))
        record["replay"] = report.comparison.model_dump(mode="json")
    started = datetime.now(UTC)
    features = registry.manifest(MODEL, candidate).feature_names
    traffic = demo.day_frame(2 + day, TRAFFIC_ROWS)

    def day_load(sent: int = 0) -> LabelledLoad:
        """The day's rows from `sent` on, each request id new: a row is sent once a day."""
        rows = traffic.iloc[sent:]
        load = LabelledLoad.of(f"{CLUSTER.http_url}/v1/models/{MODEL}:predict", outcomes_url, rows, features, f"day{day}-{sent}", hold=True)
        load.concurrency, load.max_seconds = args.concurrency, 3600
        return load

    load = day_load()
    held_before: list[tuple[str, int]] = []
    rollouts = Rollouts(registry, MODEL, "production")
    try:
        run = run_rollout(registry, MODEL, candidate, policy, load, settle_s=args.traffic_s / 2, timeout_s=600,
                          trigger=lambda: rollouts.start(candidate, policy, actor="daily loop"))  # fmt: skip
        record.update(decision=run.outcome.action, reason=run.outcome.reason, failed=len(run.failed), requests=len(run.answers))
    except ConfigError as exc:  # the replay did not pass: never exposed; the day's traffic runs all the same
        first, held_before = load, list(load.held)
        load = day_load(len(first.answers))
        with load:
            time.sleep(args.traffic_s)
        answers = first.answers + load.answers
        failed = sum(1 for a in answers if not 200 <= a.status < 300)
        record.update(decision="not started", reason=exc.message, failed=failed, requests=len(answers))
    record["production_after"] = registry.resolve(MODEL, "production")
    return record, held_before + list(load.held), started


def chart(days: list[dict[str, Any]], last: dict[str, Any], path: Path) -> None:
    """Live accuracy per version on each day's traffic (primary and candidate answers
    together, weighted by labelled rows), measured when that day's labels arrived; each
    day's rollout marked on its day."""
    fig, ax = plt.subplots(figsize=(8, 4))
    points: dict[int, dict[int, tuple[float, int]]] = {}
    for entry in [*days, last]:
        for line in entry.get("yesterday_quality", []):
            accuracy, rows = line["metrics"].get("accuracy"), line["labelled"]
            if accuracy is None or line["role"] == "shadow" or not rows:
                continue
            total, count = points.setdefault(line["version"], {}).get(entry["day"] - 1, (0.0, 0))
            points[line["version"]][entry["day"] - 1] = (total + accuracy * rows, count + rows)
    for version, by_day in sorted(points.items()):
        xs = sorted(by_day)
        ax.plot(xs, [by_day[x][0] / by_day[x][1] for x in xs], marker="o", label=f"v{version}")
    top = ax.get_ylim()[1]
    for entry in days:
        ax.axvline(entry["day"], color="lightgrey", linewidth=0.8, linestyle=":")
        ax.annotate(f"v{entry['candidate']}: {entry['decision']}", (entry["day"] + 0.03, top), fontsize=7, rotation=90, va="top")
    ax.set_xticks([entry["day"] for entry in days])
    ax.set_xlabel("day of traffic")
    ax.set_ylabel("live accuracy (labels a day later)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(days: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# The daily loop, end to end (benchmarks/daily_loop.py)",
        "",
        f"{len(days)} simulated days of {args.traffic_s:.0f} s of traffic at {args.concurrency} clients on one local Ray "
        "node; outcomes posted the next day; the candidate trained on the captured traffic joined with its outcomes; "
        f"a shuffled-label candidate on day {args.bad_day}. Raw: `daily-loop.json`.",
        "",
        "| day | production | candidate (trained on) | replay of yesterday: agreement | labelled accuracy, production → candidate "
        "| decision | requests | failed | production after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in days:
        replayed = d.get("replay") or {}
        before, after = (replayed.get(k, {}).get("accuracy") for k in ("baseline_metrics", "candidate_metrics"))
        acc = f"{before:.3f} → {after:.3f} ({replayed['labelled']} rows)" if before is not None and after is not None else ""
        agreement = f"{replayed['agreement']:.1%}" if replayed.get("agreement") is not None else "(nothing captured yet)"
        lines.append(
            f"| {d['day']} | v{d['production_before']} | v{d['candidate']} ({d['trained_on']}) | {agreement} | {acc} "
            f"| {d['decision']}: {d['reason'][:120]} | {d['requests']} | {d['failed']} | v{d['production_after']} |"
        )
    lines += ["", "Live quality per version, on the day its labels arrived for:", "", "![daily loop](daily-loop.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/daily_loop"))
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--bad-day", type=int, default=3)
    parser.add_argument("--traffic-s", type=float, default=20.0, help="seconds of traffic per day")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--window", type=float, default=5.0, help="the canary's evaluation window per step, seconds")
    parser.add_argument("--flush-s", type=float, default=3.0, help="wait after posting outcomes, for the replicas' writes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nonstop-daily-loop-"))
    demo.write_days(work / "data", 3)
    registry = Registry(str(work / "registry"))
    train(TrainOptions(data=str(work / "data"), model=MODEL, promote=True), registry)
    policy = Policy(
        steps=(0.25, 1.0), window_s=args.window, min_requests=50,
        require_replay=ReplayRequirement(max_age_h=1.0, min_rows=100, min_agreement=0.9),
    )  # fmt: skip
    first_day_policy = policy.model_copy(update={"require_replay": None})  # nothing captured to replay yet
    config = load_serve_config()
    deployment_config(config)["user_config"]["poll_interval_s"] = 0.5
    local.stop(CLUSTER)
    local.start(CLUSTER, Settings(registry=registry.uri))
    days: list[dict[str, Any]] = []
    try:
        local.deploy(CLUSTER, config)
        local.wait_ready(CLUSTER, MODEL)
        CLUSTER.use()
        import ray

        ray.init(address=CLUSTER.address, logging_level="ERROR", log_to_driver=False)
        held: list[tuple[str, int]] = []
        yesterday: datetime | None = None
        for day in range(1, args.days + 1):
            record, held, yesterday = run_day(registry, day, args, work, held, yesterday, first_day_policy if day == 1 else policy)
            days.append(record)
            print(json.dumps(record)[:400], flush=True)
        record = {"day": args.days + 1, "production_before": registry.resolve(MODEL, "production")}
        record["outcomes_posted"] = post_outcomes(f"{CLUSTER.http_url}/v1/models/{MODEL}/outcomes", held)
        time.sleep(args.flush_s)
        record["yesterday_quality"] = quality_since(registry, yesterday) if yesterday else []
        tail = record
    finally:
        import ray

        ray.shutdown()  # before the cluster goes: a driver whose GCS vanished aborts the process
        local.stop(CLUSTER)
    (args.out / "daily-loop.json").write_text(json.dumps({"days": days, "last_outcomes": tail}, indent=2, default=str) + "\n")
    chart(days, tail, args.out / "daily-loop.png")
    (args.out / "daily-loop.md").write_text(report(days, args))
    print(report(days, args))


if __name__ == "__main__":
    main()
