"""KServe V1 request bodies to a validated feature matrix: JSON here, Arrow in v1_arrow.

Decoding is checked against the schema of the exact version that will answer (the
caller passes its features), so the matrix handed to the data plane is already valid.
Validation has a fast path for well-formed JSON (one numpy conversion and a few
vectorized checks); anything irregular falls back to a row-by-row walk whose only job is
to name the first problem precisely.
"""

from __future__ import annotations

import json
import math
import operator
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import orjson

from nonstop.errors import InvalidInput, PayloadTooLarge, clip
from nonstop.manifest import FeatureSpec
from nonstop.schema import rows_to_matrix
from serve_app.wire.limits import Limits
from serve_app.wire.numbers import finite_floats
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_matrix, is_arrow


def body_matrix(body: bytes, content_type: str | None, features: Sequence[FeatureSpec], limits: Limits) -> np.ndarray:
    """An Arrow IPC stream when the content type says so; anything else is read as JSON
    `{"instances": [...]}`, as clients that omit the content type expect."""
    if is_arrow(content_type):
        return arrow_matrix(body, list(features), limits)
    try:
        return instances_matrix(json_instances(body, limits), features, limits)
    except InvalidInput:
        # orjson reads an integer beyond 64 bits as the nearest double, which a numeric
        # feature makes of it anyway; but a refusal quotes the values it names, and must
        # quote them as Python's json reads them (as V2 does): refused bodies are read again
        return instances_matrix(json_instances(body, limits, fast=False), features, limits)


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


def instances_matrix(instances: list[Any], features: Sequence[FeatureSpec], limits: Limits) -> np.ndarray:
    """Instances (objects keyed by feature name or lists in schema order) as a matrix."""
    matrix = _fast_matrix(instances, _plan(features))
    return matrix if matrix is not None else _checked_matrix(instances, features, limits)


@dataclass(frozen=True)
class _Plan:
    """What the fast path needs of a schema, worked out once per served version (a
    request's features are its version's list, the same object every time)."""

    features: Sequence[FeatureSpec]
    numeric: bool
    names: list[str]
    pick: Callable[[dict[str, Any]], Any]  # an object's values in schema order


_PLANS: dict[int, _Plan] = {}
_MOST_PLANS = 16  # versions held at once are a few; the bound only stops growth


def _plan(features: Sequence[FeatureSpec]) -> _Plan:
    plan = _PLANS.get(id(features))
    if plan is not None and plan.features is features:
        return plan
    names = [f.name for f in features]
    single = len(names) == 1
    pick = (lambda instance: (instance[names[0]],)) if single else operator.itemgetter(*names)
    plan = _Plan(features, all(f.kind == "number" for f in features), names, pick)
    if len(_PLANS) >= _MOST_PLANS:
        _PLANS.clear()
    _PLANS[id(features)] = plan
    return plan


def _fast_matrix(instances: list[Any], plan: _Plan) -> np.ndarray | None:
    """An all-numeric schema, every instance the same shape, numbers only, all finite:
    the float matrix with no Python code run per value (serve_app/wire/numbers.py);
    anything else is None, for the checked path to refuse or convert. Objects whose keys
    come in the schema's order (what a client serialising its records sends) are read by
    their values, skipping a lookup per value."""
    if not plan.numeric:
        return None
    width = len(plan.names)
    kinds = set(map(type, instances))
    if kinds == {dict}:
        try:
            values = _object_values(instances, plan)
        except KeyError:
            return None
    elif kinds == {list} and set(map(len, instances)) == {width}:
        values = list(chain.from_iterable(instances))
    else:
        return None
    flat = None if values is None else finite_floats(values)
    return None if flat is None else flat.reshape(len(instances), width)


def _object_values(instances: list[dict[str, Any]], plan: _Plan) -> list[Any] | None:
    """Every object's values in schema order, row after row; None when one lacks a
    feature or has more than the schema's."""
    first = list(instances[0])
    if first == plan.names and all(map(first.__eq__, map(list, instances))):
        return list(chain.from_iterable(map(dict.values, instances)))
    if set(map(len, instances)) != {len(plan.names)}:
        return None
    return list(chain.from_iterable(map(plan.pick, instances)))  # a missing key raises KeyError


def _checked_matrix(instances: list[Any], features: Sequence[FeatureSpec], limits: Limits) -> np.ndarray:
    """The slow path: walk every value and name the first problem."""
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
