"""Operations: the `nonstop` CLI (cli.py and its commands/), the local Ray cluster
(cluster/) and the Kubernetes renderer (kube.py).

The top layer: it may import the core (`nonstop`), `serve_app` and `training`; nothing imports it."""
