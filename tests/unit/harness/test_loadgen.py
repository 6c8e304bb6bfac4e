"""The load driver's open-loop schedule (harness/loadgen.py `turn_due`), which every paced
load of the integration tier (`LOAD_RATE`, `CANARY_RATE`) runs on, and the rule that tells
a kill's burst of failures from any other (`failed_beyond`)."""

from __future__ import annotations

import asyncio
import threading
import time

from harness.loadgen import Sample, failed_beyond, turn_due


def test_without_a_rate_every_turn_is_due_at_once() -> None:
    began = time.monotonic()
    assert all(asyncio.run(turn_due(turn, began, began + 1.0, None, None)) for turn in (0, 10**6))


def test_a_turn_waits_for_its_time_and_none_is_due_past_the_deadline() -> None:
    began = time.monotonic()
    assert asyncio.run(turn_due(5, began, began + 1.0, 100.0, None))
    assert time.monotonic() >= began + 0.049  # turn 5 of 100 per second: 50 ms after the start (less the clock's resolution)
    assert not asyncio.run(turn_due(200, began, began + 1.0, 100.0, None))  # due at 2 s, past the 1 s deadline


def test_a_stop_during_the_wait_ends_the_run() -> None:
    stop = threading.Event()
    stop.set()
    began = time.monotonic()
    assert not asyncio.run(turn_due(1, began, began + 1.0, 100.0, stop))


def test_only_failures_at_the_fault_are_explained_by_it() -> None:
    fault = 100.0
    in_flight = Sample(sent_at=99.9, latency_s=0.2, status=0, version=None, error="disconnected")
    sent_in_the_burst = Sample(sent_at=100.5, latency_s=0.01, status=500, version=None)
    answered_before = Sample(sent_at=99.0, latency_s=0.5, status=500, version=None)
    sent_after_the_burst = Sample(sent_at=101.5, latency_s=0.01, status=0, version=None, error="disconnected")
    answered = Sample(sent_at=100.2, latency_s=0.01, status=200, version="2")
    samples = [in_flight, sent_in_the_burst, answered_before, sent_after_the_burst, answered]
    assert failed_beyond(samples, fault, burst_s=1.0) == [answered_before, sent_after_the_burst]
