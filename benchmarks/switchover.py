"""KubeRay's NewCluster switchover with two real local Ray clusters, in full.

    python -m benchmarks.switchover [--scenario code_upgrade|first_start|slow_probe ...]
                                    [--unfixed] [--port-base 45000] [--out docs/results/switchover.json]

Runs each scenario (harness/switchover_scenarios.py) with the settings of the
built prod overlay (kubectl kustomize kuberay/overlays/prod), or with `--unfixed` the
settings that overlay avoids (the head excluded from the serve Service, KubeRay's injected
worker probe, no drain), and prints what the clients saw. The timings are the
operator's real ones (deletion delay 60 s); the integration test runs them shortened.
Numbers from a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from nonstop.registry import Registry
from nonstop_ops.cluster import lifecycle as local
from harness.switchover import KUBERAY_WORKER_PROBE, ServiceSettings, Timing
from harness.switchover_scenarios import Stage, code_upgrade, first_start, slow_probe
from training import demo
from training.job import TrainOptions, train

REPO = Path(__file__).resolve().parents[1]
OVERLAY = REPO / "kuberay" / "overlays" / "prod"
SCENARIOS = ("code_upgrade", "first_start", "slow_probe")


def built_rayservice(overlay: Path = OVERLAY) -> dict[str, Any]:
    kubectl = os.environ.get("KUBECTL") or str(Path(sys.executable).parent / "kubectl")
    text = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=True).stdout
    (service,) = [o for o in yaml.safe_load_all(text) if o and o["kind"] == "RayService"]
    return service


def unfixed(settings: ServiceSettings) -> ServiceSettings:
    """The settings the prod overlay avoids: head excluded, KubeRay's 2 s / 1-failure probe, no drain."""
    return dataclasses.replace(settings, exclude_head=True, worker_probe=KUBERAY_WORKER_PROBE, drain_s=None)


def stage(base: int, registry: str, timing: Timing, body: dict[str, Any], config: str) -> Stage:
    clusters = (local.LocalCluster.isolated(base, f"nst-{base}"), local.LocalCluster.isolated(base + 10, f"nst-{base + 10}"))
    return Stage(clusters, config, registry, body, timing)


def run(names: list[str], settings: ServiceSettings, base: int, timing: Timing, serve_config_v2: str) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="switchover-") as tmp:
        folder = Path(tmp)
        data = folder / "data"
        demo.write_days(data, 3)
        trained = Registry(str(folder / "trained"))
        train(TrainOptions(data=str(data), model="breast_cancer", promote=True), trained)
        version = trained.resolve("breast_cancer", "production")
        body = {"instances": trained.manifest("breast_cancer", version).samples.inputs[:1]}
        for name in names:
            if name == "first_start":
                empty = Registry(str(folder / "empty"))
                scene = stage(base, empty.uri, timing, body, serve_config_v2)

                def first_training(registry: Registry = empty) -> None:
                    train(TrainOptions(data=str(data), model="breast_cancer", promote=True), registry)

                result = first_start(scene, settings, first_training)
            else:
                scene = stage(base, trained.uri, timing, body, serve_config_v2)
                result = (code_upgrade if name == "code_upgrade" else slow_probe)(scene, settings)
            print(json.dumps(result.as_dict(), indent=1), flush=True)
            results.append(result.as_dict())
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--unfixed", action="store_true", help="the pre-issue-12 settings")
    parser.add_argument("--port-base", type=int, default=int(os.environ.get("NONSTOP_TEST_PORT_BASE", "45000")))
    parser.add_argument("--deletion-delay", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    service = built_rayservice()
    settings = ServiceSettings.of(service, args.deletion_delay)
    if args.unfixed:
        settings = unfixed(settings)
    timing = Timing(rate=args.rate, settle_s=args.settle, deletion_delay_s=args.deletion_delay)
    results = run(args.scenario or list(SCENARIOS), settings, args.port_base, timing, service["spec"]["serveConfigV2"])
    if args.out:
        args.out.write_text(json.dumps({"settings": dataclasses.asdict(settings), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
