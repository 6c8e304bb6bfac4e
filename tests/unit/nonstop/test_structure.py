"""Trusted types are checked inside: hand-edited arrays that would send native code out of
bounds or round in circles are refused at load, naming the type and the field, before
anything predicts; the trust a version needs is recorded once and refused by name."""

from __future__ import annotations

import io
import warnings
import zipfile
from collections.abc import Callable

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from sklearn.datasets import load_iris
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from nonstop.errors import InvalidStructureError, UntrustedArtifactError
from nonstop.formats import SKOPS, InvalidStructure
from nonstop.loading import TrustPolicy, load_version
from nonstop.manifest import ManifestDraft
from nonstop.registry import Registry
from tests.conftest import MODEL

X, Y = load_iris(return_X_y=True)


def _edit(data: bytes, pick: Callable[[str, np.ndarray], np.ndarray | None]) -> bytes:
    """The artifact with the first array member `pick` returns a replacement for, replaced."""
    source, out, done = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO(), False
    with zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            raw = source.read(name)
            if name.endswith(".npy") and not done:
                replaced = pick(name, np.load(io.BytesIO(raw), allow_pickle=False))
                if replaced is not None:
                    buffer = io.BytesIO()
                    np.save(buffer, replaced, allow_pickle=False)
                    raw, done = buffer.getvalue(), True
            elif name.endswith(".npz") and not done:  # a sparse matrix, as scipy saves it
                arrays = dict(np.load(io.BytesIO(raw), allow_pickle=False))
                for key, array in arrays.items():
                    replaced = pick(key, array)
                    if replaced is not None:
                        arrays[key], done = replaced, True
                        break
                buffer = io.BytesIO()
                np.savez(buffer, **arrays)
                raw = buffer.getvalue()
            target.writestr(name, raw)
    assert done, "nothing to edit"
    return out.getvalue()


def _nodes(edit: Callable[[np.ndarray], None]) -> Callable[[str, np.ndarray], np.ndarray | None]:
    def pick(_: str, array: np.ndarray) -> np.ndarray | None:
        if not array.dtype.names or "left_child" not in array.dtype.names:
            return None
        edited = array.copy()
        edit(edited)
        return edited

    return pick


def _cycle(nodes: np.ndarray) -> None:
    nodes["left_child"][1 if nodes["left_child"][1] != -1 else 2] = 0


def _child_out_of_range(nodes: np.ndarray) -> None:
    nodes["right_child"][0] = 10**9


def _feature_out_of_range(nodes: np.ndarray) -> None:
    nodes["feature"][0] = 10**6


def _one_child(nodes: np.ndarray) -> None:
    nodes["right_child"][0] = -1


def _svm_counts(name: str, array: np.ndarray) -> np.ndarray | None:
    return array * 50 if array.dtype == np.int32 and array.shape == (3,) else None  # _n_support


def _sparse_indices(name: str, array: np.ndarray) -> np.ndarray | None:
    return np.full_like(array, 10**6) if array.dtype.kind == "i" and "indices" in name else None


def _sparse_indptr_back_to_zero(name: str, array: np.ndarray) -> np.ndarray | None:
    """The fuzzer's finding: scipy's own full check skips every index check when `indptr`
    ends at 0, and the product then crashed the process."""
    if name != "indptr":
        return None
    edited = array.copy()
    edited[-1] = 0
    return edited


def _sparse_indptr_wrapping(name: str, array: np.ndarray) -> np.ndarray | None:
    """The fuzzer's second finding: an int32 `indptr` that jumps to the top of its range
    and falls back, which `np.diff` (scipy's own check) wraps into a positive step."""
    if name != "indptr" or array.dtype != np.int32:
        return None
    edited = array.copy()
    edited[1], edited[2] = np.iinfo(np.int32).max, -2
    return edited


def _fitted(kind: str) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "tree":
            return DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, Y)
        if kind == "forest":
            return RandomForestClassifier(n_estimators=2, max_depth=3, random_state=0).fit(X, Y)
        if kind == "boosting":
            return GradientBoostingClassifier(n_estimators=2, max_depth=2, random_state=0).fit(X, Y)
        if kind == "svm":
            return SVC(probability=True, random_state=0).fit(X, Y)
        model = LogisticRegression(max_iter=500).fit(X, Y)
        model.coef_ = csr_matrix(model.coef_)
        return model


CASES = {
    "a tree whose child points back at the root (a loop)": ("tree", _nodes(_cycle), "DecisionTreeClassifier", "tree_.nodes.left_child"),
    "a forest's tree with a child past the last node": ("forest", _nodes(_child_out_of_range), "DecisionTreeClassifier", "tree_.nodes.right_child"),
    "a boosted tree reading a feature past the row": ("boosting", _nodes(_feature_out_of_range), "DecisionTreeRegressor", "tree_.nodes.feature"),
    "a node with one child": ("tree", _nodes(_one_child), "DecisionTreeClassifier", "tree_.nodes.right_child"),
    "an SVC claiming more support vectors than it holds": ("svm", _svm_counts, "SVC", "_n_support"),
    "a sparse matrix indexing past its columns": ("sparse", _sparse_indices, "csr_matrix", "indices"),
    "a sparse matrix whose indptr falls back to 0": ("sparse", _sparse_indptr_back_to_zero, "csr_matrix", "indptr"),
    "a sparse matrix whose int32 indptr wraps when subtracted": ("sparse", _sparse_indptr_wrapping, "csr_matrix", "indptr"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hand_edited_trusted_artifact_is_refused_naming_the_type_and_the_field(case: str) -> None:
    kind, edit, type_name, field = CASES[case]
    model = _fitted(kind)
    data = SKOPS.dumps(model)
    assert np.array_equal(SKOPS.loads(data).predict(X[:5]), model.predict(X[:5]))  # type: ignore[attr-defined]
    with pytest.raises(InvalidStructure) as refused:
        SKOPS.loads(_edit(data, edit))
    assert refused.value.type_name.endswith(type_name) and refused.value.field == field, refused.value


@pytest.mark.usefixtures("trained")
def test_the_loader_refuses_an_edited_tree_with_a_typed_error_before_any_predict(registry: Registry) -> None:
    good = registry.manifest(MODEL, 1)
    draft = ManifestDraft(**good.model_dump(include=set(ManifestDraft.model_fields)))
    published = registry.publish(MODEL, _edit(SKOPS.dumps(_fitted("tree")), _nodes(_cycle)), draft)
    with pytest.raises(InvalidStructureError, match=r"DecisionTreeClassifier\.tree_\.nodes\.left_child") as refused:
        load_version(registry, MODEL, published.version, TrustPolicy())
    assert refused.value.reason == "invalid_structure"


@pytest.mark.usefixtures("trained")
def test_a_version_needing_a_type_the_setting_lacks_is_refused_naming_both(registry: Registry) -> None:
    """The record at publishing is read before the artifact: the refusal names the type
    and NONSTOP_TRUSTED_TYPES, the setting to change."""
    good = registry.manifest(MODEL, 1)
    fields = good.model_dump(include=set(ManifestDraft.model_fields)) | {"trusted_types": ["some.Type"]}
    published = registry.publish(MODEL, registry.read_artifact(MODEL, 1, good), ManifestDraft(**fields))
    with pytest.raises(UntrustedArtifactError, match=r"needs some\.Type.*NONSTOP_TRUSTED_TYPES"):
        load_version(registry, MODEL, published.version, TrustPolicy())
    assert load_version(registry, MODEL, published.version, TrustPolicy(extra_types=("some.Type",))).version == published.version
