"""What every model format provides, and the two ways reading one can fail."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar, Protocol

import numpy as np


class UntrustedContent(Exception):
    """The artifact holds types or callables outside the format's trust list; nothing of
    it was constructed. The loader turns this into an `UntrustedArtifactError`."""

    def __init__(self, refused: Collection[str]) -> None:
        self.refused = sorted(refused)
        super().__init__(", ".join(self.refused))


class UnreadableArtifact(Exception):
    """The bytes are not an artifact of this format (or its library refused them)."""


class InvalidStructure(Exception):
    """A trusted type whose inside does not hold together (an index out of range, a cycle,
    a shape that disagrees): refused before anything predicts with it. The loader turns
    this into an `InvalidStructureError` naming the type and the field."""

    def __init__(self, type_name: str, field: str, problem: str) -> None:
        self.type_name, self.field, self.problem = type_name, field, problem
        super().__init__(f"{type_name}.{field}: {problem}")


class ModelFormat(Protocol):
    """Writes, reads with an explicit trust list, and predicts."""

    name: ClassVar[str]

    def dumps(self, estimator: Any) -> bytes:
        """The artifact's bytes; refuses an estimator it could not read back."""

    def types_in(self, data: bytes) -> set[str]:
        """Every type and callable the artifact would construct, without constructing any."""

    def needs(self, data: bytes) -> list[str]:
        """The names in the artifact outside the format's own list (what an operator would
        have to trust), without constructing anything."""

    def loads(self, data: bytes, extra_types: Collection[str] = ()) -> Any:
        """The estimator, if every type in the artifact is on the format's own list or
        in `extra_types` (exact names an operator added); `UntrustedContent` otherwise.
        Whatever native code would index is checked once built (`InvalidStructure`)."""

    def predict(self, estimator: Any, inputs: Any) -> np.ndarray: ...

    def predict_proba(self, estimator: Any, inputs: Any) -> np.ndarray | None:
        """Class probabilities, columns in the order of `classes_`; None if the
        estimator gives none."""
