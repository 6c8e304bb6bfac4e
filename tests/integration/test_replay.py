"""`nonstop replay` on the suite's Ray cluster: a candidate scored on the traffic
production answered, compared with those answers and the labels, the evidence a signed
ledger entry `nonstop history` verifies; and `nonstop score --compare` of the same rows
gives the same summary.

The registry is the test's own (signed with a key), not the served app's: only the
cluster is shared. The captures are written as replicas write them (nonstop/capture.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics

from harness.rollout import Stack
from nonstop.capture import CaptureConfig, Served, filesystem, records_table, root_of, write_records
from nonstop.config import SIGNING_KEY_ENV
from nonstop.loading import TrustPolicy, load_version
from nonstop.outcomes import Outcome, check, store
from nonstop.registry import Registry
from tests.conftest import MODEL, train_into
from tests.unit.nonstop.test_signing import KEY
from training import demo

pytestmark = pytest.mark.integration
REQUESTS, ROWS_EACH = 60, 5


def _nonstop(served: Stack, registry: Registry, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nonstop_ops", *args, "--registry", registry.uri]
    env = {**os.environ, **served.cluster.client_environment(), SIGNING_KEY_ENV: KEY.get_secret_value()}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=env)


def _json_tail(stdout: str) -> dict[str, Any]:
    return json.loads(stdout[stdout.index("\n{") + 1 :])


def _captured_day(registry: Registry, tmp_path: Path) -> tuple[pd.DataFrame, np.ndarray, list[Any]]:
    """Production (v1) answered REQUESTS requests of ROWS_EACH rows today, labels arrived
    for every other one; a canary's shadow rows and last week's traffic are captured too.
    Returns the day's rows, production's answers and the labels (None where none arrived)."""
    production = load_version(registry, MODEL, 1, TrustPolicy())
    features = production.manifest.features
    frame = demo.day_frame(40, REQUESTS * ROWS_EACH)
    matrix = frame[[f.name for f in features]].to_numpy(dtype=np.float64)
    answers = production.predict(matrix)
    now = datetime.now(UTC)
    served, outcomes, labels = [], [], []
    for i in range(REQUESTS):
        rows = slice(i * ROWS_EACH, (i + 1) * ROWS_EACH)
        served.append(Served(f"r{i}", now, MODEL, 1, "primary", features, matrix[rows], answers[rows]))
        served.append(Served(f"r{i}", now, MODEL, 1, "shadow", features, matrix[rows], answers[rows]))
        served.append(Served(f"old{i}", now - timedelta(days=8), MODEL, 1, "primary", features, matrix[rows], answers[rows]))
        label = int(frame["target"].iloc[i * ROWS_EACH]) if i % 2 == 0 else None
        labels += [label] * ROWS_EACH
        if label is not None:
            outcomes.append(Outcome(request_id=f"r{i}", label=label))
    fs, path = filesystem(root_of(registry.uri, CaptureConfig()))
    write_records(fs, path, records_table(served))
    store(fs, path, MODEL, check(outcomes, production.manifest))
    return frame, np.asarray(answers), labels


def test_a_replay_compares_a_candidate_with_production_and_the_labels_into_a_signed_entry(
    served: Stack, trained: Registry, tmp_path: Path
) -> None:
    signed = Registry(trained.uri, signing_key=KEY)
    signed.sign_unsigned(MODEL)  # v1 and its alias, published before the key
    train_into(signed, demo.write_days(tmp_path / "newer", 2)[0].parent, promote=False)  # v2, the candidate
    frame, answers, labels = _captured_day(signed, tmp_path)

    done = _nonstop(served, signed, "replay", "2", "--model", MODEL, "--since", "1d", "--address", served.cluster.address)
    assert done.returncode == 0, done.stderr[-3000:]
    report = _json_tail(done.stdout)
    assert (report["captured"], report["scored"], report["rejected"], report["served_versions"]) == (REQUESTS * ROWS_EACH,) * 2 + (0, [1])

    candidate = load_version(signed, MODEL, 2, TrustPolicy())
    theirs = np.asarray(candidate.predict(frame[candidate.manifest.feature_names].to_numpy(dtype=np.float64)))
    found = report["comparison"]
    assert found["agreement"] == pytest.approx(float(np.mean(theirs == answers)), abs=1e-12)
    known = [i for i, label in enumerate(labels) if label is not None]
    truth = [labels[i] for i in known]
    assert found["labelled"] == len(known)
    assert found["baseline_metrics"]["accuracy"] == pytest.approx(metrics.accuracy_score(truth, answers[known]))
    assert found["candidate_metrics"]["accuracy"] == pytest.approx(metrics.accuracy_score(truth, theirs[known]))

    entry = signed.ledger(MODEL).verified()[-1]
    assert (entry.seq, entry.kind, entry.action, entry.candidate, entry.alias) == (report["ledger_seq"], "decision", "replay", 2, "production")
    assert entry.signature is not None and entry.evidence["replay"]["comparison"] == found
    history = _nonstop(served, signed, "history", "--model", MODEL)
    assert history.returncode == 0 and "decision/replay" in history.stdout and "chain: ok" in history.stdout, history.stderr

    # the same rows as a dataset: `nonstop score --compare` says the same of v2 against v1
    data = tmp_path / "day.parquet"
    frame.drop(columns=["target"]).assign(label=[np.nan if v is None else v for v in labels]).to_parquet(data, index=False)
    compared = _nonstop(served, signed, "score", "--model", MODEL, "--version", "2", "--compare", "1", "--label", "label",
                        "--data", str(data), "--out", str(tmp_path / "scored"), "--address", served.cluster.address)  # fmt: skip
    assert compared.returncode == 0, compared.stderr[-3000:]
    batch = _json_tail(compared.stdout)["comparison"]
    assert {k: v for k, v in batch.items() if k != "baseline"} == {k: v for k, v in found.items() if k != "baseline"}
    assert (batch["baseline"], found["baseline"]) == ("v1", "served")

