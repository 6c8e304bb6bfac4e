"""CPU by kind of process over a benchmark's windows, sampled once a second (psutil).

At saturation the requests per second of a closed loop vary between runs far more than
the CPU the servers get does, so what a swap costs serving is read as well from the
replicas' CPU before and during it, beside what the loads themselves took (the loader
actors and the node's load board: serve_app/replica/load_governor.py, load_share.py).
"""

from __future__ import annotations

import bisect
import threading
import time

import psutil

# Ray names a worker's process after its actor class (`ray::ServeReplica:...`, `ray::ModelLoader.load`)
KINDS = {"replicas": ("ServeReplica",), "loads": ("ModelLoader", "LoadBoard")}


def _kind(process: psutil.Process) -> str | None:
    line = " ".join(process.info["cmdline"] or [])
    return next((kind for kind, marks in KINDS.items() if any(f"ray::{m}" in line for m in marks)), None)


class CpuSampler:
    """Every second, the CPU seconds each kind's processes have used so far."""

    def __init__(self, every_s: float = 1.0) -> None:
        self._every_s = every_s
        self._times: list[float] = []
        self._totals: list[dict[int, tuple[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            seen: dict[int, tuple[str, float]] = {}
            for process in psutil.process_iter(["cmdline", "cpu_times"]):
                kind, times = _kind(process), process.info["cpu_times"]
                if kind is not None and times is not None:
                    seen[process.pid] = (kind, times.user + times.system)
            self._times.append(time.time())
            self._totals.append(seen)
            self._stop.wait(self._every_s)

    def cpus(self, start: float, end: float) -> dict[str, float] | None:
        """Each kind's CPUs on average between the samples nearest `start` and `end`
        (processes that lived through both), or None when the window is under a sample."""
        first, last = (self._nearest(t) for t in (start, end))
        if first is None or last is None or self._times[last] - self._times[first] < self._every_s / 2:
            return None
        wall = self._times[last] - self._times[first]
        used = dict.fromkeys(KINDS, 0.0)
        before = self._totals[first]
        for pid, (kind, cpu) in self._totals[last].items():
            if pid in before:
                used[kind] += (cpu - before[pid][1]) / wall
        return used

    def _nearest(self, at: float) -> int | None:
        if not self._times:
            return None
        i = bisect.bisect_left(self._times, at)
        return min((j for j in (i - 1, i) if 0 <= j < len(self._times)), key=lambda j: abs(self._times[j] - at))
