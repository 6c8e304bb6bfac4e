"""Instances as an Arrow IPC stream: the binary request body for large batches.

Decoding JSON costs time for every number, so a large request can spend far longer
being parsed than predicted; an Arrow stream holding one column per feature decodes
with a copy per column at most (throughput benchmark: docs/results/throughput.md). The
rules are JSON's: every feature present by name and nothing else, numbers finite, null
a missing value imputed as in training, strings within the length limit.

The body is untrusted bytes, so it is decoded only by pyarrow's IPC reader, and nothing
computes on it before pyarrow has fully validated it: the schema must hold exactly the
plain types a feature's kind allows (no extension, view, nested or unregistered types),
and every record batch, dictionaries included, passes `validate(full=True)` (offsets
within their buffers, UTF-8, null counts, dictionary indices). pyarrow's compute
kernels trust their input; an unvalidated string column whose offsets point past its
buffer crashes the process. Reading never runs code: extension metadata is refused, not
interpreted, and the columns are read as plain arrays, never through pandas metadata.
"""

from __future__ import annotations

import struct
from collections import Counter

import numpy as np
import pyarrow as pa

from nonstop.errors import InvalidInput, PayloadTooLarge, clip
from nonstop.columns import FLOAT64, number_refusal, number_values, string_values, type_problem
from nonstop.manifest import FeatureSpec
from nonstop.schema import columns_to_matrix
from serve_app.wire.limits import Limits, listed

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def arrow_stream(table: pa.Table) -> bytes:
    """The client side: a table, one column per feature, as the body to send."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def is_arrow(content_type: str | None) -> bool:
    return content_type is not None and content_type.split(";")[0].strip().lower() == ARROW_STREAM


def arrow_matrix(body: bytes, features: list[FeatureSpec], limits: Limits) -> np.ndarray:
    rows = _preflight(body)
    if rows > limits.max_instances:
        raise PayloadTooLarge(f"{rows} instances exceed the limit of {limits.max_instances} per request")
    table = _read(body, features)
    if table.num_rows == 0:
        raise InvalidInput("the Arrow stream has no rows: send at least one instance")
    fast = _fast_matrix(table, features)
    if fast is not None:
        return fast
    columns = [
        _numbers(table.column(f.name), f.name) if f.kind == "number" else _strings(table.column(f.name), f.name, limits)
        for f in features
    ]
    return columns_to_matrix(columns, features)


def _fast_matrix(table: pa.Table, features: list[FeatureSpec]) -> np.ndarray | None:
    """The common case in one pass: float64 columns without nulls, all finite. Anything
    else goes column by column, where the first problem gets its name."""
    columns = [table.column(f.name) for f in features]
    if not all(f.kind == "number" and c.type == FLOAT64 and c.null_count == 0 for f, c in zip(features, columns, strict=True)):
        return None
    matrix = columns_to_matrix([c.to_numpy() for c in columns], features)
    return matrix if np.isfinite(matrix).all() else None


def _preflight(body: bytes) -> int:
    """Rows declared by the stream's batches, read from their metadata before any body is
    decoded. Compressed batches are refused: a few kilobytes of zstd can declare gigabytes,
    which decoding would allocate before any row count could be checked."""
    rows = 0
    try:
        for message in pa.ipc.MessageReader.open_stream(pa.py_buffer(body)):
            if message.type in ("record batch", "dictionary"):
                length, compressed = _batch_header(message.metadata.to_pybytes(), message.type == "dictionary")
                if compressed:
                    raise InvalidInput("compressed Arrow streams are not accepted: send uncompressed buffers")
                rows += length if message.type == "record batch" else 0
    except (pa.ArrowException, OSError, ValueError, struct.error, IndexError) as exc:
        raise InvalidInput(f"request body is not a readable Arrow IPC stream: {clip(str(exc), 120)}") from exc
    return rows


def _batch_header(metadata: bytes, dictionary: bool) -> tuple[int, bool]:
    """(length, compressed) of the RecordBatch in a Message flatbuffer (Arrow's
    Message.fbs: Message.header is field 2; DictionaryBatch.data field 1; RecordBatch
    .length field 0 and .compression field 3). pyarrow's MessageReader has already run
    the flatbuffers verifier over these bytes (a message that fails it never reaches
    here), so this reads two fields of verified metadata, sizes only, in pure Python: a
    bad offset raises, it cannot crash (tests/tools/fuzz fuzzes it)."""
    header = _deref(metadata, _field(metadata, _deref(metadata, 0), 2))
    if dictionary:
        header = _deref(metadata, _field(metadata, header, 1))
    length_at = _field(metadata, header, 0)
    length = struct.unpack_from("<q", metadata, length_at)[0] if length_at else 0
    if length < 0:
        raise ValueError("negative batch length")
    return length, _field(metadata, header, 3) is not None


def _field(buffer: bytes, table: int, index: int) -> int | None:
    """Where field `index` of the flatbuffer table at `table` lies, None if absent."""
    vtable = table - struct.unpack_from("<i", buffer, table)[0]
    if not 0 <= vtable < len(buffer):
        raise ValueError("flatbuffer vtable out of bounds")
    slot = 4 + 2 * index
    if slot >= struct.unpack_from("<H", buffer, vtable)[0]:
        return None
    offset = struct.unpack_from("<H", buffer, vtable + slot)[0]
    return table + offset if offset else None


def _deref(buffer: bytes, at: int | None) -> int:
    if at is None:
        raise ValueError("flatbuffer field missing")
    return at + struct.unpack_from("<I", buffer, at)[0]


def _read(body: bytes, features: list[FeatureSpec]) -> pa.Table:
    """The stream's batches, each fully validated by pyarrow before anything reads a value.
    The schema is checked first, so a refused type never reaches a batch at all."""
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(body))
        _check_schema(reader.schema, features)
        batches = []
        for batch in reader:
            batch.validate(full=True)
            batches.append(batch)
        return pa.Table.from_batches(batches, reader.schema)
    except (pa.ArrowException, OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidInput(f"request body is not a readable Arrow IPC stream: {clip(str(exc), 120)}") from exc


def _check_schema(schema: pa.Schema, features: list[FeatureSpec]) -> None:
    given = schema.names
    repeated = sorted(name for name, count in Counter(given).items() if count > 1)
    if repeated:
        raise InvalidInput(f"column(s) given more than once: {listed(repeated)}")
    names = [f.name for f in features]
    present = set(given)
    missing = [n for n in names if n not in present]
    if missing:
        raise InvalidInput(f"missing feature column(s) {', '.join(missing)}")
    unknown = sorted(present - set(names))
    if unknown:
        raise InvalidInput(f"unknown column(s) {listed(unknown)}")
    for spec in features:
        problem = type_problem(schema.field(spec.name), spec)
        if problem:
            raise InvalidInput(problem)


def _numbers(column: pa.ChunkedArray, name: str) -> np.ndarray:
    values, bad = number_values(column)
    if bad.any():
        row = int(np.argmax(bad))
        raise InvalidInput(f"instance {row}, {number_refusal(name, values[row])}")
    return values


def _strings(column: pa.ChunkedArray, name: str, limits: Limits) -> np.ndarray:
    values, too_long = string_values(column, limits.max_string_length)
    if too_long.any():
        raise InvalidInput(f"column {name!r}: string longer than {limits.max_string_length} characters")
    return values
