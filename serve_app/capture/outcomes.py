"""Outcomes posted to a replica: checked against the served version's task, stored beside the captures.

The replica takes them because it already knows the model's version (its task and
classes) and where the captures go; the CLI (`nonstop outcomes`) does the same from a
file through the same core functions (nonstop/outcomes.py). Writing runs off the event
loop: a slow store delays this post, never a prediction.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from pydantic import ValidationError

from nonstop.capture import filesystem
from nonstop.errors import InvalidInput, clip, validation_problems
from nonstop.manifest import Manifest
from nonstop.outcomes import OutcomeBatch, OutcomeReport, check, store
from serve_app.capture.recorder import Recorder


class OutcomeCounting(Protocol):
    def outcomes(self, model: str, stored: int, unknown: int) -> None: ...


class OutcomeSink:
    def __init__(self, recorder: Recorder, counting: OutcomeCounting | None = None) -> None:
        self._recorder = recorder
        self._counting = counting

    async def post(self, manifest: Manifest, body: bytes) -> OutcomeReport:
        """A JSON batch (nonstop/outcomes.py OutcomeBatch) for the model of `manifest`."""
        try:
            batch = OutcomeBatch.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidInput(f"not an outcomes batch: {clip(validation_problems(exc), 300)}") from exc
        checked = check(batch.outcomes, manifest)
        fs, path = filesystem(self._recorder.root)
        report = await asyncio.to_thread(store, fs, path, manifest.model, checked)
        if self._counting is not None:
            self._counting.outcomes(manifest.model, report.stored, report.unknown)
        return report
