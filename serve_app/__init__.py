"""The Ray Serve application: one deployment, two transports over one data plane.

`app` is the deployment (serve_config.yaml's `import_path`) and `config` the schemas of
that file. Around the centre, `replica` (the served state, the holder that keeps it in
line with the target, the transport-free data plane), sit the wings: `rest` (HTTP, KServe
V1 and Open Inference Protocol V2) and `grpc_v2` (the same protocol over gRPC), which
never import each other and share only `edge` (the one error table); `wire` (the codecs
from untrusted bytes to a feature matrix, with their limits); and `rollout` (canary
routing, the rollout controller, its policy and evidence). pyproject.toml's import
contracts keep these directions.
"""
