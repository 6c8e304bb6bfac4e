"""The Serve config file: where it is, what it says, and whether a replica would take it.

One serve_config.yaml (packaged with serve_app) is the source of truth for the Serve
application; `nonstop up` deploys it (lifecycle.py), the Kubernetes renderer
(nonstop_ops/kube.py) copies it into the RayService, and both read it through here. Its
ports are the defaults of every local cluster, and its user_config is refused here, before
anything is sent, when a replica would refuse it.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import yaml

from nonstop.errors import ConfigError, validation_problems
from nonstop_ops.cluster import ClusterError

SERVE_CONFIG_PACKAGE = "serve_app"
SERVE_CONFIG_NAME = "serve_config.yaml"
# Fewest replicas the ModelServer may run: with one, a code update or a crashed replica
# leaves nothing to answer until the replacement is up (docs/upgrades.md).
MIN_REPLICAS = 2


def serve_config_text() -> str:
    """The packaged serve_config.yaml, wherever serve_app is installed."""
    return importlib.resources.files(SERVE_CONFIG_PACKAGE).joinpath(SERVE_CONFIG_NAME).read_text()


def load_serve_config(path: Path | None = None) -> dict[str, Any]:
    """An operator's Serve config file, or the packaged one."""
    text = serve_config_text() if path is None else path.read_text()
    return yaml.safe_load(text)


def serve_port(config: dict[str, Any] | None = None) -> int:
    """Serve's HTTP port: `http_options.port` of the (packaged) Serve config, the one
    place it is written."""
    return int((config or load_serve_config())["http_options"]["port"])


def grpc_port(config: dict[str, Any] | None = None) -> int:
    """Serve's gRPC port (OIP v2): `grpc_options.port` of the (packaged) Serve config."""
    return int((config or load_serve_config())["grpc_options"]["port"])


def deployment_config(config: dict[str, Any], app: str = "nonstop", deployment: str = "ModelServer") -> dict[str, Any]:
    for application in config["applications"]:
        if application["name"] == app:
            for entry in application.get("deployments", []):
                if entry["name"] == deployment:
                    return entry
    raise ClusterError(f"serve config has no deployment {app}/{deployment}")


def replica_bounds(config: dict[str, Any]) -> tuple[int, int]:
    """(fewest, most) ModelServer replicas: `autoscaling_config`'s min and max, or a fixed
    `num_replicas` for both (Serve's default: 1)."""
    deployment = deployment_config(config)
    autoscaling = deployment.get("autoscaling_config")
    if autoscaling is not None:
        return int(autoscaling.get("min_replicas", 1)), int(autoscaling.get("max_replicas", 1))
    fixed = int(deployment.get("num_replicas", 1))
    return fixed, fixed


def check_replicas(config: dict[str, Any]) -> None:
    """Refuse a ModelServer that may run fewer than MIN_REPLICAS replicas, or none at most."""
    fewest, most = replica_bounds(config)
    if fewest < MIN_REPLICAS or most < fewest:
        raise ConfigError(
            f"ModelServer replicas {fewest}..{most} refused: at least {MIN_REPLICAS} at all times "
            "(one leaves nothing to answer while it restarts), and max >= min"
        )


def check_user_config(config: dict[str, Any]) -> None:
    """The app's user_config (one model target or many, canary blocks) as a replica would read it:
    refused here, naming the field, before anything is sent. A replica refuses it too
    (serve_app/app.py), for configs deployed by other means (`serve deploy`, KubeRay)."""
    from pydantic import ValidationError

    from serve_app.config import parse_user_config

    try:
        parse_user_config(deployment_config(config).get("user_config") or {})
    except ValidationError as exc:
        raise ConfigError(f"user_config refused: {validation_problems(exc)}") from None
    except ConfigError as exc:
        raise ConfigError(f"user_config refused: {exc.message}") from None
