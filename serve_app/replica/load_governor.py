"""A replica's loads take a bounded share of a CPU, and are guaranteed it.

A large model's load is seconds of CPU (skops rebuilding a forest tree by tree). At the
lowest priority a load yields to serving entirely, and so on a saturated node it barely
runs: replicas reach a new version minutes late, and two versions answer all that time.
At serving's priority it takes a core's fair share from serving for as long as it lasts.

Here the loader process runs at serving's priority and its replica meters it. While a
load is in flight, a thread of the replica reads the loader's CPU time and stops the
process (SIGSTOP) whenever it has used more than its allowance, continuing it (SIGCONT) as
the allowance refills: `cpus` of a CPU on average, after a `burst_cpu_s` that lets a small
model load at once. At equal priority a runnable loader gets its allowance whatever
serving does, so a large load's wall time is about its CPU time over `cpus`, and serving
gives up at most `cpus` while it runs. The rule itself (`Allowance`) is pure; the thread
only samples and signals. psutil names the process by pid and creation time, so a pid
reused after the loader ended is never signalled.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import psutil
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("nonstop.loads")


class LoadBudget(BaseModel):
    """The app's `args.loading`: what one replica's loads may take of its node's CPU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float = Field(
        default=0.15, gt=0.0, le=64.0, description="CPUs a replica's loads take on average, at most; also the share they are guaranteed"
    )
    burst_cpu_s: float = Field(
        default=0.25, ge=0.0, le=60.0, description="CPU seconds a load may take at once before the average applies"
    )


class Allowance:
    """A token bucket of CPU seconds: it fills at `cpus` per second up to `burst_cpu_s`,
    and what the loader used is taken out. The loader runs while credit remains."""

    def __init__(self, budget: LoadBudget) -> None:
        self._rate, self._burst = budget.cpus, budget.burst_cpu_s
        self.credit = budget.burst_cpu_s

    def step(self, elapsed_s: float, used_s: float) -> bool:
        """Whether the loader may run on, `elapsed_s` and `used_s` CPU seconds since the last step."""
        self.credit = min(self._burst, self.credit + self._rate * elapsed_s) - used_s
        return self.credit > 0.0


class LoadGovernor:
    """Meters one loader process while loads are in flight (module doc); between loads
    the process runs unhindered, and it is never left stopped when no load is."""

    def __init__(self, budget: LoadBudget, tick_s: float = 0.05) -> None:
        self._allowance = Allowance(budget)
        self._tick_s = tick_s
        self._lock = threading.Condition()
        self._process: psutil.Process | None = None
        self._loads = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="nonstop-load-governor", daemon=True)
        self._thread.start()

    def attach(self, pid: int) -> None:
        """The loader process to meter: a fresh one replaces one that ended."""
        with self._lock:
            try:
                self._process = psutil.Process(pid)
            except psutil.Error:
                self._process = None

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        with self._lock:
            self._loads += 1
            self._lock.notify()
        try:
            yield
        finally:
            with self._lock:
                self._loads -= 1
                self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        stopped: psutil.Process | None = None
        last: tuple[float, float] | None = None  # (wall, the process's CPU seconds) at the last tick
        while True:
            with self._lock:
                process = self._process
                metering = not self._closed and self._loads > 0 and process is not None
                if stopped is not None and (not metering or stopped is not process):
                    stopped = _resume(stopped)
                if self._closed:
                    return
                if not metering:
                    last = None
                    self._lock.wait()
                    continue
            try:
                now, cpu = time.monotonic(), cpu_seconds(process)
            except psutil.Error:  # the loader ended: its loss is the loader's to report
                with self._lock:
                    if self._process is process:
                        self._process = None
                stopped, last = None, None
                continue
            if last is not None:
                run = self._allowance.step(now - last[0], cpu - last[1])
                stopped = _resume(stopped) if run else stopped or _suspend(process)
            last = (now, cpu)
            time.sleep(self._tick_s)


def cpu_seconds(process: psutil.Process) -> float:
    """User and system CPU seconds the process has used so far."""
    times = process.cpu_times()
    return times.user + times.system


def _suspend(process: psutil.Process) -> psutil.Process | None:
    try:
        process.suspend()
    except psutil.Error:
        return None
    return process


def _resume(process: psutil.Process | None) -> None:
    if process is not None:
        with contextlib.suppress(psutil.Error):
            process.resume()
    return None
