"""`nonstop score` on the suite's Ray cluster answers, row for row, what the HTTP API
answers for the same version, and refuses the rows the API refuses, with its reasons.

The model has a categorical column and a nullable integer column beside the demo's
numbers, so the batch path decodes text, nulls and numbers as serving does. The app is
re-targeted to that model for the comparison, then put back on the suite's model.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from harness.rollout import Stack, wait_until
from nonstop.columns import MAX_STRING_LENGTH
from nonstop.loading import TrustPolicy, load_version
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_stream
from tests.conftest import MODEL, train_into
from tests.integration.conftest import swap_bound
from tests.tools.s3.test_s3_registry import BUCKET, s3_endpoint  # noqa: F401 - the moto server fixture
from training import demo

pytestmark = pytest.mark.integration
SCORED_MODEL = "scored-mixed"
DAYS = 3
CHUNK = 500


def mixed_frame(day: int, rows: int = 1000) -> pd.DataFrame:
    """A demo day with a text column and a nullable integer column, NA in both."""
    frame = demo.day_frame(day, rows)
    rng = np.random.default_rng(day)
    frame["colour"] = pd.array(rng.choice(["red", "green", "blue"], len(frame)), dtype="string")
    frame["visits"] = pd.array(rng.integers(0, 9, len(frame)), dtype="Int64")
    frame.loc[::10, ["colour", "visits"]] = pd.NA
    return frame


def write_partitions(folder: Path, label: str) -> tuple[pd.DataFrame, dict[int, str]]:
    """`day=<n>/part.parquet` folders, an `id` key, and a few rows serving refuses (a
    number that is not finite, a category over the length limit): the frame and the
    refused ids with the reason each must get."""
    frames = []
    for day in range(DAYS):
        frame = mixed_frame(100 + day).drop(columns=[label])
        frame.insert(0, "id", np.arange(len(frame)) + day * 100_000)
        frames.append(frame)
    whole = pd.concat(frames, ignore_index=True)
    number = next(c for c in whole.columns if c not in ("id", "colour", "visits"))
    whole[number] = whole[number].astype(float)
    refused = {}
    for position in range(7, len(whole), 401):
        row_id = int(whole.at[position, "id"])
        if position % 2:
            whole.at[position, number] = math.inf
            refused[row_id] = f"feature {number!r}: inf is not a finite number"
        else:
            whole.at[position, "colour"] = "x" * (MAX_STRING_LENGTH + 1)
            refused[row_id] = f"feature 'colour': string longer than {MAX_STRING_LENGTH} characters"
    for day in range(DAYS):
        part = folder / f"day={day}"
        part.mkdir(parents=True)
        rows = whole[whole["id"] // 100_000 == day]
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), part / "part.parquet")
    return whole, refused


def _instances(rows: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()}
            for r in rows.astype(object).to_dict("records")]  # fmt: skip


@pytest.fixture
def mixed(served: Stack, tmp_path: Path) -> Iterator[str]:
    """The app serving SCORED_MODEL v1; the predict URL."""
    registry = served.registry
    limit = swap_bound(served)
    if registry.resolve(SCORED_MODEL, "production") is None:
        path = tmp_path / "train.parquet"
        pd.concat([mixed_frame(d) for d in range(2)]).to_parquet(path, index=False)
        train_into(registry, path, model=SCORED_MODEL)
    served.deploy(model=SCORED_MODEL, allow_schema_change=True)
    try:
        wait_until(lambda: served.serving_everywhere(1, model=SCORED_MODEL), limit, f"every replica serving {SCORED_MODEL}")
        yield f"{served.cluster.http_url}/v1/models/{SCORED_MODEL}:predict"
    finally:
        served.deploy(allow_schema_change=True)
        current = registry.resolve(MODEL, "production") or 0
        wait_until(lambda: served.serving_everywhere(current), limit, f"back on {MODEL}")
        served.deploy()


def _nonstop_score(served: Stack, data: str, out: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    command = [sys.executable, "-m", "nonstop_ops", "score", "--model", SCORED_MODEL, "--data", data, "--out", out,
               "--registry", served.registry.uri, "--address", served.cluster.address, "--keep", "id", *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env={**os.environ, **served.cluster.client_environment(), **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    summary_at = done.stdout.index("{")
    assert f"with {SCORED_MODEL} v1" in done.stdout[:summary_at], done.stdout
    return json.loads(done.stdout[summary_at:])


def test_scoring_a_partitioned_dataset_answers_as_the_http_api_row_for_row(
    served: Stack, mixed: str, client: httpx.Client, tmp_path: Path
) -> None:
    manifest = served.registry.manifest(SCORED_MODEL, 1)
    assert {f.name: f.kind for f in manifest.features}["colour"] == "category"
    whole, refused = write_partitions(tmp_path / "data", manifest.label)
    summary = _nonstop_score(served, str(tmp_path / "data"), str(tmp_path / "out"), "--probabilities", "--workers", "2")
    assert (summary["version"], summary["scored"], summary["rejected"]) == (1, len(whole) - len(refused), len(refused))

    scored = pq.read_table(tmp_path / "out" / "scored").to_pandas().sort_values("id").set_index("id")
    rejects = pq.read_table(tmp_path / "out" / "rejects").to_pandas().set_index("id")
    assert dict(rejects["reason"]) == refused
    valid = whole[~whole["id"].isin(refused)]
    assert list(scored.index) == list(valid["id"]) and set(scored["version"]) == {1}

    features = manifest.feature_names
    for start in range(0, len(valid), CHUNK):
        rows = valid.iloc[start : start + CHUNK]
        answer = client.post(mixed, params={"probabilities": "true"}, json={"instances": _instances(rows[features])})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert scored.loc[rows["id"], "prediction"].tolist() == body["predictions"]
        assert np.allclose(np.stack(scored.loc[rows["id"], "probabilities"].to_numpy()), body["probabilities"], rtol=1e-12, atol=0)

    for row_id, reason in refused.items():  # the same refusal over HTTP (Arrow: it can carry inf)
        row = whole[whole["id"] == row_id][features]
        table = pa.Table.from_pandas(row, preserve_index=False)
        answer = client.post(mixed, content=arrow_stream(table), headers={"content-type": ARROW_STREAM})
        name, why = reason.split(": ", 1)  # "feature 'x': why"; the Arrow route names a column
        error = answer.json()["error"]
        assert answer.status_code == 422 and why in error and name.split(" ", 1)[1] in error, (reason, answer.text)


def test_scoring_reads_and_writes_s3_as_a_local_folder(served: Stack, s3_endpoint: str, tmp_path: Path) -> None:
    """The moto server on 127.0.0.1 stands in for the object store; the job reaches it
    through the endpoint and credentials in the URIs, which every read and write task is
    handed (the cluster's processes have no AWS settings of their own here)."""
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                           endpoint_override=s3_endpoint, scheme="http", allow_bucket_creation=True)  # fmt: skip
    fs.create_dir(BUCKET)
    manifest = served.registry.manifest(MODEL, served.registry.resolve(MODEL, "production") or 1)
    frame = demo.day_frame(7, 600).drop(columns=[manifest.label])
    frame.insert(0, "id", np.arange(len(frame)))
    for day in range(2):
        pq.write_table(pa.Table.from_pandas(frame[frame["id"] % 2 == day], preserve_index=False),
                       f"{BUCKET}/data/day={day}/part.parquet", filesystem=fs)  # fmt: skip

    uri = f"s3://testing:testing@{BUCKET}/{{}}?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    command = [sys.executable, "-m", "nonstop_ops", "score", "--model", MODEL, "--data", uri.format("data"),
               "--out", uri.format("out"), "--registry", served.registry.uri, "--address", served.cluster.address,
               "--keep", "id"]  # fmt: skip
    env = {**os.environ, **served.cluster.client_environment(), "AWS_EC2_METADATA_DISABLED": "true"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "testing:testing" not in done.stdout + done.stderr  # the credentials are never shown
    scored = pq.read_table(f"{BUCKET}/out/scored", filesystem=fs).to_pandas().sort_values("id")
    loaded = load_version(served.registry, MODEL, manifest.version, TrustPolicy())
    expected = loaded.predict(frame.sort_values("id")[manifest.feature_names].to_numpy(dtype=np.float64))
    assert scored["prediction"].tolist() == expected and len(scored) == len(frame)


def test_scoring_runs_as_a_ray_job_submitted_to_the_cluster(served: Stack, demo_data: Path, tmp_path: Path) -> None:
    """docs/batch.md's `ray job submit -- nonstop score ...`: the job's driver runs on the
    cluster, finds the registry the cluster was started with and the cluster itself, and
    scores the production version."""
    version = served.registry.resolve(MODEL, "production")
    rows = pq.read_table(demo_data).num_rows
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{served.cluster.dashboard_port}", "--",
               str(bin_dir / "nonstop"), "score", "--model", MODEL, "--data", str(demo_data), "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env={**os.environ, **served.cluster.client_environment()})
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert f"scored {rows} rows with {MODEL} v{version}" in done.stdout, done.stdout[-3000:]
    scored = pq.read_table(tmp_path / "out" / "scored")
    assert scored.num_rows == rows and set(scored.column("version").to_pylist()) == {version}
