"""Trust is one setting: NONSTOP_TRUSTED_TYPES, read by the app builder as by training;
the app's old `args.trusted_types` is refused naming the setting, never silently dropped."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from nonstop.config import Settings
from nonstop.loading import TrustPolicy
from serve_app.config import AppArgs


def test_serving_refuses_trust_in_its_args_naming_the_type_and_the_one_setting() -> None:
    with pytest.raises(ValidationError, match=r"args.trusted_types \(some.Type\).*NONSTOP_TRUSTED_TYPES"):
        AppArgs.model_validate({"trusted_types": ["some.Type"]})
    assert AppArgs.model_validate({}).trusted_types == ()


def test_the_policy_comes_from_the_environment_as_exact_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NONSTOP_TRUSTED_TYPES", "b.Two, a.One")
    assert TrustPolicy.from_settings(Settings.from_env()).extra_types == ("a.One", "b.Two")
    monkeypatch.setenv("NONSTOP_TRUSTED_TYPES", "")
    assert TrustPolicy.from_settings(Settings.from_env()).extra_types == ()
    monkeypatch.setenv("NONSTOP_TRUSTED_TYPES", "a.One,,lightgbm.")
    with pytest.raises(Exception, match="NONSTOP_TRUSTED_TYPES holds exact type names"):
        Settings.from_env()
