"""The body-size benchmark's bodies: the padded one must be lists to a decoder and by name to the wire."""

from __future__ import annotations

import json

from benchmarks.body_size import LISTS, NAMED, PADDED, bodies


def test_the_padded_body_holds_the_lists_and_is_the_size_of_the_body_by_name() -> None:
    rows = [[1.5, -2.0, 3e-7], [0.0, 4.25, 1e10]]
    made = bodies(rows, ["a", "b", "c"])
    assert len(made[PADDED]) == len(made[NAMED]) > len(made[LISTS])
    assert json.loads(made[PADDED]) == json.loads(made[LISTS]) == {"instances": rows}
    assert json.loads(made[NAMED]) == {"instances": [dict(zip("abc", row, strict=True)) for row in rows]}
