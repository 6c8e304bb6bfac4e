"""A local Ray cluster and what runs on it, one concept per module.

- local_cluster: a cluster's ports, folders and switches (`LocalCluster`), and the
  environment they become; `isolated` ones side by side never share a port;
- lifecycle: start a local head, deploy the Serve config to it, wait until it answers,
  and stop it (the CLI's `up`/`down`, the test fixtures and the benchmarks);
- serve_config: the Serve config file (the packaged serve_config.yaml or an operator's),
  its ports and deployment, and the user_config check a replica would make;
- nodes: extra Ray worker nodes on loopback beside a local head, as KubeRay's worker pods;
- serve_client: the dashboard's Serve REST API, called as the KubeRay operator calls it.

`ClusterError` is what goes wrong with a cluster or talking to it: the CLI ends with exit 3.
"""

from __future__ import annotations

from nonstop.errors import NonstopError


class ClusterError(NonstopError):
    reason = "cluster"
