"""A short coverage-guided fuzzing run of every decoder of untrusted bytes, each in a
child process (tests/tools/fuzz/targets.py): zero crashes, zero unexpected exceptions. The long
run is `make fuzz` (30 minutes per target)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tools.fuzz.runner import TARGETS, FuzzResult, run

SECONDS = 3
CRASH = "native-crash"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, FuzzResult]]:
    """Every target and the harness's own crash check, side by side, once."""
    work = tmp_path_factory.mktemp("fuzz")
    return work, {result.target: result for result in run((*TARGETS, CRASH), work, SECONDS)}


def test_every_decoder_survives_a_short_fuzzing_run(fuzzed: tuple[Path, dict[str, FuzzResult]]) -> None:
    _, results = fuzzed
    for target in TARGETS:
        result = results[target]
        assert not result.crashed, f"{result.target}: {result.output[-3000:]}"
        assert result.runs > 100, result.line()


def test_a_native_crash_in_the_child_is_reported_as_a_finding(fuzzed: tuple[Path, dict[str, FuzzResult]]) -> None:
    """The harness can fail: a segfault in fuzzed code ends the child, not the test run."""
    work, results = fuzzed
    result = results[CRASH]
    assert result.crashed and "deadly signal" in result.output, result.output[-2000:]
    assert list((work / CRASH / "artifacts").iterdir()), "the crashing input is kept"
