"""A short coverage-guided fuzzing run of every decoder of untrusted bytes, each in a
child process (tests/tools/fuzz/targets.py): zero crashes, zero unexpected exceptions. The long
run is `make fuzz` (30 minutes per target)."""

from __future__ import annotations

from pathlib import Path

from tests.tools.fuzz.runner import TARGETS, run

SECONDS = 5


def test_every_decoder_survives_a_short_fuzzing_run(tmp_path: Path) -> None:
    results = run(TARGETS, tmp_path, SECONDS)
    for result in results:
        assert not result.crashed, f"{result.target}: {result.output[-3000:]}"
        assert result.runs > 100, result.line()


def test_a_native_crash_in_the_child_is_reported_as_a_finding(tmp_path: Path) -> None:
    """The harness can fail: a segfault in fuzzed code ends the child, not the test run."""
    (result,) = run(("native-crash",), tmp_path, SECONDS)
    assert result.crashed and "deadly signal" in result.output, result.output[-2000:]
    assert list((tmp_path / "native-crash" / "artifacts").iterdir()), "the crashing input is kept"
