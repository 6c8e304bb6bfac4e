"""The quality gate's verdict on a candidate against production: what training publishes
with the version and what its model card shows (training/card.py), a module of its own so
the card need not import the publishing it is part of."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Comparison:
    """`blocked`: production exists but could not be loaded or scored on this holdout."""

    production_version: int | None
    production_metrics: dict[str, float] | None
    not_worse: bool
    reason: str
    blocked: bool = False
