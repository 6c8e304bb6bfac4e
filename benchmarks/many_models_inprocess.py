"""Many models in one replica's process, without Ray: cold loads, eviction, the hot set.

One `ModelSet` (serve_app/replica/models.py) behind the real data plane and ASGI app, its
holders loading in a thread of this process (no loader actor), over a registry of N
small published models, with a budget of M models. Requests go in process (httpx over
ASGI), so the figures are the replica's own work, not HAProxy's nor Ray's:

1. every model touched, in random order, several passes: each request's latency, split
   into those that found their model held and those that loaded it (cold); the process's
   resident memory and the budget's estimated bytes after each pass;
2. a hot set of H models under C concurrent clients against one model under the same
   clients: requests per second of each, and their ratio.

The cluster benchmark of issue 25 (200 models on 2 replicas behind HAProxy, a nightly
retrain under load) is not this one; docs/many-models.md says so.

    .venv/bin/python -m benchmarks.many_models_inprocess --out docs/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from nonstop.loading import TrustPolicy
from nonstop.registry import Registry
from serve_app.config import parse_user_config
from serve_app.replica.dataplane import DataPlane
from serve_app.replica.holder import ModelHolder
from serve_app.replica.models import Canaries, ModelSet
from serve_app.rest.api import create_api
from serve_app.rollout.canary import Canary
from serve_app.wire.limits import Limits
from harness.small_models import ROW, publish_small

BODY = json.dumps({"instances": [ROW]}).encode()


def _models(registry: Registry) -> ModelSet:
    def make() -> tuple[ModelHolder, Canary]:
        holder = ModelHolder(registry, TrustPolicy())
        canary = Canary(registry, holder.hold_candidate, lambda model, alias, tallies: None)
        holder.follow(canary.sync)
        return holder, canary

    return ModelSet(make, registry.models)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def _post(client: httpx.AsyncClient, model: str) -> float:
    started = time.perf_counter()
    response = await client.post(f"/v1/models/{model}:predict", content=BODY, headers={"content-type": "application/json"})
    if response.status_code != 200 or response.headers["x-model-name"] != model:
        raise RuntimeError(f"{model}: {response.status_code} {response.text[:200]}")
    return time.perf_counter() - started


async def _rate(client: httpx.AsyncClient, names: list[str], clients: int, seconds: float) -> float:
    deadline = time.monotonic() + seconds
    done = 0

    async def worker(index: int) -> None:
        nonlocal done
        turn = index
        while time.monotonic() < deadline:
            await _post(client, names[turn % len(names)])
            turn += clients
            done += 1

    await asyncio.gather(*(worker(i) for i in range(clients)))
    return done / seconds


async def run(models_n: int, budget: int, hot: int, passes: int, clients: list[int], seconds: float, root: Path) -> dict[str, Any]:
    registry = Registry(str(root))
    names = [f"m{i:03d}" for i in range(models_n)]
    started = time.perf_counter()
    for index, name in enumerate(names):
        publish_small(registry, name, index)
    publish_s = time.perf_counter() - started
    models = _models(registry)
    config = {"models": [{"model": n, "poll_interval_s": 3600} for n in names], "budget": {"max_models": budget, "load_wait_s": 60}}
    await models.configure(parse_user_config(config))
    api = create_api(DataPlane(models, canary=Canaries(models)), Limits())
    process = psutil.Process()
    rng = random.Random(0)
    result: dict[str, Any] = {"models": models_n, "budget_models": budget, "publish_s": publish_s, "passes": []}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://bench") as client:
        rss_start = process.memory_info().rss
        for _ in range(passes):
            order = names[:]
            rng.shuffle(order)
            hit, cold = [], []
            for name in order:
                held = name in models._held
                (hit if held else cold).append(await _post(client, name))
            result["passes"].append({
                "hit_p50_ms": _pct(hit, 50) * 1e3, "cold_p50_ms": _pct(cold, 50) * 1e3, "cold_p99_ms": _pct(cold, 99) * 1e3,
                "cold": len(cold), "hit": len(hit), "held": len(models._held), "held_bytes_est": models.held_bytes(),
                "rss_growth_mb": (process.memory_info().rss - rss_start) / 2**20,
            })  # fmt: skip
        hot_names = names[:hot]
        for name in hot_names:
            await _post(client, name)  # warm
        result["throughput"] = []
        for count in clients:
            one = await _rate(client, names[:1], count, seconds)
            many = await _rate(client, hot_names, count, seconds)
            result["throughput"].append({"clients": count, "one_model_rps": one, "hot_set_rps": many, "ratio": many / one})
    await models.close()
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        "# Many models in one replica's process",
        "",
        f"{result['models']} small models (logistic regression on 3 features), a budget of {result['budget_models']} "
        f"models, in process (no Ray, no HAProxy): `benchmarks/many_models_inprocess.py`, {result['machine']}.",
        "",
        "| pass | cold loads | cold p50 ms | cold p99 ms | hits | hit p50 ms | held | held bytes (est.) | RSS growth MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for index, p in enumerate(result["passes"], 1):
        lines.append(
            f"| {index} | {p['cold']} | {p['cold_p50_ms']:.1f} | {p['cold_p99_ms']:.1f} | {p['hit']} | {p['hit_p50_ms']:.1f} "
            f"| {p['held']} | {p['held_bytes_est']} | {p['rss_growth_mb']:.1f} |"
        )
    lines += ["", f"| clients | one model req/s | hot set of {result['hot']} req/s | ratio |", "|---|---|---|---|"]
    for t in result["throughput"]:
        lines.append(f"| {t['clients']} | {t['one_model_rps']:.0f} | {t['hot_set_rps']:.0f} | {t['ratio']:.0%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--hot", type=int, default=20)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args.models, args.budget, args.hot, args.passes, args.clients, args.seconds, Path(tmp) / "registry"))
    result["hot"] = args.hot
    result["machine"] = f"{psutil.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"
    text = report(result)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "many-models-inprocess.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "many-models-inprocess.md").write_text(text)


if __name__ == "__main__":
    main()
