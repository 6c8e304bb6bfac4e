"""Live quality of the served model, per version and role, measured by a replica from the store.

The same figures as `nonstop quality` (nonstop/quality.py `live_quality` on the captures
joined with their outcomes), over the capture block's `quality_window_h`, every
`quality_interval_s`: exported as Prometheus gauges and shown in `nonstop status`. One
replica measures (rank 0: every replica reads the same files, so more would only repeat
the figure and the I/O), off the event loop, so a slow store delays the figure, never a
request. A store that cannot be read leaves the last figures in place and says why.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from collections.abc import Callable
from typing import Protocol

from nonstop.capture import CaptureConfig, filesystem
from nonstop.manifest import Manifest
from nonstop.outcomes import labelled
from nonstop.quality import VersionQuality, class_orders, live_quality

log = logging.getLogger("nonstop.capture")


class QualityGauges(Protocol):
    def live_quality(self, model: str, lines: list[VersionQuality]) -> None: ...


class LiveQuality:
    def __init__(self, gauges: QualityGauges | None = None) -> None:
        self._gauges = gauges
        self._measured_at: float | None = None
        self.lines: list[VersionQuality] = []
        self.error: str | None = None

    def due(self, config: CaptureConfig) -> bool:
        return config.enabled and (self._measured_at is None or time.monotonic() - self._measured_at >= config.quality_interval_s)

    def measure(
        self,
        root: str,
        manifest: Manifest,
        config: CaptureConfig,
        now: datetime | None = None,
        manifest_of: Callable[[int], Manifest] | None = None,
    ) -> list[VersionQuality]:
        """Read the window's captures and outcomes of the model and score each version on them
        with the metrics of the task of `manifest` (the version the replica serves).
        `manifest_of` (the registry's, for the model) gives each captured version's class
        order for its ROC AUC and log loss; without it only `manifest`'s version has one."""
        self._measured_at = time.monotonic()
        since = (now or datetime.now(UTC)) - timedelta(hours=config.quality_window_h)
        try:
            fs, path = filesystem(root)
            found = labelled(fs, path, manifest.model, since)
            classes = class_orders(found.frame, manifest_of) if manifest_of is not None else {manifest.version: manifest.classes}
            lines = live_quality(found.frame, manifest.task, classes=classes, captured=found.captured)
        except Exception as exc:  # a store out of reach: the last figures stay, the status says why
            self.error = f"live quality not measured: {exc}"
            log.warning("%s", self.error)
            return self.lines
        self.lines, self.error = lines, None
        if self._gauges is not None:
            self._gauges.live_quality(manifest.model, lines)
        return lines
