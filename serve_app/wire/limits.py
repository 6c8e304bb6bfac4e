"""How much of a request is accepted, and how much of what a client sent an error echoes.

`Limits` is part of the app's `args` (serve_config.yaml); the codecs check sizes against
it before they parse, and both transports bound what they read with it (an HTTP body as
it streams in, a gRPC message before it is decoded). One place, so a limit means the
same whichever protocol a client speaks.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nonstop.columns import MAX_STRING_LENGTH
from nonstop.errors import InvalidInput, clip


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_instances: int = Field(default=10_000, ge=1)
    max_string_length: int = Field(default=MAX_STRING_LENGTH, ge=1)
    body_timeout_s: float = Field(default=30.0, gt=0, le=600, description="deadline for the whole request body to arrive")


class BodyTimeout(InvalidInput):
    """The body did not arrive within the deadline."""

    reason = "body_timeout"


def listed(names: list[Any], most: int = 5) -> str:
    """Names a client sent, a few of them and each clipped: a body can hold thousands."""
    shown = ", ".join(clip(str(n)) for n in names[:most])
    return (shown + (f" and {len(names) - most} more" if len(names) > most else "")) or "none"
