"""Large JSON bodies of numbers read by simdjson straight into buffers of doubles.

The JSON codecs' buffer paths (V1 rows of numbers in v1_json, V2 tensor data in v2_json)
share this: simdjson parses the whole body (full JSON and UTF-8 validation) into a
document whose arrays of numbers come out as one buffer each, with no Python object per
value. A buffer flattens nested arrays and names no position, so each codec checks the
structure itself before it trusts one: the count of `[` in the body tells every array
apart when no string holds one. A body the buffer cannot read gives None, for the
codec's other paths to accept or refuse it in their own words.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import simdjson

# Below this, the codecs' typed decoding costs less than a document and its checks
MIN_BYTES = 32 * 1024
_OPEN = ord("[")
_PARSERS = threading.local()  # a parser reuses its buffers, one document at a time


def parse(body: bytes) -> Any | None:
    """The body's document, or None when simdjson refuses it (bad JSON, a number beyond
    64 bits). The caller drops every reference into the document before the next parse
    on its thread; a parser still held is replaced, not waited for."""
    parser = getattr(_PARSERS, "parser", None) or simdjson.Parser()
    _PARSERS.parser = parser
    try:
        return parser.parse(body)
    except (ValueError, RuntimeError):  # RuntimeError: a document of this parser is still referenced
        _PARSERS.parser = None  # a fresh one next time, whatever this one holds
        return None


def doubles(array: Any) -> np.ndarray:
    """Every number under `array`, nested arrays flattened, as float64; TypeError or
    ValueError when any value is not a number."""
    return np.frombuffer(array.as_buffer(of_type="d"), dtype=np.float64)


def brackets(body: bytes) -> int:
    """How many `[` the body holds: every array opens with one, and so may a string."""
    return int(np.count_nonzero(np.frombuffer(body, dtype=np.uint8) == _OPEN))


def is_object(value: Any) -> bool:
    return isinstance(value, simdjson.Object)


def is_array(value: Any) -> bool:
    return isinstance(value, simdjson.Array)
