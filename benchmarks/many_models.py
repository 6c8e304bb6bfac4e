"""200 small models behind one application on 2 replicas, measured from outside (issue 25).

A fresh registry of N small published models (harness/small_models.py), a local Ray
cluster of its own (ports 38xxx), the app deployed with a selector over every model
(`select: {pattern: "m*"}`) on 2 fixed replicas with a budget of about B models per
replica (a count, and the same in estimated bytes), HTTP on 127.0.0.1. Then, in one run:

a. one model at C clients (wrk, one thread, niced so the replicas get the CPU first):
   requests per second, p50, p99;
b. a hot set of H models at the same clients, every replica holding all of them, its
   models' paths taken in turn: the same, and its ratio to (a); (a) and (b) alternate,
   `--rounds` times per level;
c. P passes over all N models in a new random order each (each model once per pass, S
   clients): cold loads read from the replicas' own per-model lines (`ReplicaStatus.models`:
   the load's time on the replica) and as the client saw them (the latency of the one
   request that found its model not held), 503s with Retry-After, and every replica's
   resident memory, sampled every second over the whole run, against the budget plus a
   stated overhead;
d. a nightly retrain: a new version of all N models published and promoted, by R
   publisher processes, while a load runs round all N; failed requests (anything but a
   2xx and a 503 with Retry-After, which are counted apart), answers naming another
   model, and then one pass checking every model answers with its new version.

Writes many-models.json and many-models.md to --out. Starts Ray: run it under the
machine's Ray lock.

    flock /tmp/nonstop-ray.lock .venv/bin/python -m benchmarks.many_models --out docs/results
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import ray

from benchmarks.many_models_report import report
from benchmarks.throughput import run_wrk
from harness.many_models import (
    BODY, BackgroundDrive, RssSampler, cold_loads, drive, memory_verdict, percentile_ms, predict_path, tally,
)  # fmt: skip
from harness.publish_many import publish_in_parallel
from harness.rollout import wait_until
from nonstop.config import Settings
from nonstop.loading import TrustPolicy, load_version
from nonstop.registry import Registry
from nonstop_ops.cluster import lifecycle as local
from nonstop_ops.cluster.serve_config import deployment_config, load_serve_config
from serve_app.replica.models import estimate_bytes
from serve_app.replica.status_board import read_board

REPLICAS = 2
LOADER = "ray::ModelLoader"


def serve_config(budget_models: int, budget_bytes: int, poll_s: float, load_wait_s: float) -> dict[str, Any]:
    """The packaged config, on REPLICAS fixed replicas (no autoscaler: the budget is per
    replica, and a third replica would change what is measured), serving every model."""
    config = copy.deepcopy(load_serve_config())
    deployment = deployment_config(config)
    deployment.pop("autoscaling_config", None)
    deployment["num_replicas"] = REPLICAS
    deployment["user_config"] = {
        "select": {"pattern": "m*", "alias": "production", "poll_interval_s": poll_s, "refresh_s": 30},
        "budget": {"max_models": budget_models, "max_bytes": budget_bytes, "load_wait_s": load_wait_s, "max_concurrent_loads": 2},
    }
    return config


def replica_pids(cluster: local.LocalCluster) -> dict[str, int]:
    app = local.app_status(cluster)["applications"]["nonstop"]
    return {r["replica_id"]: r["pid"] for d in app["deployments"].values() for r in d["replicas"] if r["state"] == "RUNNING"}


def loader_pids(cluster: local.LocalCluster) -> list[int]:
    """Each replica's loader actor (serve_app/replica/loader_actor.py): it holds no model,
    so its memory should stay flat; shown beside the replicas'."""
    found = []
    for pid in local.cluster_pids(cluster):
        try:
            cmdline = psutil.Process(pid).cmdline()
        except psutil.Error:  # a process that ended between the listing and the look
            continue
        if cmdline and cmdline[0].startswith(LOADER):
            found.append(pid)
    return sorted(found)


