"""The centre of a replica: what it serves, as immutable state, and the data plane that answers.

`state` is the `ServingState` replaced whole at every change and the `ReplicaStatus`
report made from it; `holder` keeps that state in line with the target, loading versions
through the replica's out-of-process `loader_actor`; `dataplane` binds each request to
one version and predicts it, knowing no transport, with `batching` running many requests'
jobs in one estimator call; `serving_metrics` and `status_board`
report what the replica holds; `heap` gives the memory of released versions back. Both transports call the data plane; it calls neither.
"""
