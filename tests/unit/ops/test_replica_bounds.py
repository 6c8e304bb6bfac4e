"""The ModelServer's replica bounds, as every reader of the Serve config sees them."""

from __future__ import annotations

import pytest

from nonstop.errors import ConfigError
from nonstop_ops.cluster.serve_config import check_replicas, deployment_config, load_serve_config, replica_bounds


def with_deployment(**fields: object) -> dict:
    config = load_serve_config()
    deployment = deployment_config(config)
    deployment.pop("autoscaling_config", None)
    deployment.update(fields)
    return config


def test_the_packaged_config_autoscales_between_two_and_more() -> None:
    fewest, most = replica_bounds(load_serve_config())
    assert fewest == 2 < most
    check_replicas(load_serve_config())


def test_a_fixed_count_is_both_bounds() -> None:
    assert replica_bounds(with_deployment(num_replicas=3)) == (3, 3)
    assert replica_bounds(with_deployment()) == (1, 1), "Serve's default: one replica"


@pytest.mark.parametrize(
    "fields",
    [{}, {"num_replicas": 1}, {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4}},
     {"autoscaling_config": {"min_replicas": 4, "max_replicas": 2}}],
)  # fmt: skip
def test_fewer_than_two_replicas_are_refused(fields: dict) -> None:
    with pytest.raises(ConfigError, match="replicas"):
        check_replicas(with_deployment(**fields))
