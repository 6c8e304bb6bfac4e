"""The many-models benchmark's bookkeeping (harness/many_models.py): what counts as a
failure, which models a sweep pass loaded, and a replica's memory against its limit."""

from __future__ import annotations

import pytest

from harness.many_models import classify, cold_loads, memory_verdict


@pytest.mark.parametrize(
    ("status", "retry_after", "error", "outcome"),
    [
        (200, None, None, "ok"),
        (503, "2", None, "retry_after"),  # a load past the bounded wait, or Serve shedding: documented, retried
        (503, None, None, "failed"),  # a 503 without Retry-After (a model that cannot load) is a failure
        (503, "soon", None, "failed"),
        (500, "1", None, "failed"),
        (404, None, None, "failed"),
        (0, None, "ConnectError: refused", "failed"),
    ],
)
def test_only_a_2xx_answers_and_only_a_503_with_retry_after_is_counted_apart(
    status: int, retry_after: str | None, error: str | None, outcome: str
) -> None:
    assert classify(status, retry_after, error) == outcome


def test_a_pass_loaded_the_models_whose_load_count_went_up_on_some_replica() -> None:
    before = {"r1": {"a": {"loads": 1, "load_seconds": 0.5}, "b": {"loads": 2, "load_seconds": 0.4}}}
    after = {
        "r1": {"a": {"loads": 1, "load_seconds": 0.5}, "b": {"loads": 3, "load_seconds": 0.2}},
        "r2": {"a": {"loads": 1, "load_seconds": 0.3}},  # a replica's first load of a model counts too
    }
    assert cold_loads(before, after) == {"a": 0.3, "b": 0.2}


def test_a_replica_is_within_its_memory_limit_up_to_start_plus_budget_plus_overhead() -> None:
    assert memory_verdict(100, 130, 10, 20)["within"]
    over = memory_verdict(100, 131, 10, 20)
    assert not over["within"] and over["growth"] == 31 and over["limit"] == 130
