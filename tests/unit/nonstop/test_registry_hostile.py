"""What a hostile or broken registry holds: every case is a typed refusal, never a crash,
a hang or a file read from outside the version's folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydantic import SecretStr

from nonstop.errors import (
    ArtifactUnreadableError,
    ConfigError,
    ManifestError,
    RegistryError,
    StorageError,
    StoredFileTooLarge,
    TamperedAliasError,
)
from nonstop.registry import MAX_ALIAS_BYTES, MAX_MANIFEST_BYTES, Registry, check_name
from tests.unit.nonstop.test_registry import DRAFT

KEY = SecretStr("k" * 32)


def _folder(registry: Registry, *parts: str) -> Path:
    return Path(registry.uri, "m", *parts)


def test_a_signed_alias_copied_over_another_alias_is_refused(tmp_path: Path) -> None:
    """The signature covered the record, not the file it lies in: a signed `canary` copied
    over `production` was followed."""
    signed = Registry(str(tmp_path / "registry"), signing_key=KEY)
    for payload in (b"1", b"2"):
        signed.publish("m", payload, DRAFT)
    signed.promote("m", 1)
    signed.promote("m", 2, alias="canary")
    aliases = _folder(signed, "aliases")
    shutil.copy(aliases / "canary.json", aliases / "production.json")
    with pytest.raises(TamperedAliasError, match="alias 'production' of 'm' holds the record of alias 'canary'"):
        signed.alias("m", "production")
    assert signed.resolve("m", "canary") == 2


@pytest.mark.parametrize("folder", ["²", "01", "١", "1 ", "0", "-1", "+1"])
def test_folders_that_are_not_canonical_version_numbers_are_skipped_and_listed(registry: Registry, folder: str) -> None:
    """`²` passed str.isdigit and crashed int(); `01` was a second folder for version 1."""
    registry.publish("m", b"one", DRAFT)
    shutil.copytree(_folder(registry, "versions", "1"), _folder(registry, "versions", folder))
    assert registry.versions("m") == [1]
    assert registry.models() == ["m"]
    assert registry.publish("m", b"two", DRAFT).version == 2
    assert f"versions/{folder}: not a version number (ignored)" in registry.leftovers("m")


@pytest.mark.parametrize("name", ["iris\n", "iris\r", "\niris", "ir/is", "..", "iris\x00"])
def test_names_with_a_trailing_newline_or_a_path_are_refused(registry: Registry, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid model name"):
        check_name("model", name)
    with pytest.raises(ConfigError, match="invalid model name"):
        registry.publish(name, b"one", DRAFT)


def test_oversized_manifest_and_alias_files_are_refused_before_parsing(registry: Registry) -> None:
    registry.publish("m", b"one", DRAFT)
    registry.promote("m", 1)
    manifest = _folder(registry, "versions", "1", "manifest.json")
    manifest.write_bytes(manifest.read_bytes() + b" " * MAX_MANIFEST_BYTES)  # still valid JSON
    with pytest.raises(StoredFileTooLarge, match=f"manifest.json is larger than the limit of {MAX_MANIFEST_BYTES} bytes"):
        registry.manifest("m", 1)
    alias = _folder(registry, "aliases", "production.json")
    alias.write_bytes(alias.read_bytes() + b" " * MAX_ALIAS_BYTES)
    with pytest.raises(StoredFileTooLarge, match="production.json is larger than the limit"):
        registry.alias("m", "production")


@pytest.mark.parametrize("artifact", ["/etc/hostname", "../../../m/versions/1/model.skops", "manifest.json", "a/b"])
def test_the_manifests_artifact_must_be_a_file_in_its_own_folder(registry: Registry, artifact: str) -> None:
    """An absolute or `../` path loaded any file, and the metadata endpoint showed its hash."""
    registry.publish("m", b"one", DRAFT)
    manifest = _folder(registry, "versions", "1", "manifest.json")
    manifest.write_text(manifest.read_text().replace('"artifact": "model.skops"', f'"artifact": "{artifact}"'))
    assert registry.manifest("m", 1).artifact == artifact
    with pytest.raises(ManifestError, match="is not a file name inside the version's folder"):
        registry.read_artifact("m", 1)


def test_a_fifo_a_device_or_a_missing_artifact_is_a_typed_refusal_not_a_hang(registry: Registry) -> None:
    """A FIFO blocked the loader forever (holding the holder's lock); /dev/zero never ended."""
    registry.publish("m", b"one", DRAFT)
    artifact = _folder(registry, "versions", "1", "model.skops")
    artifact.unlink()
    with pytest.raises(ArtifactUnreadableError, match="refused \\(storage\\).*No such file"):
        registry.read_artifact("m", 1)
    os.mkfifo(artifact)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            registry.read_artifact("m", 1)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO artifact hangs"
    assert isinstance(outcome[0], ArtifactUnreadableError) and "not a regular file" in str(outcome[0])
    artifact.unlink()
    artifact.symlink_to("/dev/zero")
    with pytest.raises(ArtifactUnreadableError, match="refused \\(storage\\)"):
        registry.read_artifact("m", 1)


def test_an_artifact_over_the_bound_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    bounded = Registry(str(tmp_path / "registry"), max_artifact_bytes=1000)
    bounded.publish("m", b"x" * 1000, DRAFT)
    assert bounded.read_artifact("m", 1) == b"x" * 1000
    bounded.publish("m", b"x" * 1001, DRAFT)
    with pytest.raises(ArtifactUnreadableError, match="larger than the limit of 1000 bytes"):
        bounded.read_artifact("m", 2)


def test_an_unreadable_registry_folder_is_a_typed_storage_error(registry: Registry) -> None:
    registry.publish("m", b"one", DRAFT)
    versions = _folder(registry, "versions")
    shutil.rmtree(versions)
    versions.write_bytes(b"a file where a folder belongs")
    with pytest.raises(StorageError, match="cannot access .*versions: Not a directory"):
        registry.versions("m")
    assert issubclass(StorageError, RegistryError)


def test_what_a_killed_publisher_leaves_is_skipped_and_listed(registry: Registry) -> None:
    registry.publish("m", b"one", DRAFT)
    registry.promote("m", 1)
    claimed = _folder(registry, "versions", "2")
    claimed.mkdir()
    (claimed / ".tmp-0123-model.skops").write_bytes(b"half")
    (_folder(registry, "versions", "1") / ".tmp-4567-manifest.json").write_bytes(b"{")
    (_folder(registry, "aliases") / ".tmp-89ab-production.json").write_bytes(b"{")
    assert registry.versions("m") == [1] and list(registry.aliases("m")) == ["production"]
    assert registry.leftovers("m") == [
        "versions/2: claimed but never published (no manifest)",
        "versions/1/.tmp-4567-manifest.json: left by an interrupted write",
        "aliases/.tmp-89ab-production.json: left by an interrupted write",
    ]
    listing = subprocess.run(
        [sys.executable, "-m", "nonstop_ops", "models", "--model", "m", "--registry", registry.uri],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "skipped: versions/2: claimed but never published (no manifest)" in listing.stdout


def test_an_unreachable_object_store_is_a_typed_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow's OSError escaped untyped from listing, reading and existence checks."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-example-secret-example")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    unreachable = Registry("s3://bucket/registry?endpoint_override=127.0.0.1:9&scheme=http")  # discard port: refused
    with pytest.raises(StorageError, match="cannot access bucket/registry/m/versions: .*connect"):
        unreachable.versions("m")
