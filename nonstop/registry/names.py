"""Names in the registry: what a model, alias or extra file may be called, and which
folder names are versions. One place, so every path the registry builds is checked alike."""

from __future__ import annotations

import re

from nonstop.errors import ConfigError

PRODUCTION = "production"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch: `$` would let a trailing newline in
VERSION = re.compile(r"[1-9][0-9]{0,17}")  # ASCII digits, no leading zero: one folder per version


def check_name(kind: str, name: str) -> str:
    if not NAME.fullmatch(name):
        raise ConfigError(
            f"invalid {kind} name {name!r}: use letters, digits, '_', '.', '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return name
