"""The registry on S3-compatible object storage, as the Kubernetes manifests use it.

A moto server on 127.0.0.1 stands in for the object store; the registry reaches it
through pyarrow's S3 filesystem exactly as pods do, with the endpoint either in the URI
or in AWS_ENDPOINT_URL (the nonstop-s3 Secret's way).
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from nonstop.errors import VersionNotFound
from nonstop.loading import TrustPolicy, load_version
from nonstop.registry import PRODUCTION, AliasRecord, Registry
from nonstop.schema import rows_to_matrix
from tests.conftest import MODEL, train_into

BUCKET = "nonstop-models"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Fake credentials, nothing read from ~/.aws, no instance-metadata lookups."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    client = boto3.client("s3", endpoint_url=f"http://{s3_endpoint}", region_name="us-east-1")
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A fresh folder of the bucket for each test."""
    return f"registry/{request.node.name}"


@pytest.fixture
def s3_registry(s3: Any, s3_endpoint: str, prefix: str) -> Registry:
    return Registry(f"s3://{BUCKET}/{prefix}?endpoint_override={s3_endpoint}&scheme=http")


def keys(client: Any, prefix: str) -> list[str]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    return sorted(o["Key"].removeprefix(f"{prefix}/") for o in listing.get("Contents", []))


def test_publish_promote_rollback_and_load_through_s3(s3_registry: Registry, demo_data: Path) -> None:
    assert s3_registry.models() == []
    first = train_into(s3_registry, demo_data)
    second = train_into(s3_registry, demo_data, promote=False)
    assert (first.manifest.version, first.promoted, second.manifest.version) == (1, True, 2)
    assert s3_registry.models() == [MODEL]
    assert s3_registry.versions(MODEL) == [1, 2]
    artifact = s3_registry.read_artifact(MODEL, 2)
    assert hashlib.sha256(artifact).hexdigest() == s3_registry.manifest(MODEL, 2).sha256

    assert s3_registry.resolve(MODEL, PRODUCTION) == 1
    assert s3_registry.promote(MODEL, 2).version == 2
    assert s3_registry.rollback(MODEL).version == 1
    moves = [e for e in s3_registry.ledger(MODEL).verified() if e.kind == "alias_move"]
    assert [(e.action, e.version) for e in moves] == [("promote", 1), ("promote", 2), ("rollback", 1)]
    assert s3_registry.aliases(MODEL)[PRODUCTION].ledger_seq == moves[-1].seq

    loaded = load_version(s3_registry, MODEL, 1, TrustPolicy())
    samples = loaded.manifest.samples
    assert loaded.version == 1
    assert loaded.predict(rows_to_matrix(samples.inputs, loaded.manifest.features)) == samples.outputs


def test_a_version_is_invisible_until_its_manifest_lands(
    s3_registry: Registry, s3: Any, prefix: str, demo_data: Path
) -> None:
    train_into(s3_registry, demo_data)
    # A publisher that died after writing v2's artifact, before its manifest.
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{MODEL}/versions/2/model.skops", Body=b"half")
    assert s3_registry.versions(MODEL) == [1]
    with pytest.raises(VersionNotFound):
        s3_registry.manifest(MODEL, 2)
    assert train_into(s3_registry, demo_data, promote=False).manifest.version == 3
    assert s3_registry.versions(MODEL) == [1, 3]


def test_an_alias_is_one_object_replaced_whole(s3_registry: Registry, s3: Any, prefix: str, demo_data: Path) -> None:
    train_into(s3_registry, demo_data)
    train_into(s3_registry, demo_data, promote=False)
    s3_registry.promote(MODEL, 2)
    s3_registry.rollback(MODEL)
    aliases = [k for k in keys(s3, prefix) if k.startswith(f"{MODEL}/aliases/")]
    assert aliases == [f"{MODEL}/aliases/{PRODUCTION}.json"], "no temporary or partial alias objects"
    body = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{aliases[0]}")["Body"].read()
    assert AliasRecord.model_validate_json(body) == s3_registry.alias(MODEL, PRODUCTION)
    assert s3_registry.resolve(MODEL, PRODUCTION) == 1


def test_the_endpoint_can_come_from_the_environment(
    s3: Any, s3_endpoint: str, prefix: str, monkeypatch: pytest.MonkeyPatch, demo_data: Path
) -> None:
    """On Kubernetes the URI stays plain; an S3-compatible endpoint comes with the Secret."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3_endpoint}")
    registry = Registry(f"s3://{BUCKET}/{prefix}")
    assert train_into(registry, demo_data).manifest.version == 1
    assert f"{MODEL}/versions/1/manifest.json" in keys(s3, prefix)
    assert registry.resolve(MODEL, PRODUCTION) == 1


def test_captures_and_outcomes_written_and_read_through_s3(s3: Any, s3_registry: Registry, prefix: str) -> None:
    """The capture layout on an object store: files put whole under their final names
    (nothing with the temporary name is left behind), read back and joined by request id."""
    from datetime import UTC, datetime

    import numpy as np

    from nonstop.capture import CaptureConfig, FeatureSpec, Served, filesystem, records_table, root_of, write_records
    from nonstop.outcomes import Checked, joined, store

    fs, root = filesystem(root_of(s3_registry.uri, CaptureConfig()))
    features = [FeatureSpec(name="x", kind="number", dtype="float64")]
    write_records(fs, root, records_table([Served("r1", datetime.now(UTC), "m", 1, "primary", features, np.array([[1.0]]), [1])]))
    store(fs, root, "m", Checked(["r1"], [1]))
    files = [k for k in keys(s3, prefix) if k and not k.endswith("/")]  # pyarrow leaves folder markers beside them
    assert len(files) == 2 and all(k.startswith("captures/") and k.endswith(".parquet") and "/_" not in k for k in files)
    frame = joined(fs, root, "m")
    assert frame[["request_id", "prediction", "label"]].values.tolist() == [["r1", 1, 1]]
