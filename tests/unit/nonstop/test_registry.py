from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nonstop.errors import ConfigError, OldAliasFormat, VersionNotFound
from nonstop.manifest import DataFingerprint, FeatureSpec, ManifestDraft, SampleSet
from nonstop.registry import Registry

DRAFT = ManifestDraft(
    features=[FeatureSpec(name="x", kind="number", dtype="float64")],
    label="y",
    classes=[0, 1],
    data=DataFingerprint(rows=10, sha256="0" * 64, source="test"),
    metrics={"accuracy": 1.0},
    libraries={},
    samples=SampleSet(inputs=[[1.0]], outputs=[1]),
)


def test_publish_assigns_increasing_versions_and_digests(registry: Registry) -> None:
    first = registry.publish("m", b"one", DRAFT)
    second = registry.publish("m", b"two", DRAFT)
    assert (first.version, second.version) == (1, 2)
    assert registry.versions("m") == [1, 2]
    assert registry.read_artifact("m", 2) == b"two"
    assert first.sha256 != second.sha256


def test_version_without_manifest_is_invisible(registry: Registry, tmp_path: Path) -> None:
    registry.publish("m", b"one", DRAFT)
    # a publisher that died after claiming v2 and writing the artifact, before the manifest
    crashed = tmp_path / "registry" / "m" / "versions" / "2"
    crashed.mkdir()
    (crashed / "model.skops").write_bytes(b"half")
    assert registry.versions("m") == [1]
    with pytest.raises(VersionNotFound):
        registry.manifest("m", 2)
    assert registry.publish("m", b"three", DRAFT).version == 3


def test_promote_rollback_and_history(registry: Registry, tmp_path: Path) -> None:
    """The ledger is the alias's history and its rollback lineage; the alias file names
    the entry that moved it last."""
    for payload in (b"1", b"2", b"3"):
        registry.publish("m", payload, DRAFT)
    registry.promote("m", 1)
    registry.promote("m", 2)
    registry.promote("m", 3)
    assert registry.rollback("m").version == 2
    assert registry.rollback("m").version == 1
    with pytest.raises(ConfigError, match="no previous target"):
        registry.rollback("m")
    record = registry.alias("m", "production")
    moves = [e for e in registry.ledger("m").verified() if e.kind == "alias_move"]
    assert [(e.action, e.version) for e in moves] == [
        ("promote", 1), ("promote", 2), ("promote", 3), ("rollback", 2), ("rollback", 1),
    ]  # fmt: skip
    assert (record.ledger_seq, record.ledger_hash) == (moves[-1].seq, moves[-1].hash)
    assert "history" not in json.loads((tmp_path / "registry" / "m" / "aliases" / "production.json").read_text())


def test_alias_never_points_at_a_missing_version(registry: Registry) -> None:
    registry.publish("m", b"1", DRAFT)
    with pytest.raises(VersionNotFound):
        registry.promote("m", 7)
    assert registry.resolve("m", "production") is None


def test_alias_file_is_replaced_whole(registry: Registry, tmp_path: Path) -> None:
    registry.publish("m", b"1", DRAFT)
    registry.promote("m", 1, alias="canary")
    folder = tmp_path / "registry" / "m" / "aliases"
    assert sorted(p.name for p in folder.iterdir()) == ["canary.json"]  # no temporary left behind
    assert json.loads((folder / "canary.json").read_text())["version"] == 1


def test_extras_are_published_with_the_version(registry: Registry, tmp_path: Path) -> None:
    registry.publish("m", b"1", DRAFT, {"card.md": b"# card"})
    assert registry.read_extra("m", 1, "card.md") == b"# card"
    assert registry.read_extra("m", 1, "card.png") is None  # optional: older versions have none
    assert registry.extra_uri("m", 1, "card.md") == str(tmp_path / "registry" / "m" / "versions" / "1" / "card.md")
    with pytest.raises(VersionNotFound):
        registry.read_extra("m", 2, "card.md")
    with pytest.raises(ConfigError, match="reserved"):
        registry.publish("m", b"2", DRAFT, {"manifest.json": b"{}"})
    with pytest.raises(ConfigError, match="invalid extra name"):
        registry.publish("m", b"2", DRAFT, {"../escape": b""})
    assert registry.versions("m") == [1]  # a refused publish claims no version


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "x" * 80, ".hidden"])
def test_bad_names_are_refused(registry: Registry, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid model name"):
        registry.publish(name, b"1", DRAFT)


def _publish_many(uri: str, count: int, out: multiprocessing.Queue) -> None:
    """One publisher process with `count` publishes in flight at once."""
    registry = Registry(uri)
    payloads = [f"{os.getpid()}-{i}".encode() for i in range(count)]
    with ThreadPoolExecutor(max_workers=count) as pool:
        for payload, manifest in zip(payloads, pool.map(lambda p: registry.publish("m", p, DRAFT), payloads), strict=True):
            out.put((manifest.version, payload))


def test_concurrent_publishers_get_unique_versions_and_none_is_lost(registry: Registry) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = ctx.Queue()
    workers = [ctx.Process(target=_publish_many, args=(registry.uri, 5, queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    published = dict(queue.get(timeout=10) for _ in range(20))
    assert sorted(published) == list(range(1, 21))  # 20 distinct numbers: no two publishes shared one
    assert registry.versions("m") == sorted(published)
    for version, payload in published.items():
        assert registry.read_artifact("m", version) == payload  # each version holds what its publisher wrote


def test_an_alias_file_of_the_old_format_is_refused_naming_the_file(registry: Registry, tmp_path: Path) -> None:
    """Alias history now lives in the ledger: an alias file with a history list (written
    before) is refused with a clear error, and promoting the alias again rewrites it."""
    registry.publish("m", b"1", DRAFT)
    path = tmp_path / "registry" / "m" / "aliases" / "production.json"
    path.parent.mkdir(parents=True)
    old = {"alias": "production", "version": 1, "history": [{"version": 1, "action": "promote", "at": "2026-01-01T00:00:00Z"}]}
    path.write_text(json.dumps(old))
    with pytest.raises(OldAliasFormat, match="production.json.*old format.*promote the alias again"):
        registry.resolve("m", "production")
    registry.promote("m", 1)
    assert registry.alias("m", "production").ledger_seq == 1
