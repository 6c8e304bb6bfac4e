"""A class whose restoration leaves a mark: proof that an artifact's code ran."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MARK_ENV = "NONSTOP_TEST_TRIPWIRE"


class Tripwire:
    def __init__(self) -> None:
        self.armed = True

    def __setstate__(self, state: dict[str, Any]) -> None:
        Path(os.environ[MARK_ENV]).write_text("restored")
        self.__dict__.update(state)
