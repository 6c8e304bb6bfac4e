"""A short structure-aware fuzzing run of every trusted family with internal arrays
(tests/tools/fuzz/artifacts.py), each in a child process: zero crashes, zero hangs. The
long run is `make fuzz`."""

from __future__ import annotations

import pytest

from tests.tools.fuzz.runner import ARTIFACT_TARGETS, run

SECONDS = 3


def test_every_trusted_family_survives_mutated_arrays(tmp_path_factory: pytest.TempPathFactory) -> None:
    work = tmp_path_factory.mktemp("fuzz-artifacts")
    for result in run(ARTIFACT_TARGETS, work, SECONDS):
        assert not result.crashed, f"{result.target}: {result.output[-3000:]}"
        assert result.runs > 20, result.line()
