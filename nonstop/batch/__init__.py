"""Batch scoring: a registry version applied to a dataset with Ray Data (`nonstop score`).

Core-level, beside the loader it scores with: `scorer` is the pure table-in, table-out
step one worker runs; `job` reads, fans the step out over an actor pool and writes.
"""
