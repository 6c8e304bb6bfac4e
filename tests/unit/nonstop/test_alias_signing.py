"""Alias signatures: a holder of the key moves aliases; a forged alias moves no replica.

And `nonstop sign`, which turns signing on for a registry written without a key."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nonstop.config import SIGNING_KEY_ENV
from nonstop.errors import TamperedAliasError, TamperedManifestError
from nonstop.loading import TrustPolicy
from nonstop.registry import AliasRecord, Registry
from nonstop.signing import sign
from serve_app.config import ModelTarget
from serve_app.replica.holder import ModelHolder
from tests.conftest import MODEL, train_into
from tests.unit.nonstop.test_registry import DRAFT
from tests.unit.nonstop.test_signing import KEY, OTHER_KEY


def _alias_file(root: Path, model: str = "m", alias: str = "production") -> Path:
    return root / model / "aliases" / f"{alias}.json"


def _point_at_2(root: Path) -> None:
    data = json.loads(_alias_file(root).read_text())
    data["version"] = 2
    _alias_file(root).write_text(json.dumps(data))


def _drop_signature(root: Path) -> None:
    data = json.loads(_alias_file(root).read_text())
    data["signature"] = None
    _alias_file(root).write_text(json.dumps(data))


def _copy_from_other_model(root: Path) -> None:
    """Another model's alias, validly signed, pointing at the same version number."""
    _alias_file(root).write_bytes(_alias_file(root, "other").read_bytes())


def _resign_with_another_key(root: Path) -> None:
    record = AliasRecord.model_validate_json(_alias_file(root).read_bytes()).model_copy(update={"version": 2})
    signature = sign(OTHER_KEY, record.signed_bytes("m")).decode()
    _alias_file(root).write_text(record.model_copy(update={"signature": signature}).model_dump_json())


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_point_at_2, "signature does not match"),
        (_drop_signature, "has no signature"),
        (_copy_from_other_model, "signature does not match"),
        (_resign_with_another_key, "signature does not match"),
    ],
)
def test_a_forged_alias_is_refused_naming_alias_and_target(
    tmp_path: Path, tamper: Callable[[Path], None], message: str
) -> None:
    registry = Registry(str(tmp_path), signing_key=KEY)
    for model in ("m", "other"):
        registry.publish(model, b"one", DRAFT)
        registry.publish(model, b"two", DRAFT)
    registry.promote("m", 1)
    registry.promote("other", 1)
    assert registry.alias("m", "production").signature is not None
    assert Registry(str(tmp_path)).resolve("m", "production") == 1  # no key: no check
    tamper(tmp_path)
    with pytest.raises(TamperedAliasError, match=f"alias 'production' of 'm' \\(pointing at v\\d\\).*{message}") as refused:
        registry.resolve("m", "production")
    assert KEY.get_secret_value() not in str(refused.value)
    assert KEY.get_secret_value() not in _alias_file(tmp_path).read_text()


def test_a_replica_keeps_its_version_when_the_alias_is_forged(tmp_path: Path, demo_data: Path) -> None:
    """Someone who can write the registry but has no key points production at v2: the
    holder refuses to follow, keeps serving v1, and says why."""
    registry = Registry(str(tmp_path / "registry"), signing_key=KEY)
    train_into(registry, demo_data)
    train_into(registry, demo_data, promote=False)
    forged = _alias_file(tmp_path / "registry", MODEL)
    holder = ModelHolder(registry, TrustPolicy())

    async def run() -> int | None:
        await holder.configure(ModelTarget(model=MODEL, poll_interval_s=3600))
        assert holder.state.primary is not None and holder.state.primary.version == 1
        forged.write_text(json.dumps({**json.loads(forged.read_text()), "version": 2}))
        await holder.sync()
        await holder.close()
        return holder.state.primary.version if holder.state.primary else None

    assert asyncio.run(run()) == 1
    error = holder.state.last_error
    assert error is not None and "signature does not match" in error.message
    with pytest.raises(TamperedAliasError):
        registry.rollback(MODEL)  # its history cannot be trusted
    taken_back = registry.promote(MODEL, 2)  # a key holder takes the alias back
    assert registry.resolve(MODEL, "production") == 2 and taken_back.ledger_seq == registry.ledger(MODEL).verified()[-1].seq


def _nonstop(*args: str, registry: Path, key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != SIGNING_KEY_ENV}
    if key is not None:
        env[SIGNING_KEY_ENV] = key
    command = [sys.executable, "-m", "nonstop_ops", *args, "--registry", str(registry)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_nonstop_sign_vouches_for_what_was_written_before_the_key(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    unsigned = Registry(str(root))
    for artifact in (b"one", b"two", b"three"):
        unsigned.publish("m", artifact, DRAFT)
    unsigned.promote("m", 2)
    keyed = Registry(str(root), signing_key=KEY)
    with pytest.raises(TamperedManifestError, match="no signature"):
        keyed.manifest("m", 1)
    with pytest.raises(TamperedAliasError, match="no signature"):
        keyed.resolve("m", "production")

    (root / "m" / "versions" / "3" / "model.skops").write_bytes(b"swapped")  # edited after publishing
    refused = _nonstop("sign", "--model", "m", registry=root, key=KEY.get_secret_value())
    assert refused.returncode == 2 and "version 3" in refused.stderr and "not signed" in refused.stderr
    (root / "m" / "versions" / "3" / "model.skops").write_bytes(b"three")

    done = _nonstop("sign", "--model", "m", registry=root, key=KEY.get_secret_value())
    assert done.returncode == 0, done.stderr
    assert "v3" in done.stdout and "alias production -> v2" in done.stdout
    assert [keyed.manifest("m", v).version for v in (1, 2, 3)] == [1, 2, 3]
    assert keyed.resolve("m", "production") == 2
    assert "already signed" in _nonstop("sign", "--model", "m", registry=root, key=KEY.get_secret_value()).stdout
    keyless = _nonstop("sign", "--model", "m", registry=root, key=None)
    assert keyless.returncode == 2 and SIGNING_KEY_ENV in keyless.stderr