def model_lines() -> dict[str, dict[str, Any]]:
    """replica -> model -> {loads, load_seconds, held, hits, evictions}, from the board."""
    return {
        rid: {m.model: {"loads": m.loads, "load_seconds": m.load_seconds, "held": m.held, "hits": m.hits, "evictions": m.evictions}
              for m in status.models}
        for rid, status in read_board().items()
    }  # fmt: skip


def wait_serving(cluster: local.LocalCluster, model: str, timeout_s: float = 300) -> None:
    def ready() -> bool:
        app = local.app_status(cluster).get("applications", {}).get("nonstop", {})
        if app.get("status") == "DEPLOY_FAILED":
            raise RuntimeError(f"deployment failed: {app.get('message')}")
        if app.get("status") != "RUNNING" or len(replica_pids(cluster)) != REPLICAS:
            return False
        try:
            return httpx.post(f"{cluster.http_url}/v1/models/{model}:predict", json={"instances": [[0.5, -0.2, 1.0]]}, timeout=30).is_success
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout_s, f"{model} answering on {REPLICAS} running replicas", every_s=1.0)


def throughput(url: str, single: str, hot: list[str], levels: list[int], seconds: float, rounds: int, nice: int) -> list[dict[str, Any]]:
    """Per level, `rounds` times one model then the hot set, by wrk (one thread, at `nice`)
    with the same clients, seconds and script, the hot set's paths taken in turn:
    alternating, so that the shared machine's other work falls on both alike. wrk, not the
    Python client of the other phases, so the figures are the replicas' and not the client's."""
    asyncio.run(drive(url, hot * 10, concurrency=8, once=True))  # every hot model on every replica
    asyncio.run(drive(url, [single], concurrency=8, seconds=2))  # warm-up
    payload = (BODY, "application/json")
    rows = []
    for clients in levels:
        ones: list[dict[str, Any]] = []
        manys: list[dict[str, Any]] = []
        for _ in range(rounds):
            ones.append(run_wrk(url, payload, clients, seconds, nice=nice, paths=[predict_path(single)]))
            manys.append(run_wrk(url, payload, clients, seconds, nice=nice, paths=[predict_path(m) for m in hot]))
        one, many = _runs(ones), _runs(manys)
        rows.append({
            "clients": clients, "one": one, "hot": many, "ratio": many["rps"] / one["rps"] if one["rps"] else None,
            "round_ratios": [m["rps"] / o["rps"] if o["rps"] else None for o, m in zip(ones, manys, strict=True)],
        })  # fmt: skip
    return rows


def _runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """wrk's rounds together: requests per second over all of them, the median round's
    p50 and p99, and every non-2xx or socket error."""
    return {
        "rps": sum(r["rps"] for r in runs) / len(runs),
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "client": "wrk",
    }


def sweep(url: str, names: list[str], passes: int, clients: int, sampler: RssSampler, rss_labels: list[str]) -> list[dict[str, Any]]:
    """Each pass touches every model once; the board read before and after tells which
    of them loaded (a model touched once loads at most once), and how long it took."""
    rng = random.Random(25)
    rows = []
    for index in range(passes):
        order = names[:]
        rng.shuffle(order)
        before = model_lines()
        started = time.time()
        answers = asyncio.run(drive(url, order, concurrency=clients, once=True))
        seconds = time.time() - started
        time.sleep(1.0)  # the replicas post their lines on every load and eviction; let the last land
        loaded = cold_loads(before, model_lines())
        cold = [a.latency_s for a in answers if a.outcome == "ok" and a.model in loaded]
        hit = [a.latency_s for a in answers if a.outcome == "ok" and a.model not in loaded]
        server = [s for s in loaded.values() if s is not None]
        rows.append({
            "pass": index + 1, "seconds": seconds, **tally(answers), "cold": len(cold), "hit": len(hit),
            "client_cold_ms": cold_ms(cold), "client_hit_p50_ms": percentile_ms(hit, 50), "replica_load_ms": cold_ms(server),
            "cold_client_s": cold, "replica_load_s": server,
            "rss_mb": {label: (sampler.last(label) or 0) / 2**20 for label in rss_labels},
        })  # fmt: skip
    return rows


