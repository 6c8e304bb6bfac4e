"""`nonstop train --data s3://...`: daily partitions on an object store, read with a date window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nonstop.registry import Registry
from tests.conftest import MODEL
from tests.tools.s3.test_s3_registry import BUCKET, prefix, s3, s3_endpoint  # noqa: F401  (fixtures)
from training import demo
from training.job import TrainOptions, train


def test_training_reads_the_last_days_of_partitions_from_s3(s3: Any, s3_endpoint: str, prefix: str, tmp_path: Path) -> None:
    for path in demo.write_days(tmp_path / "data", 5):
        key = f"{prefix}/data/{path.relative_to(tmp_path / 'data').as_posix()}"
        s3.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    data = f"s3://{BUCKET}/{prefix}/data?endpoint_override={s3_endpoint}&scheme=http"
    registry = Registry(str(tmp_path / "registry"))
    manifest = train(TrainOptions(data=data, model=MODEL, since="3d"), registry).manifest
    assert manifest.data.rows == 3 * demo.ROWS_PER_DAY
    assert manifest.data.source.endswith("(day 2026-11-03 to 2026-11-05, 3d)")
