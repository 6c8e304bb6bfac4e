"""What the tests and the benchmarks drive a running stack with, in one place both import.

The bounded load drivers (loadgen, canary), the upgrade scenarios and what a client saw
of them (rollout, rollout_stats), and KubeRay's switchover reproduced on local clusters
(forwarder, switchover, switchover_scenarios). Never installed: the wheel does not carry
it, and the installed packages never import it (both checked by tests/tools/test_layers.py).
"""