def cold_ms(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile_ms(values, 50), "p99": percentile_ms(values, 99), "max": percentile_ms(values, 100)}


def retrain(url: str, registry: str, names: list[str], clients: int, publishers: int, nice: int, poll_s: float) -> dict[str, Any]:
    """A new version of every model, published and promoted under a load round all of
    them; then each model once, to see the new version answer everywhere it is asked."""
    order = names[:]
    random.Random(7).shuffle(order)
    load = BackgroundDrive(url, order, clients).start()
    time.sleep(3.0)  # the load under way before the first promotion
    started = time.time()
    try:
        published = publish_in_parallel(registry, names, 1000, publishers, nice)
    finally:
        done = time.time()
        time.sleep(poll_s * 2 + 3.0)  # held models' pollers find their new versions
        answers = load.stop()
    newest = {line["model"]: str(line["version"]) for line in published}
    after = asyncio.run(drive(url, names, concurrency=8, once=True))
    stale = sorted(a.model for a in after if a.outcome == "ok" and a.version != newest.get(a.model))
    during = [a for a in answers if started <= a.sent_at <= done]
    return {
        "publish_s": done - started, "published": len(published), "load": tally(answers), "during_publish": tally(during),
        "check": {**tally(after), "stale": stale[:20], "stale_count": len(stale)},
        "retry_after_reasons": sorted({(a.detail or "")[:120] for a in answers if a.outcome == "retry_after"})[:5],
    }  # fmt: skip


