"""Manifest signatures: a registry with a key signs what it publishes and refuses edits."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import skops.io as sio
from pydantic import SecretStr
from sklearn.dummy import DummyClassifier

from nonstop.config import REQUIRE_SIGNATURES_ENV, SIGNING_KEY_ENV, Settings
from nonstop.errors import ConfigError, TamperedManifestError
from nonstop.loading import TrustPolicy, load_version
from nonstop.manifest import ManifestDraft
from nonstop.registry import Registry
from nonstop.schema import rows_to_matrix
from tests.conftest import MODEL, train_into
from tests.unit.nonstop.test_registry import DRAFT

KEY = SecretStr("test-signing-key-7f3a9c1e5b2d4f6a8c0e")
OTHER_KEY = SecretStr("another-signing-key-0123456789abcdef")


def _version_dir(root: Path, model: str, version: int) -> Path:
    return root / "registry" / model / "versions" / str(version)


def test_a_signed_version_reads_back_and_a_keyless_reader_still_works(tmp_path: Path) -> None:
    published = Registry(str(tmp_path / "registry"), signing_key=KEY).publish("m", b"one", DRAFT)
    folder = _version_dir(tmp_path, "m", 1)
    assert (folder / "manifest.sig").read_bytes().startswith(b"hmac-sha256:")
    assert Registry(str(tmp_path / "registry"), signing_key=KEY).manifest("m", 1) == published
    assert Registry(str(tmp_path / "registry")).manifest("m", 1) == published  # no key: no check
    for path in folder.iterdir():
        assert KEY.get_secret_value().encode() not in path.read_bytes(), path.name


def _edit_metrics(root: Path) -> None:
    path = _version_dir(root, "m", 2) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["metrics"]["accuracy"] = 0.999
    path.write_text(json.dumps(manifest, indent=2))


def _drop_signature(root: Path) -> None:
    (_version_dir(root, "m", 2) / "manifest.sig").unlink()


def _resign_with_another_key(root: Path) -> None:
    Registry(str(root / "other"), signing_key=OTHER_KEY).publish("m", b"x", DRAFT)
    shutil.copy(root / "other" / "m" / "versions" / "1" / "manifest.sig", _version_dir(root, "m", 2) / "manifest.sig")


def _replay_version_1(root: Path) -> None:
    for name in ("manifest.json", "manifest.sig"):
        shutil.copy(_version_dir(root, "m", 1) / name, _version_dir(root, "m", 2) / name)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_edit_metrics, "signature does not match"),
        (_drop_signature, "has no signature"),
        (_resign_with_another_key, "signature does not match"),
        (_replay_version_1, "describes 'm' version 1"),
    ],
)
def test_a_tampered_manifest_is_refused_without_revealing_the_key(
    tmp_path: Path, tamper: Callable[[Path], None], message: str
) -> None:
    registry = Registry(str(tmp_path / "registry"), signing_key=KEY)
    registry.publish("m", b"one", DRAFT)
    registry.publish("m", b"two", DRAFT)
    tamper(tmp_path)
    with pytest.raises(TamperedManifestError, match=message) as refused:
        registry.manifest("m", 2)
    assert refused.value.reason == "tampered_manifest" and refused.value.version == 2
    assert KEY.get_secret_value() not in str(refused.value)
    assert registry.manifest("m", 1).version == 1  # the untouched version still reads


def test_a_substituted_model_passes_only_when_no_key_is_configured(tmp_path: Path, demo_data: Path) -> None:
    """The attack signing exists for: someone who can write the registry swaps the artifact
    for another, trusted-typed model and rewrites digest and samples to match it."""
    signed = Registry(str(tmp_path / "registry"), signing_key=KEY)
    good = train_into(signed, demo_data).manifest
    inputs = rows_to_matrix(good.samples.inputs, good.features)
    impostor = DummyClassifier(strategy="constant", constant=1).fit(inputs, [0, 1] * (len(inputs) // 2))
    fields = good.model_dump(include=set(ManifestDraft.model_fields))
    probabilities = impostor.predict_proba(inputs).tolist()
    fields["samples"] = good.samples.model_copy(update={"outputs": [1] * len(inputs), "probabilities": probabilities})
    Registry(str(tmp_path / "registry")).publish(MODEL, sio.dumps(impostor), ManifestDraft(**fields))

    assert load_version(Registry(str(tmp_path / "registry")), MODEL, 2, TrustPolicy()).version == 2
    with pytest.raises(TamperedManifestError, match="version 2 refused \\(tampered_manifest\\).*no signature"):
        load_version(signed, MODEL, 2, TrustPolicy())


def test_the_key_comes_from_the_environment_and_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY.get_secret_value())
    settings = Settings.from_env()
    assert settings.signing_key == KEY and settings.signatures_required
    assert KEY.get_secret_value() not in f"{settings!r} {settings} {settings.model_dump_json()}"
    short = "short-but-secret"
    monkeypatch.setenv(SIGNING_KEY_ENV, short)
    with pytest.raises(ConfigError, match=f"{SIGNING_KEY_ENV} must be at least 32 characters") as refused:
        Settings.from_env()
    assert short not in str(refused.value)


@pytest.mark.parametrize("blank", ["", "   ", "\n"])
def test_an_empty_or_blank_key_is_an_error_not_signing_off(monkeypatch: pytest.MonkeyPatch, blank: str) -> None:
    """An empty Secret once meant "no key": every check silently off."""
    monkeypatch.setenv(SIGNING_KEY_ENV, blank)
    with pytest.raises(ConfigError, match=f"{SIGNING_KEY_ENV} is set but blank"):
        Settings.from_env()


def test_required_signatures_refuse_to_run_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    assert not Settings.from_env().signatures_required  # a local registry without a key still runs
    monkeypatch.setenv(REQUIRE_SIGNATURES_ENV, "true")
    with pytest.raises(ConfigError, match=f"{REQUIRE_SIGNATURES_ENV} is on but {SIGNING_KEY_ENV} is not set"):
        Settings.from_env()
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY.get_secret_value())
    assert Settings.from_env().signatures_required
    monkeypatch.setenv(REQUIRE_SIGNATURES_ENV, "")
    with pytest.raises(ConfigError, match="require_signatures"):
        Settings.from_env()


def test_serving_refuses_to_build_when_signatures_are_required_and_the_key_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A Secret that went missing once turned verification off in silence."""
    from serve_app.app import build_app  # the app builder Serve calls, as in production

    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    monkeypatch.setenv(REQUIRE_SIGNATURES_ENV, "true")
    with pytest.raises(ConfigError, match=f"{REQUIRE_SIGNATURES_ENV} is on but {SIGNING_KEY_ENV} is not set"):
        build_app({"registry": str(tmp_path / "registry")})
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY.get_secret_value())
    assert build_app({"registry": str(tmp_path / "registry")}) is not None
