"""Operations: the `nonstop` CLI, the local cluster lifecycle and the Kubernetes renderer.

The top layer: it may import the core (`nonstop`), `serve_app` and `training`; nothing imports it."""