def prepare(folder: Path | None, names: list[str], publishers: int) -> tuple[Registry, float]:
    """The registry of `names`, each with one version in production, and how long
    publishing them took. A folder published by an earlier `--publish-only` (and nothing
    since) is used as it is: the models can be published before taking the Ray lock."""
    root = folder if folder is not None else Path(tempfile.mkdtemp(prefix="nonstop-many-")) / "registry"
    registry = Registry(str(root))
    root.parent.mkdir(parents=True, exist_ok=True)
    record = root.parent / f"{root.name}.published.json"
    if folder is not None and record.exists():
        done = json.loads(record.read_text())
        if done["models"] == names and all(registry.versions(n) == [1] for n in names):
            return registry, float(done["seconds"])
        raise RuntimeError(f"{root} is not the fresh registry of {len(names)} models --publish-only wrote; use a new folder")
    began = time.time()
    publish_in_parallel(registry.uri, names, 0, publishers)
    seconds = time.time() - began
    record.write_text(json.dumps({"models": names, "seconds": seconds}))
    return registry, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--budget-models", type=int, default=50, help="models held per replica at most")
    parser.add_argument("--hot", type=int, default=20)
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput level")
    parser.add_argument("--rounds", type=int, default=3, help="one model, then the hot set, this many times per level")
    parser.add_argument("--client-nice", type=int, default=10, help="wrk's niceness in the throughput phase (10: the replicas get the CPU first)")
    parser.add_argument("--passes", type=int, default=12, help="sweeps over all models")
    parser.add_argument("--sweep-clients", type=int, default=16)
    parser.add_argument("--retrain-clients", type=int, default=8)
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes, initial and nightly")
    parser.add_argument("--publisher-nice", type=int, default=10, help="the nightly publishers' niceness: a batch job beside serving")
    parser.add_argument("--poll", type=float, default=5.0, help="each held model's alias poll, seconds")
    parser.add_argument("--load-wait", type=float, default=10.0, help="budget.load_wait_s")
    parser.add_argument("--overhead-mb", type=float, default=64.0, help="stated memory overhead per replica above budget")
    parser.add_argument("--port-base", type=int, default=int(os.environ.get("NONSTOP_MANY_PORT_BASE", "25000")))
    parser.add_argument("--registry", type=Path, default=None, help="publish into this fresh folder (default: a temporary one)")
    parser.add_argument("--publish-only", action="store_true", help="publish the models and stop: Ray is not started")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/many-models"))
    args = parser.parse_args()
    result: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "benchmarks.many_models", *sys.argv[1:]]),
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, Ray {ray.__version__}",
        "load_average_start": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()},
    }  # fmt: skip
    names = [f"m{i:03d}" for i in range(args.models)]
    registry, result["initial_publish_s"] = prepare(args.registry, names, args.publishers)
    if args.publish_only:
        print(f"{len(names)} models published in {registry.uri}")
        return
    per_model = estimate_bytes(load_version(registry, names[0], 1, TrustPolicy()))
    budget_bytes = args.budget_models * per_model + per_model // 2  # the count binds first; the bytes hold about as many
    result["budget"] = {"max_models": args.budget_models, "max_bytes": budget_bytes, "bytes_per_model_est": per_model, "load_wait_s": args.load_wait}
    config = serve_config(args.budget_models, budget_bytes, args.poll, args.load_wait)
    cluster = local.LocalCluster.isolated(args.port_base, f"nst-{args.port_base}")
    url = cluster.http_url
    local.stop(cluster)
    local.start(cluster, Settings(registry=registry.uri))
    sampler: RssSampler | None = None
    try:
        local.deploy(cluster, config)
        wait_serving(cluster, names[0])
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        asyncio.run(drive(url, names[:1], concurrency=4, seconds=2))  # both replicas answered a first model
        pids = replica_pids(cluster)
        labels = [f"replica {i + 1}" for i in range(len(pids))]
        loaders = loader_pids(cluster)
        sampler = RssSampler({**dict(zip(labels, pids.values(), strict=True)), **{f"loader {i + 1}": p for i, p in enumerate(loaders)}}).start()
        baseline = {label: sampler.samples[0][label] for label in labels}
        result["throughput"] = throughput(url, names[0], names[: args.hot], args.clients, args.seconds, args.rounds, args.client_nice)
        result["sweep"] = sweep(url, names, args.passes, args.sweep_clients, sampler, labels)
        result["retrain"] = retrain(url, registry.uri, names, args.retrain_clients, args.publishers, args.publisher_nice, args.poll)
        sampler.stop()
        result["memory"] = {
            label: memory_verdict(baseline[label], sampler.peak(label) or 0, budget_bytes, int(args.overhead_mb * 2**20)) for label in labels
        }
        result["memory_overhead_mb"] = args.overhead_mb
        result["loaders_mb"] = {label: [(sampler.samples[0].get(label) or 0) / 2**20, (sampler.peak(label) or 0) / 2**20]
                                for label in sampler.pids if label.startswith("loader")}  # fmt: skip
        result["replicas_restarted"] = replica_pids(cluster) != pids
        result["board"] = {rid: {"held": sum(1 for m in lines.values() if m["held"]), "loads": sum(m["loads"] for m in lines.values()),
                                 "evictions": sum(m["evictions"] for m in lines.values()), "hits": sum(m["hits"] for m in lines.values())}
                           for rid, lines in model_lines().items()}  # fmt: skip
    except BaseException as exc:  # what was measured before it is kept, for the post-mortem
        result["error"] = repr(exc)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "many-models.failed.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        raise
    finally:
        if sampler is not None:
            sampler.stop()
            result["rss"] = sampler.samples
        ray.shutdown()
        local.stop(cluster)
    result["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    result["load_average_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "many-models.json").write_text(json.dumps(result, indent=1, default=str) + "\n")  # before the report: kept if it fails
    text = report(result)
    (args.out / "many-models.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
