"""Which Arrow column types a feature accepts, and which values in them are refused.

The rules every protocol and batch scoring share, with no protocol in them: the V1 Arrow
decoder (serve_app/wire/v1_arrow.py) refuses a whole request on the first problem, batch
scoring (nonstop/batch) refuses only the rows that have one, each with its reason. Both
take the problems from here, so a value refused over HTTP is refused in a batch too.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nonstop.errors import clip
from nonstop.manifest import FeatureKind, FeatureSpec

MAX_STRING_LENGTH = 256
"""Longest category string accepted, the serving limit's default (Limits.max_string_length)."""

FLOAT64 = pa.float64()
_NUMBER_TYPES = frozenset(
    [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]
    + [pa.float32(), pa.float64(), pa.null()]
)
_TEXT_TYPES = frozenset([pa.string(), pa.large_string()])
_INDEX_TYPES = frozenset([pa.int8(), pa.int16(), pa.int32(), pa.int64()])
EXPECTED: dict[FeatureKind, str] = {
    "number": "numbers",
    "category": "strings",
}


def accepted(kind: pa.DataType, feature: FeatureKind) -> bool:
    """Exact types, never families: a view, nested, decimal or extension type is refused
    here rather than trusted to behave like its plain relative."""
    if isinstance(kind, pa.ExtensionType):
        return False
    if feature == "number":
        return kind in _NUMBER_TYPES
    if pa.types.is_dictionary(kind):
        return kind.index_type in _INDEX_TYPES and kind.value_type in _TEXT_TYPES
    return kind in _TEXT_TYPES or kind == pa.null()


def type_problem(field: pa.Field, spec: FeatureSpec) -> str | None:
    """Why a column cannot hold this feature, or None."""
    if field.metadata and any(key.startswith(b"ARROW:extension") for key in field.metadata):
        return f"column {spec.name!r}: extension types are not accepted: send a plain Arrow type"
    if not accepted(field.type, spec.kind):
        return f"column {spec.name!r}: expected {EXPECTED[spec.kind]}, got Arrow type {clip(str(field.type), 80)}"
    return None


def number_values(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64 with nulls as NaN, rows whose value is refused: not finite and
    not null). Null is a missing value, imputed as in training; NaN or infinity sent as a
    number is refused, as JSON refuses them."""
    if column.type != FLOAT64:
        column = column.cast(FLOAT64, safe=False)  # as JSON integers become floats
    values = column.to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(values)
    if column.null_count:
        bad &= ~column.is_null().to_numpy(zero_copy_only=False)
    return values, bad


def number_refusal(name: str, value: float) -> str:
    return f"feature {name!r}: {value} is not a finite number"


def string_values(column: pa.ChunkedArray | pa.Array, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(values as objects, nulls as None; rows whose string is longer than `max_length`)."""
    if column.type != pa.string():
        column = column.cast(pa.string())
    lengths = pc.utf8_length(column).to_numpy(zero_copy_only=False)
    too_long = np.nan_to_num(np.asarray(lengths, dtype=np.float64), nan=0.0) > max_length
    return column.to_numpy(zero_copy_only=False), too_long


def string_refusal(name: str, max_length: int) -> str:
    return f"feature {name!r}: string longer than {max_length} characters"
