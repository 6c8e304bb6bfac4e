"""The loader's meter: a token bucket of CPU seconds (pure), and the thread that holds a
real process to it with SIGSTOP / SIGCONT and never leaves it stopped."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest
from pydantic import ValidationError

from serve_app.config import AppArgs
from serve_app.replica.load_governor import Allowance, LoadBudget, LoadGovernor, cpu_seconds

SPIN = "while True: pass"


def test_the_allowance_spends_its_burst_then_refills_at_its_rate_and_never_stores_more_than_the_burst() -> None:
    allowance = Allowance(LoadBudget(cpus=0.5, burst_cpu_s=0.2))
    assert allowance.step(0.1, 0.1)  # 0.2 -> 0.1 left
    assert not allowance.step(0.1, 0.3)  # refilled by 0.05, spent 0.3: in debt
    assert not allowance.step(0.1, 0.0)  # the debt is paid back at the rate first
    assert allowance.step(1.0, 0.0)  # back in credit
    allowance.step(3600.0, 0.0)
    assert allowance.credit == pytest.approx(0.2)  # an idle hour stores no more than the burst


@pytest.mark.parametrize("bad", [{"cpus": 0}, {"cpus": -1}, {"burst_cpu_s": -0.1}, {"cpus": 0.1, "unknown": 1}])
def test_a_budget_out_of_range_is_refused_naming_the_field(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError, match=next(iter(set(bad) - {"cpus"}), "cpus")):
        AppArgs.model_validate({"loading": bad})


@pytest.fixture
def spinner() -> psutil.Process:
    child = subprocess.Popen([sys.executable, "-c", SPIN])
    process = psutil.Process(child.pid)
    yield process
    child.kill()
    child.wait(timeout=10)


def test_a_metered_process_stays_within_its_share_while_loading_and_runs_freely_after(spinner: psutil.Process) -> None:
    governor = LoadGovernor(LoadBudget(cpus=0.1, burst_cpu_s=0.05))
    governor.attach(spinner.pid)
    time.sleep(0.3)  # not loading: nothing is metered
    before, started = cpu_seconds(spinner), time.monotonic()
    with governor.loading():
        time.sleep(2.0)
    used, wall = cpu_seconds(spinner) - before, time.monotonic() - started
    # its share and burst, and a tick or two of clock-tick rounding; unmetered it would take a whole core
    assert used <= 0.05 + 0.1 * wall + 0.1, (used, wall)
    assert used > 0.0  # it is given its share, not stopped outright
    time.sleep(0.2)
    assert spinner.status() != psutil.STATUS_STOPPED
    after, deadline = cpu_seconds(spinner), time.monotonic() + 30
    while cpu_seconds(spinner) - after <= 0.1 and time.monotonic() < deadline:  # a busy machine: no fixed window
        time.sleep(0.1)
    assert cpu_seconds(spinner) - after > 0.1  # runs freely between loads
    governor.close()


def test_closing_the_meter_mid_load_and_losing_the_process_leave_nothing_stopped(spinner: psutil.Process) -> None:
    governor = LoadGovernor(LoadBudget(cpus=0.05, burst_cpu_s=0.0))
    governor.attach(spinner.pid)
    with governor.loading():
        time.sleep(0.5)
        governor.close()
        assert spinner.status() != psutil.STATUS_STOPPED
    other = LoadGovernor(LoadBudget(cpus=0.05, burst_cpu_s=0.0))
    other.attach(spinner.pid)
    with other.loading():
        time.sleep(0.3)
        spinner.kill()
        time.sleep(0.3)  # the meter finds the process gone and waits for the next one
    other.attach(2**22 + 1)  # no such process: nothing to meter, nothing raised
    with other.loading():
        time.sleep(0.1)
    other.close()

