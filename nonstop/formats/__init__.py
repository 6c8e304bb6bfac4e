"""Model formats behind one seam, chosen by the manifest's `format` field.

A format knows how to write an estimator to bytes, how to read those bytes back while
admitting only the exact types (and the callables named one by one) it trusts, and how
to ask the estimator for predictions and class probabilities. A new format is one new
module that implements `ModelFormat` and one line in `FORMATS`.
"""

from __future__ import annotations

from nonstop.errors import ConfigError
from nonstop.formats.base import InvalidStructure, ModelFormat, UnreadableArtifact, UntrustedContent
from nonstop.formats.skops_sklearn import SKOPS, SkopsFormat

FORMATS: dict[str, ModelFormat] = {SKOPS.name: SKOPS}
DEFAULT_FORMAT = SKOPS.name

__all__ = [
    "DEFAULT_FORMAT",
    "FORMATS",
    "InvalidStructure",
    "ModelFormat",
    "SkopsFormat",
    "UnreadableArtifact",
    "UntrustedContent",
    "format_named",
]


def format_named(name: str) -> ModelFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(f"unknown model format {name!r} (known: {', '.join(sorted(FORMATS))})") from None
