"""Parsed JSON numbers into float64 with no Python code run per value: the V2 JSON
codec's fast path (V1 bodies are decoded typed against the schema, serve_app/wire/v1_json.py).

A JSON parser hands over Python objects; checking each one's type in a Python loop costs
more than parsing it did. Here C loops do the work: `sum` raises unless every value is a
number (or a bool, which Python counts as one) and comes out NaN or infinite when any
value is; numpy converts; and only values read as 0 or 1 can have been `true` or
`false`, so only those are looked at. Anything else (a string, null, a nested list, an
integer beyond a float, a bool) gives None, for the codec's checked path to accept or
refuse it in its own words: the fast path never decides a refusal.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_FEW = 256  # values: below this, looking at every value's type is cheaper than numpy's setup


def finite_floats(values: list[Any]) -> np.ndarray | None:
    """The values as float64 when every one is an int or a float and finite; else None."""
    try:
        # finite values summing past a float's range come out infinite too: those take
        # the checked path, which accepts them
        if not math.isfinite(sum(values)):
            return None
        array = np.fromiter(values, dtype=np.float64, count=len(values))
    except (TypeError, ValueError, OverflowError):
        return None
    return None if _has_bool(values, array) else array


def _has_bool(values: list[Any], array: np.ndarray) -> bool:
    if len(values) <= _FEW:
        return bool in set(map(type, values))
    maybe = np.flatnonzero((array == 0) | (array == 1)).tolist()
    return bool(maybe) and bool in set(map(type, map(values.__getitem__, maybe)))
