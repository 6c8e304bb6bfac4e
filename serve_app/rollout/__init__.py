"""The rollout machinery: a candidate version taking over an alias step by step, judged live.

`policy` holds the steps, windows and thresholds and the pure function that decides;
`evidence` the tallies replicas keep and the statistics judged on them; `moves` every
move of a rollout, written to the promotion ledger; `controller` the detached actor that
judges and moves rollouts; `canary` the replica's side (which version answers a request,
tallies, comparisons off the response path); `rollout_metrics` the gauges the controller
sets. It never imports a transport.
"""
