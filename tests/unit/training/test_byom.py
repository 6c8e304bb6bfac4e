"""Bring your own model: regression, the user's own pipeline, and a gate that fails closed.

`nonstop train` runs as a real subprocess against a real registry on disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import Ridge

from nonstop.errors import ConfigError, NonstopError
from nonstop.formats import SKOPS
from nonstop.loading import TrustPolicy, load_version
from nonstop.registry import Registry
from nonstop.schema import rows_to_matrix
from tests.conftest import MODEL
from training.demo import day_frame
from training.job import TrainOptions, train
from training.publish import Gate, publish_model

FACTORIES = "tests/unit/training/factories.py"
PRICES = "prices"


@pytest.fixture(scope="module")
def diabetes_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("diabetes") / "diabetes.csv"
    load_diabetes(as_frame=True).frame.to_csv(path, index=False)
    return path


def run_train(registry: Registry, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nonstop_ops", "train", "--data", str(data), "--model", PRICES, "--label", "target",
               "--registry", registry.uri, *extra]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_a_worse_regressor_is_published_not_promoted(registry: Registry, diabetes_csv: Path) -> None:
    first = run_train(registry, diabetes_csv, "--promote")
    assert first.returncode == 0, first.stderr
    assert "regression" in first.stdout and registry.resolve(PRICES, "production") == 1
    manifest = registry.manifest(PRICES, 1)
    assert manifest.task == "regression" and manifest.classes == [] and {"rmse", "mae", "r2"} <= set(manifest.metrics)
    assert manifest.estimator == "sklearn.pipeline.Pipeline" and manifest.format == "skops"

    worse = run_train(registry, diabetes_csv, "--promote", "--pipeline", f"{FACTORIES}:mean_only")
    assert worse.returncode == 0, worse.stderr
    assert "NOT promoted" in worse.stdout and "rmse" in worse.stdout and "worse than production v1" in worse.stdout
    assert registry.versions(PRICES) == [1, 2] and registry.resolve(PRICES, "production") == 1
    gate = registry.manifest(PRICES, 2).gate
    assert gate is not None and gate.metric == "rmse" and not gate.higher_is_better and not gate.passed

    # the same model passes with a tolerance as wide as the gap (in rmse units)
    tolerant = run_train(registry, diabetes_csv, "--promote", "--pipeline", f"{FACTORIES}:mean_only", "--gate-tolerance", "1000")
    assert tolerant.returncode == 0 and registry.resolve(PRICES, "production") == 3, tolerant.stdout


def test_an_unloadable_production_blocks_promotion_until_forced(registry: Registry, diabetes_csv: Path) -> None:
    assert run_train(registry, diabetes_csv, "--promote").returncode == 0
    artifact = Path(registry.uri) / PRICES / "versions" / "1" / "model.skops"
    artifact.write_bytes(artifact.read_bytes()[::-1])

    blocked = run_train(registry, diabetes_csv, "--promote")
    assert blocked.returncode == 2, blocked.stdout
    assert "published prices v2 but did NOT promote it: production v1 could not be loaded" in blocked.stderr
    assert "Traceback" not in blocked.stderr
    assert registry.versions(PRICES) == [1, 2] and registry.resolve(PRICES, "production") == 1

    forced = run_train(registry, diabetes_csv, "--force-promote")
    assert forced.returncode == 0, forced.stderr
    assert "FORCED" in forced.stdout and registry.resolve(PRICES, "production") == 3
    assert registry.manifest(PRICES, 3).gate.forced  # type: ignore[union-attr]
    assert registry.ledger(PRICES).verified()[-1].action == "force_promote"
    assert registry.ledger(PRICES).entries()[-1].reason.startswith("forced past the gate: production v1 could not be loaded")


def test_a_production_that_cannot_score_the_new_holdout_blocks(registry: Registry, diabetes_csv: Path, tmp_path: Path) -> None:
    """The schema changed: production needs a column the new data no longer has."""
    assert run_train(registry, diabetes_csv, "--promote").returncode == 0
    narrower = tmp_path / "narrower.csv"
    pd.read_csv(diabetes_csv).drop(columns=["bmi"]).to_csv(narrower, index=False)
    blocked = run_train(registry, narrower, "--promote")
    assert blocked.returncode == 2
    assert "could not be evaluated on this holdout" in blocked.stderr and "bmi" in blocked.stderr, blocked.stderr
    assert registry.resolve(PRICES, "production") == 1


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("no_such_module:make", "no module 'no_such_module' on the import path"),
        (f"{FACTORIES}:missing", "has no function 'missing'"),
        (f"{FACTORIES}:raises", "the factory raised RuntimeError: the feature store is down"),
        (f"{FACTORIES}:not_an_estimator", "returned a list, not a scikit-learn estimator"),
        (f"{FACTORIES}:fails_to_fit", "training failed on this data: The 'C' parameter"),
    ],
)
def test_a_bad_pipeline_is_refused_naming_the_problem_and_publishes_nothing(
    registry: Registry, demo_data: Path, pipeline: str, message: str
) -> None:
    """In-process; the CLI turns each into exit status 2, as the next test shows."""
    with pytest.raises(NonstopError) as refused:
        train(TrainOptions(data=str(demo_data), model=PRICES, pipeline=pipeline, promote=True), registry)
    assert message in refused.value.message
    assert not Path(registry.uri).exists()


def test_a_broken_factory_exits_nonzero_with_a_message(registry: Registry, demo_data: Path) -> None:
    done = run_train(registry, demo_data, "--pipeline", f"{FACTORIES}:raises", "--promote")
    assert done.returncode == 2, done.stdout
    assert "error: --pipeline" in done.stderr and "the feature store is down" in done.stderr
    assert "Traceback" not in done.stderr
    assert not Path(registry.uri).exists()


def test_the_api_publishes_a_fitted_model_with_its_holdout(registry: Registry) -> None:
    frame = day_frame(0)
    holdout = day_frame(1)
    features = frame.drop(columns=["target"])
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(features, frame["target"])
    with pytest.raises(ConfigError, match="a fitted estimator needs `holdout`"):
        publish_model(model, frame, model="api", label="target", registry=registry)
    result = publish_model(model, frame, model="api", label="target", holdout=holdout, registry=registry, promote=True)
    manifest = result.manifest
    assert result.promoted and manifest.task == "classification" and manifest.classes == [0, 1]
    assert {"accuracy", "f1_macro", "roc_auc", "log_loss"} <= set(manifest.metrics)
    loaded = load_version(registry, "api", manifest.version, TrustPolicy())
    rows = holdout.drop(columns=["target"]).head(20)
    matrix = rows_to_matrix(rows.to_numpy().tolist(), manifest.features)
    assert loaded.predict(matrix) == model.predict(rows).tolist()
    assert np.allclose(loaded.predict_proba(matrix), model.predict_proba(rows))


def test_the_api_fits_an_unfitted_regressor_and_gates_on_the_chosen_metric(registry: Registry) -> None:
    frame = load_diabetes(as_frame=True).frame
    first = publish_model(Ridge(), frame, model="api", label="target", registry=registry, promote=True, gate=Gate(metric="r2"))
    assert first.promoted and first.manifest.gate.metric == "r2"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="gate metric 'accuracy' does not score regression"):
        publish_model(Ridge(), frame, model="api", label="target", registry=registry, gate=Gate(metric="accuracy"))
    with pytest.raises(ConfigError, match="task 'classification' but the estimator is a regression model"):
        publish_model(Ridge(), frame, model="api", label="target", registry=registry, task="classification")


@pytest.mark.parametrize("library", ["lightgbm", "xgboost"])
def test_gradient_boosting_wrappers_publish_load_and_answer_only_when_trusted_by_the_one_setting(
    registry: Registry, library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off the format's list (their boosters' insides cannot be checked): publishing one
    is refused naming the types and NONSTOP_TRUSTED_TYPES; trusted there, it publishes,
    records what it needs, and loads and answers as fitted."""
    wrappers = pytest.importorskip(library)
    frame = load_diabetes(as_frame=True).frame
    train_rows, holdout = frame.iloc[:350], frame.iloc[350:]
    regressor = wrappers.LGBMRegressor(n_estimators=20, verbose=-1) if library == "lightgbm" else wrappers.XGBRegressor(n_estimators=20)
    regressor.fit(train_rows.drop(columns="target"), train_rows["target"])
    needed = SKOPS.needs(SKOPS.dumps(regressor))
    assert any(name.startswith(library) for name in needed), needed
    with pytest.raises(ConfigError, match=f"{needed[0]}.*NONSTOP_TRUSTED_TYPES"):
        publish_model(regressor, train_rows, holdout=holdout, model=library, label="target", registry=registry)
    assert not registry.versions(library)
    monkeypatch.setenv("NONSTOP_TRUSTED_TYPES", ",".join(needed))
    manifest = publish_model(regressor, train_rows, holdout=holdout, model=library, label="target", registry=registry).manifest
    assert manifest.estimator is not None and manifest.estimator.startswith(library) and library in manifest.libraries
    assert manifest.trusted_types == needed
    loaded = load_version(registry, library, manifest.version, TrustPolicy(extra_types=tuple(needed)))
    rows = holdout.drop(columns="target")
    assert loaded.predict(rows_to_matrix(rows.to_numpy().tolist(), manifest.features)) == regressor.predict(rows).tolist()
    assert not loaded.gives_probabilities


@pytest.mark.usefixtures("trained")
def test_a_production_needing_a_type_training_does_not_trust_blocks_naming_the_type_and_the_setting(
    registry: Registry, demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Production recorded at publishing that it needs a type; the trainer's
    NONSTOP_TRUSTED_TYPES lacks it: the gate blocks saying which type and which setting."""
    from nonstop.manifest import ManifestDraft
    from training.publish import PromotionBlocked

    good = registry.manifest(MODEL, 1)
    fields = good.model_dump(include=set(ManifestDraft.model_fields)) | {"trusted_types": ["some.Type"]}
    needing = registry.publish(MODEL, registry.read_artifact(MODEL, 1, good), ManifestDraft(**fields))
    registry.promote(MODEL, needing.version)
    monkeypatch.delenv("NONSTOP_TRUSTED_TYPES", raising=False)
    with pytest.raises(PromotionBlocked, match=r"needs some\.Type.*not in NONSTOP_TRUSTED_TYPES"):
        train(TrainOptions(data=str(demo_data), model=MODEL, promote=True), registry)
    assert registry.resolve(MODEL, "production") == needing.version
