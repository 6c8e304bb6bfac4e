"""A replica's capture: a bounded buffer the data plane appends to, and the thread that writes it.

`served` is all a request pays: a sampling decision and its values appended to the
columns of its (model, version) under a lock, never I/O. Rows buffered plus rows being written never exceed `max_buffered_rows`; a request
whose rows would pass the bound is dropped and counted. A write that fails (storage
slow to the point of error, full, unreachable, refused) drops what it held and counts
it; the next interval tries again with what has arrived since. The thread writes every
`flush_interval_s`, at once when `flush_soon` is called (on every swap) and a last
time at `close` (graceful shutdown), so a kill -9 loses at most one interval's rows.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
from nonstop.capture import CaptureConfig, CaptureStatus, Records, delete_expired, filesystem, root_of, sampled, write_records
from nonstop.manifest import FeatureSpec
from nonstop.redact import public_uri

log = logging.getLogger("nonstop.capture")
RETENTION_EVERY_S = 3600.0


class Counting(Protocol):
    """Where captured and dropped rows are counted (the Prometheus metrics)."""

    def captured(self, model: str, rows: int) -> None: ...
    def dropped(self, model: str, reason: str, rows: int) -> None: ...


class _Uncounted:
    def captured(self, model: str, rows: int) -> None:
        pass

    def dropped(self, model: str, reason: str, rows: int) -> None:
        pass


class Recorder:
    def __init__(self, registry_uri: str, counting: Counting | None = None) -> None:
        self._registry_uri = registry_uri
        self._counting = counting or _Uncounted()
        self._config = CaptureConfig()
        self._root: str | None = None
        self._lock = threading.Lock()
        self._excluded: frozenset[str] = frozenset()
        self._buffers: dict[tuple[str, int], Records] = {}
        self._pending = 0  # rows buffered or being written
        self.captured_rows = 0
        self.dropped_rows = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._writing = False
        self._retained_at = 0.0
        self._thread: threading.Thread | None = None

    def configure(self, config: CaptureConfig | None) -> None:
        """Apply the user_config's capture block; what was buffered is written first."""
        config = config or CaptureConfig()
        self.flush()
        with self._lock:
            self._config = config
            self._root = root_of(self._registry_uri, config) if config.enabled else None
            self._excluded = frozenset(config.exclude_columns)
        if config.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nonstop-capture", daemon=True)
            self._thread.start()

    @property
    def config(self) -> CaptureConfig:
        return self._config

    @property
    def root(self) -> str:
        """Where captures go, or would go: outcomes are stored there even with capture off."""
        return self._root or root_of(self._registry_uri, self._config)

    def served(
        self,
        request_id: str,
        model: str,
        version: int,
        role: str,
        features: list[FeatureSpec],
        matrix: np.ndarray,
        predictions: list[Any],
        probabilities: list[list[float]] | None,
    ) -> None:
        """One answered request; returns at once whatever the storage is doing."""
        config = self._config
        if self._root is None or not sampled(request_id, config.sample_rate):
            return
        rows = len(matrix)
        with self._lock:
            if self._pending + rows > config.max_buffered_rows:
                self.dropped_rows += rows
                full = True
            else:
                records = self._buffers.get((model, version))
                if records is None:
                    records = self._buffers[model, version] = Records(model, version, features, self._excluded)
                records.add(request_id, time.time_ns() // 1000, role, matrix, predictions, probabilities)
                self._pending += rows
                full = False
        if full:
            self._counting.dropped(model, "buffer_full", rows)

    def flush_soon(self) -> None:
        """Write what is buffered now, on the writer thread (a swap: nothing answered is lost)."""
        self._wake.set()

    def flush(self) -> None:
        """Write what is buffered, in this thread; returns once it is written or dropped."""
        with self._lock:
            while self._writing:
                self._idle.wait()
            self._writing = True
            batch, self._buffers = self._buffers, {}
            root = self._root
        try:
            if batch:
                self._write(root, batch)
        finally:
            with self._lock:
                self._pending -= sum(r.rows for r in batch.values())
                self._writing = False
                self._idle.notify_all()

    def _write(self, root: str | None, batch: dict[tuple[str, int], Records]) -> None:
        for (model, _), records in batch.items():
            rows = records.rows
            try:
                if root is None:
                    raise RuntimeError("capture was turned off before these rows were written")
                fs, path = filesystem(root)
                write_records(fs, path, records.table())
            except Exception as exc:  # whatever storage does, requests never see it: counted instead
                log.warning("capture of %d rows of %s dropped: %s", rows, model, exc)
                with self._lock:
                    self.dropped_rows += rows
                self._counting.dropped(model, "write_failed", rows)
                continue
            with self._lock:
                self.captured_rows += rows
            self._counting.captured(model, rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._config.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
                self._retain()
            except Exception:  # the writer must outlive any surprise; the next interval retries
                log.exception("capture writer failed")

    def _retain(self) -> None:
        """Delete date partitions past the retention period, at most once an hour."""
        now = datetime.now(UTC)
        root = self._root
        if root is None or now.timestamp() - self._retained_at < RETENTION_EVERY_S:
            return
        self._retained_at = now.timestamp()
        fs, path = filesystem(root)
        for gone in delete_expired(fs, path, self._config.retention_days, now.date()):
            log.info("capture partition past retention deleted: %s", gone)

    def close(self) -> None:
        """Graceful shutdown: stop the writer and write what is left."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()

    def status(self) -> CaptureStatus:
        with self._lock:
            return CaptureStatus(
                enabled=self._root is not None,
                destination=public_uri(self._root) if self._root else None,
                captured_rows=self.captured_rows,
                dropped_rows=self.dropped_rows,
                buffered_rows=self._pending,
            )
