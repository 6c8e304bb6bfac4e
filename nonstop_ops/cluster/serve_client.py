"""A client of the dashboard's Serve REST API that calls it as the KubeRay operator does.

The operator deploys a RayService's serveConfigV2 and reads the applications' statuses
through this API, with the Ray token; the switchover harness plays the operator against
local clusters through here, so what it sends and reads is what the operator would.
`nonstop up` deploys through Ray's own SDK instead (lifecycle.deploy).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from nonstop_ops.cluster import ClusterError
from nonstop_ops.cluster.local_cluster import LocalCluster

# The dashboard's Serve REST API, called as the KubeRay operator calls it
# (ray-operator/controllers/ray/utils/dashboardclient/dashboard_httpclient.go, v1.7.0):
# PUT the serveConfigV2 as JSON to deploy, GET with api_type=declarative for the statuses,
# the Ray token in the x-ray-authorization header.
SERVE_APPLICATIONS_PATH = "/api/serve/applications/"
OPERATOR_TIMEOUT_S = 2.0  # KubeRay's RayHTTPClientDirectTimeoutSeconds


def operator_headers(cluster: LocalCluster) -> dict[str, str]:
    return {"x-ray-authorization": f"Bearer {Path(cluster.auth_token_path).read_text().strip()}"}


def submit_serve_config(cluster: LocalCluster, serve_config_v2: str, timeout_s: float = 30.0) -> None:
    """Deploy a RayService's serveConfigV2 text as the operator does (YAML in, JSON out).

    Unlike `deploy`, the config is sent as it is, ports included: the caller decides.
    """
    config = yaml.safe_load(serve_config_v2)
    answer = httpx.put(
        cluster.dashboard_url + SERVE_APPLICATIONS_PATH, json=config, headers=operator_headers(cluster), timeout=timeout_s
    )
    if not answer.is_success:
        raise ClusterError(f"serve config refused ({answer.status_code}): {_gist(answer.text)}")


def serve_application_statuses(cluster: LocalCluster, timeout_s: float = OPERATOR_TIMEOUT_S) -> dict[str, str]:
    """Application name → status (RUNNING, DEPLOYING, ...), as the operator reads them."""
    answer = httpx.get(
        cluster.dashboard_url + SERVE_APPLICATIONS_PATH,
        params={"api_type": "declarative"},
        headers=operator_headers(cluster),
        timeout=timeout_s,
    )
    if not answer.is_success:
        raise ClusterError(f"serve status unavailable ({answer.status_code}): {_gist(answer.text)}")
    applications = answer.json().get("applications") or {}
    return {name or "default": details.get("status", "") for name, details in applications.items()}


def _gist(text: str, head: int = 200, tail: int = 400) -> str:
    """A refusal's start and end: the dashboard answers a failure with a whole traceback,
    whose last line names the error."""
    return text if len(text) <= head + tail else f"{text[:head]} [...] {text[-tail:]}"
