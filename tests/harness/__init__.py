"""Load generators and rollout scenarios for the tests and benchmarks; never installed."""
