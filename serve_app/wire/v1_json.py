"""KServe V1 request bodies to a validated feature matrix: JSON here, Arrow in v1_arrow.

Decoding is checked against the schema of the exact version that will answer (the
caller passes its features), so the matrix handed to the data plane is already valid.
An all-numeric schema has two fast paths. Rows as lists of numbers are parsed by
simdjson straight into a buffer of doubles, with no Python object per value (the body of
a 1,000-row request holds tens of thousands). Otherwise the body is decoded against the
schema itself (msgspec, typed), objects by name as cheaply as lists, into one numpy
conversion. Anything neither takes is parsed as plain JSON (orjson, then Python's json)
and walked row by row, whose job is to accept what the fast paths would not and to name
the first problem precisely: a fast path never decides a refusal.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import msgspec
import numpy as np
import orjson
from msgspec.structs import astuple

from nonstop.errors import InvalidInput, PayloadTooLarge, clip
from nonstop.manifest import FeatureSpec
from nonstop.schema import rows_to_matrix
from serve_app.wire import json_buffer
from serve_app.wire.limits import Limits
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_matrix, is_arrow


def body_matrix(body: bytes, content_type: str | None, features: Sequence[FeatureSpec], limits: Limits) -> np.ndarray:
    """An Arrow IPC stream when the content type says so; anything else is read as JSON
    `{"instances": [...]}`, as clients that omit the content type expect."""
    if is_arrow(content_type):
        return arrow_matrix(body, list(features), limits)
    typed = _typed_matrix(body, _plan(features), limits)
    if typed is not None:
        return typed
    try:
        return _checked_matrix(json_instances(body, limits), features, limits)
    except InvalidInput:
        # orjson reads an integer beyond 64 bits as the nearest double, which a numeric
        # feature makes of it anyway; but a refusal quotes the values it names, and must
        # quote them as Python's json reads them (as V2 does): refused bodies are read again
        return _checked_matrix(json_instances(body, limits, fast=False), features, limits)


def json_instances(body: bytes, limits: Limits, fast: bool = True) -> list[Any]:
    payload = _parse_json(body, fast)
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidInput('request body must be a JSON object with an "instances" list')
    unknown = sorted(set(payload) - {"instances"})
    if unknown:
        raise InvalidInput(f"unknown request field(s): {', '.join(clip(u) for u in unknown)}")
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidInput('"instances" must be a list')
    if not instances:
        raise InvalidInput('"instances" is empty: send at least one instance')
    if len(instances) > limits.max_instances:
        raise PayloadTooLarge(f"{len(instances)} instances exceed the limit of {limits.max_instances} per request")
    return instances


def _parse_json(body: bytes, fast: bool = True) -> Any:
    """orjson reads a well-formed body faster than Python's json (unless not `fast`). What
    orjson refuses is read again by Python's json, whose answers the API keeps: NaN and
    Infinity literals read, then refused naming the row and feature; its own messages for
    everything else. Both are strict parsers of the same format, and the body is bounded
    before either sees it."""
    if fast:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(body)
    except RecursionError as exc:
        raise InvalidInput("request body is nested too deeply") from exc
    except ValueError as exc:  # bad JSON or encoding, or an integer of over 4300 digits
        raise InvalidInput(
            f"request body is not valid JSON: {exc} (binary instances go as Content-Type: {ARROW_STREAM})"
        ) from exc


@dataclass(frozen=True)
class _Plan:
    """The typed decoder of an all-numeric schema, built once per served version (a
    request's features are its version's list, the same object every time)."""

    features: Sequence[FeatureSpec]
    decoder: msgspec.json.Decoder[Any] | None  # None: a schema with a category


# Least recently used first. A replica of a many-models app serves hundreds of versions
# in turn, and building a plan (a struct type and its decoder) costs far more than
# decoding a one-row body, so the bound is well above any replica's hot versions
_PLANS: OrderedDict[int, _Plan] = OrderedDict()
_PLANS_LOCK = threading.Lock()
_MOST_PLANS = 512


def _plan(features: Sequence[FeatureSpec]) -> _Plan:
    with _PLANS_LOCK:
        plan = _PLANS.get(id(features))
        if plan is not None and plan.features is features:
            _PLANS.move_to_end(id(features))
            return plan
    decoder = None
    if all(f.kind == "number" for f in features):
        fields = [f"f{i}" for i in range(len(features))]  # a feature's name need not be an identifier
        named = msgspec.defstruct(
            "Instance",
            [(field, float) for field in fields],
            forbid_unknown_fields=True,
            rename={field: f.name for field, f in zip(fields, features, strict=True)},
        )
        listed = tuple[(float,) * len(fields)]  # type: ignore[misc]
        body = msgspec.defstruct("Body", [("instances", list[named | listed])], forbid_unknown_fields=True)  # type: ignore[valid-type]
        decoder = msgspec.json.Decoder(body)
    plan = _Plan(features, decoder)
    with _PLANS_LOCK:
        _PLANS[id(features)] = plan
        _PLANS.move_to_end(id(features))
        while len(_PLANS) > _MOST_PLANS:
            _PLANS.popitem(last=False)
    return plan


def _typed_matrix(body: bytes, plan: _Plan, limits: Limits) -> np.ndarray | None:
    """The fast path, for an all-numeric schema: msgspec decodes the body against the
    schema itself (every instance an object with exactly the schema's names, or a list of
    its width; every value a JSON number within a float's range), so no Python code runs
    per value and objects cost about what lists do. Anything it does not take (null, a
    bool, a string, a missing or unknown feature, NaN, an integer beyond a float, bad
    JSON, no instances or too many) gives None, for the checked path to accept or refuse
    in its own words: the fast path never decides a refusal."""
    if plan.decoder is None:
        return None
    listed = _listed_matrix(body, len(plan.features), limits)
    if listed is not None:
        return listed
    try:
        instances = plan.decoder.decode(body).instances
    except msgspec.DecodeError:  # msgspec.ValidationError included
        return None
    if not 0 < len(instances) <= limits.max_instances:
        return None
    kinds = set(map(type, instances))
    if kinds == {tuple}:
        rows: Iterable[tuple[float, ...]] = instances
    elif tuple not in kinds:
        rows = map(astuple, instances)  # an object's values in its fields' order: the schema's
    else:
        rows = [i if type(i) is tuple else astuple(i) for i in instances]
    width = len(plan.features)
    matrix = np.fromiter(chain.from_iterable(rows), dtype=np.float64, count=len(instances) * width)
    return matrix.reshape(len(instances), width)


def _listed_matrix(body: bytes, width: int, limits: Limits) -> np.ndarray | None:
    """`{"instances": [[number, ...], ...]}` as doubles, read as one flat buffer
    (serve_app/wire/json_buffer.py), or None for the other paths. Only large bodies whose
    rows look like lists (the first `[` opens a `[`) are tried. The buffer flattens nested
    arrays, so the structure is checked: the only key is `instances`; each row is `width`
    long; every value is a number (a string, bool or null makes the buffer refuse, so the
    key is the body's only string and every `[` in the body opens an array) and there is
    one `[` per row plus the list's own, so no row holds an array; every number is finite."""
    if len(body) < json_buffer.MIN_BYTES:
        return None
    head = body[:256]
    first = head.find(b"[")
    if first < 0 or head[first + 1 :].lstrip()[:1] != b"[":
        return None
    document = json_buffer.parse(body)
    if document is None:
        return None
    try:
        if not json_buffer.is_object(document) or list(document.keys()) != ["instances"]:
            return None
        instances = document["instances"]
        rows = len(instances) if json_buffer.is_array(instances) else 0
        if not 0 < rows <= limits.max_instances or any(len(row) != width for row in instances):
            return None
        flat = json_buffer.doubles(instances)
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError):  # a value not a number; whatever else, the other paths decide
        return None
    finally:
        document = instances = None  # the parser takes the next body only once nothing points into this one
    if flat.size != rows * width or json_buffer.brackets(body) != rows + 1:
        return None
    if not np.isfinite(flat).all():
        return None
    return flat.reshape(rows, width)


def _checked_matrix(instances: list[Any], features: Sequence[FeatureSpec], limits: Limits) -> np.ndarray:
    """Instances (objects keyed by feature name or lists in schema order) as a matrix:
    the slow path, walking every value and naming the first problem."""
    names = [f.name for f in features]
    rows = []
    for index, instance in enumerate(instances):
        if isinstance(instance, dict):
            missing = [n for n in names if n not in instance]
            if missing:
                raise InvalidInput(f"instance {index}: missing feature(s) {', '.join(missing)}")
            if len(instance) != len(names):
                extra = sorted(set(instance) - set(names))
                raise InvalidInput(f"instance {index}: unknown feature(s) {', '.join(clip(e) for e in extra)}")
            row = [instance[n] for n in names]
        elif isinstance(instance, list):
            if len(instance) != len(names):
                raise InvalidInput(f"instance {index}: expected {len(names)} values in schema order, got {len(instance)}")
            row = instance
        else:
            raise InvalidInput(f"instance {index}: must be an object keyed by feature name or a list of values")
        for spec, value in zip(features, row, strict=True):
            _check_value(index, spec, value, limits)
        rows.append(row)
    return rows_to_matrix(rows, features)


def _check_value(index: int, spec: FeatureSpec, value: Any, limits: Limits) -> None:
    if value is None:
        return  # documented: a missing value, imputed as in training
    if spec.kind == "number":
        if type(value) is float:
            if not math.isfinite(value):
                raise InvalidInput(f"instance {index}, feature {spec.name!r}: {value} is not a finite number")
            return
        if type(value) is int:
            if abs(value) > sys.float_info.max:
                raise InvalidInput(f"instance {index}, feature {spec.name!r}: {_short(value)} is too large for a float")
            return
        raise InvalidInput(
            f"instance {index}, feature {spec.name!r}: expected a number, got {type(value).__name__} {_short(value)}"
        )
    if not isinstance(value, str):
        raise InvalidInput(
            f"instance {index}, feature {spec.name!r}: expected a string, got {type(value).__name__} {_short(value)}"
        )
    if len(value) > limits.max_string_length:
        raise InvalidInput(
            f"instance {index}, feature {spec.name!r}: string longer than {limits.max_string_length} characters"
        )


def _short(value: Any) -> str:
    return clip(json.dumps(value))
