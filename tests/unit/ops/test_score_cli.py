"""`nonstop score` refuses a version it must not run before any row is scored, as an
operator sees it: a real subprocess on a real registry. The refusal comes before a Ray
cluster is even joined, so these run without one: `--address` names a port nothing
listens on, and joining it would fail with another message."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import skops.io as sio
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from nonstop.config import SIGNING_KEY_ENV
from nonstop.registry import Registry
from tests.conftest import MODEL
from tests.unit.nonstop.test_loading import draft_of
from tests.unit.nonstop.test_signing import KEY

NO_CLUSTER = "127.0.0.1:9"


def _score(registry: Registry, out: Path, data: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nonstop_ops", "score", "--model", MODEL, "--data", str(data), "--out", str(out),
               "--registry", registry.uri, "--address", NO_CLUSTER, *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **(env or {})})


Setup = tuple[dict[str, str], list[str]]  # the job's environment, more arguments


def _corrupt(registry: Registry) -> Setup:
    artifact = Path(registry.uri) / MODEL / "versions" / "1" / "model.skops"
    artifact.write_bytes(artifact.read_bytes()[:-100])
    return {}, []


def _code_runner(registry: Registry) -> Setup:
    """Published properly, but loading it would call os.system."""
    hostile = make_pipeline(FunctionTransformer(os.system))
    registry.promote(MODEL, registry.publish(MODEL, sio.dumps(hostile), draft_of(registry, 1)).version)
    return {}, []


def _unsigned_with_a_key(registry: Registry) -> Setup:
    """Published without a key; the job runs with one, so signatures are required (the
    version by number: the unsigned alias would be refused first)."""
    return {SIGNING_KEY_ENV: KEY.get_secret_value()}, ["--version", "1"]


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (_corrupt, "version 1 refused (integrity): artifact sha256"),
        (_code_runner, "version 2 refused (untrusted_types)"),
        (_unsigned_with_a_key, "the manifest has no signature"),
    ],
)
def test_a_version_that_must_not_run_is_refused_before_any_row_naming_why(
    trained: Registry, demo_data: Path, tmp_path: Path, make: Callable[[Registry], Setup], why: str
) -> None:
    env, args = make(trained)
    out = tmp_path / "out"
    done = _score(trained, out, demo_data, *args, env=env)
    assert done.returncode == 2, done.stderr
    assert why in done.stderr and done.stderr.startswith("error: "), done.stderr
    assert "scoring" not in done.stderr and not out.exists()  # no cluster joined, nothing written


def test_probabilities_from_a_model_without_them_and_output_named_keys_are_refused_up_front(
    trained: Registry, demo_data: Path, tmp_path: Path
) -> None:
    done = _score(trained, tmp_path / "out", demo_data, "--keep", "prediction")
    assert done.returncode == 2 and "named like an output column: prediction" in done.stderr, done.stderr


def test_a_replay_of_a_window_without_captured_traffic_is_refused_naming_it(trained: Registry) -> None:
    command = [sys.executable, "-m", "nonstop_ops", "replay", "1", "--model", MODEL, "--since", "1d",
               "--registry", trained.uri, "--address", NO_CLUSTER]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "no traffic of 'breast_cancer' answered by production was captured since" in done.stderr
    assert all(entry.action != "replay" for entry in trained.ledger(MODEL).entries())


def test_batch_scoring_has_no_trust_of_its_own_beside_the_one_setting(trained: Registry, demo_data: Path, tmp_path: Path) -> None:
    """Trust beyond the format's list is NONSTOP_TRUSTED_TYPES alone, as serving reads it:
    a flag of one command would let batch scoring run what no replica would load."""
    done = _score(trained, tmp_path / "out", demo_data, "--trusted-type", "builtins.eval")
    assert done.returncode == 2 and "No such option" in done.stderr and "--trusted-type" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()
