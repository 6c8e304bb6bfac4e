"""The skops format's trust list: exact types, callables named one by one, and artifacts
that try to run code refused at load, before any of their code runs."""

from __future__ import annotations

import builtins
import functools
import io
import json
import operator
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.feature_selection import SelectKBest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from nonstop.errors import UntrustedArtifactError
from nonstop.formats import SKOPS, UntrustedContent
from nonstop.formats.skops_sklearn import TRUSTED_CALLABLES, TRUSTED_TYPES
from nonstop.loading import TrustPolicy, load_version
from nonstop.manifest import ManifestDraft
from nonstop.registry import Registry
from tests.conftest import MODEL
from tests.unit.nonstop.tripwire import MARK_ENV, Tripwire

X = np.arange(20, dtype=np.float64).reshape(10, 2)
Y = np.array([0, 1] * 5)


@pytest.fixture
def mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "code-ran"
    monkeypatch.setenv(MARK_ENV, str(path))
    return path


def _hostile(mark: Path) -> dict[str, tuple[object, str]]:
    """Artifacts that would run code at load or predict, and the name each refusal gives."""
    touch = f"open({str(mark)!r}, 'w').write('exec')"
    return {
        "ufunc chain ending in exec": (
            make_pipeline(FunctionTransformer(np.log1p), FunctionTransformer(np.ravel), FunctionTransformer(builtins.exec)),
            "builtins.exec",
        ),
        "numpy's own string runner": (
            FunctionTransformer(np.testing.runstring, kw_args={"dict": {}}),
            "numpy.testing._private.utils.runstring",
        ),
        "eval as a feature score": (SelectKBest(score_func=builtins.eval), "builtins.eval"),
        "a partial over os.system": (FunctionTransformer(functools.partial(os.system, f"touch {mark}")), "functools.partial"),
        "an operator callable": (FunctionTransformer(operator.methodcaller("write", touch)), "operator.methodcaller"),
        "a bound method": (FunctionTransformer(Path(mark).write_text), "pathlib.PosixPath"),
        "numpy.load reads any file": (FunctionTransformer(np.load), "numpy.load"),
        "a class that runs code when restored": (make_pipeline(FunctionTransformer(), Tripwire()), "tests.unit.nonstop.tripwire.Tripwire"),
    }


def test_the_lists_name_exact_objects_and_only_harmless_callables() -> None:
    """No prefixes: every name is a dotted path to one object; each callable is a numpy
    ufunc (arithmetic in C), a type (a constructor of data) or one of three named scores."""
    from importlib import import_module

    from sklearn.feature_selection import chi2, f_classif, f_regression

    optional = ("lightgbm.", "xgboost.")
    for name in TRUSTED_TYPES | TRUSTED_CALLABLES:
        assert not name.endswith(".") and "*" not in name
        module, _, attr = name.rpartition(".")
        if name.startswith(optional) and module.split(".")[0] not in sys.modules:
            continue
        obj = getattr(import_module(module), attr)
        if name in TRUSTED_CALLABLES:
            assert isinstance(obj, type | np.ufunc) or obj in (chi2, f_classif, f_regression), name
    assert "sklearn.preprocessing._function_transformer.FunctionTransformer" in TRUSTED_TYPES
    assert not {"builtins.exec", "builtins.eval", "numpy.load", "functools.partial"} & TRUSTED_CALLABLES


@pytest.mark.parametrize("case", list(_hostile(Path("unused"))))
def test_an_artifact_that_would_run_code_is_refused_naming_the_type(case: str, mark: Path) -> None:
    hostile, name = _hostile(mark)[case]
    try:
        hostile.fit(X, Y)  # type: ignore[attr-defined]
    except Exception:
        pass  # an unfitted artifact carries the same callables
    data = SKOPS.dumps(hostile)
    mark.unlink(missing_ok=True)
    with pytest.raises(UntrustedContent) as refused:
        SKOPS.loads(data)
    assert any(name in r for r in refused.value.refused), refused.value.refused
    assert not mark.exists()


def test_an_artifact_naming_a_module_imports_nothing(mark: Path) -> None:
    """A hand-edited schema pointing at a module whose import has side effects."""
    data = SKOPS.dumps(make_pipeline(Tripwire()))
    source = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(source.read("schema.json"))
    step = schema["content"]["content"]["steps"]["content"][0]["content"][1]
    step["__module__"] = "tests.unit.nonstop.import_tripwire"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.namelist():
            target.writestr(item, json.dumps(schema) if item == "schema.json" else source.read(item))
    with pytest.raises(UntrustedContent, match="tests.unit.nonstop.import_tripwire.Tripwire"):
        SKOPS.loads(out.getvalue())
    assert "tests.unit.nonstop.import_tripwire" not in sys.modules
    assert not mark.exists()


@pytest.mark.usefixtures("trained")
def test_the_loader_refuses_with_a_typed_error_naming_the_type(registry: Registry, mark: Path) -> None:
    good = registry.manifest(MODEL, 1)
    hostile = make_pipeline(FunctionTransformer(np.log1p), FunctionTransformer(builtins.exec))
    draft = ManifestDraft(**good.model_dump(include=set(ManifestDraft.model_fields)))
    published = registry.publish(MODEL, SKOPS.dumps(hostile), draft)
    with pytest.raises(UntrustedArtifactError, match="builtins.exec") as refused:
        load_version(registry, MODEL, published.version, TrustPolicy())
    assert refused.value.reason == "untrusted_types"
    assert "numpy.log1p" not in str(refused.value)  # a named, harmless ufunc is not what is refused


def test_a_type_outside_the_list_loads_only_when_the_operator_names_it() -> None:
    """HistGradientBoosting is off the list (skops distrusts its TreePredictor)."""
    model = HistGradientBoostingRegressor(max_iter=3).fit(X, Y.astype(float))
    data = SKOPS.dumps(model)
    with pytest.raises(UntrustedContent) as refused:
        SKOPS.loads(data)
    assert "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor" in refused.value.refused
    loaded = SKOPS.loads(data, refused.value.refused)
    assert np.array_equal(loaded.predict(X), model.predict(X))


@pytest.mark.usefixtures("trained")
def test_training_refuses_a_hostile_production_and_does_not_promote_past_it(
    registry: Registry, demo_data: Path, mark: Path
) -> None:
    """`nonstop train` loads production to score it: with serving's policy, so the hostile
    artifact is refused there too, nothing of it runs, and the gate stays closed."""
    from training.job import TrainOptions, train
    from training.publish import PromotionBlocked

    good = registry.manifest(MODEL, 1)
    draft = ManifestDraft(**good.model_dump(include=set(ManifestDraft.model_fields)))
    hostile = registry.publish(MODEL, SKOPS.dumps(make_pipeline(FunctionTransformer(), Tripwire())), draft)
    registry.promote(MODEL, hostile.version)
    with pytest.raises(PromotionBlocked, match="Tripwire"):
        train(TrainOptions(data=str(demo_data), model=MODEL, promote=True), registry)
    assert registry.resolve(MODEL, "production") == hostile.version
    assert not mark.exists()
