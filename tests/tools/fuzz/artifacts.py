"""Structure-aware fuzzing of trusted artifacts: valid artifacts of each trusted family
whose internal arrays are mutated, then loaded and asked for every output.

The fuzzer's bytes are a recipe, not an artifact: which `.npy` member of a valid skops
artifact to change, which elements, and to what (values near the array's own bounds:
-2, -1, 0, the node count, huge). The mutated archive goes through the format's `loads`
(the audit, skops, the structural checks) and, if accepted, through `predict`,
`predict_proba` and `decision_function` on a few rows. A typed refusal is the expected
answer; whatever else the estimator raises on content that passed is counted, not a
finding (it is a Python exception, which verification turns into a refusal); a native
crash or a hang (libFuzzer's -timeout in the child process) is a finding.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from functools import cache

import atheris
import numpy as np
from sklearn.datasets import load_breast_cancer, load_iris

from nonstop.formats import SKOPS, InvalidStructure, UnreadableArtifact, UntrustedContent

REFUSALS = (InvalidStructure, UnreadableArtifact, UntrustedContent)


def _families() -> dict[str, Callable[[], object]]:
    from scipy.sparse import csr_matrix
    from sklearn import ensemble, linear_model, svm, tree

    def sparse_logistic() -> object:
        model = linear_model.LogisticRegression(max_iter=500).fit(*_data("iris"))
        model.coef_ = csr_matrix(model.coef_)  # what `sparsify()` leaves: scipy's kernels predict
        return model

    return {
        "tree": lambda: tree.DecisionTreeClassifier(max_depth=4, random_state=0).fit(*_data("iris")),
        "forest": lambda: ensemble.RandomForestClassifier(n_estimators=2, max_depth=3, random_state=0).fit(*_data("iris")),
        "extra-trees": lambda: ensemble.ExtraTreesRegressor(n_estimators=2, max_depth=3, random_state=0).fit(*_data("cancer")),
        "boosting": lambda: ensemble.GradientBoostingClassifier(n_estimators=2, max_depth=2, random_state=0).fit(*_data("iris")),
        "svm": lambda: svm.SVC(probability=True, random_state=0).fit(*_data("iris")),
        "sparse": sparse_logistic,
    }


FAMILIES = tuple(_families())


@cache
def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = (load_iris if name == "iris" else load_breast_cancer)(return_X_y=True)
    return x[::3], y[::3]


@cache
def valid(family: str) -> tuple[bytes, list[str], np.ndarray]:
    """A valid artifact of the family, its array members, and rows to predict."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = SKOPS.dumps(_families()[family]())
    archive = zipfile.ZipFile(io.BytesIO(data))
    members = [n for n in archive.namelist() if n.endswith(".npy")]
    for name in archive.namelist():  # a sparse matrix is an .npz of its arrays, as scipy saves it
        if name.endswith(".npz"):
            members += [f"{name}:{key}" for key in np.load(io.BytesIO(archive.read(name)), allow_pickle=False).files]
    rows = _data("cancer" if family == "extra-trees" else "iris")[0][:8]
    return data, members, rows


def mutate(data: bytes, members: list[str], fdp: atheris.FuzzedDataProvider) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(data))
    name, _, key = members[fdp.ConsumeIntInRange(0, len(members) - 1)].partition(":")
    arrays = dict(np.load(io.BytesIO(source.read(name)), allow_pickle=False)) if key else {}
    array = arrays[key] if key else np.load(io.BytesIO(source.read(name)), allow_pickle=False)
    flat = array.reshape(-1).copy() if array.size else array.reshape(-1)
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        if not flat.size:
            break
        position = fdp.ConsumeIntInRange(0, flat.size - 1)
        if flat.dtype.names:  # a tree's nodes: one field of one node
            field = flat.dtype.names[fdp.ConsumeIntInRange(0, len(flat.dtype.names) - 1)]
            flat[field][position] = _value(flat[field].dtype, flat.size, fdp)
        else:
            flat[position] = _value(flat.dtype, flat.size, fdp)
    if fdp.ConsumeBool() and flat.size > 1:  # or cut the array short
        flat = flat[: fdp.ConsumeIntInRange(0, flat.size - 1)]
    else:
        flat = flat.reshape(array.shape)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.namelist():
            if item == name:
                buffer = io.BytesIO()
                if key:
                    np.savez(buffer, **(arrays | {key: flat}))
                else:
                    np.save(buffer, flat, allow_pickle=False)
                target.writestr(item, buffer.getvalue())
            else:
                target.writestr(item, source.read(item))
    return out.getvalue()


def _value(dtype: np.dtype, size: int, fdp: atheris.FuzzedDataProvider) -> object:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        choices = [-2, -1, 0, 1, size - 1, size, size + 1, 2**31 - 1, info.max, info.min]
        pick = choices[fdp.ConsumeIntInRange(0, len(choices) - 1)] if fdp.ConsumeBool() else fdp.ConsumeInt(8)
        return int(np.clip(pick, info.min, info.max))
    if dtype.kind == "f":
        return [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e308, fdp.ConsumeFloat()][fdp.ConsumeIntInRange(0, 6)]
    if dtype.kind == "b":
        return fdp.ConsumeBool()
    if dtype.kind in "SU":  # a sparse matrix's format name
        return ["csr", "csc", "coo", "bsr", "dia", "lil", "dok", ""][fdp.ConsumeIntInRange(0, 7)]
    return fdp.ConsumeIntInRange(0, 255)


def load_and_predict(family: str, recipe: bytes) -> str:
    """'refused' or 'accepted' (or 'raised', a Python exception on content that passed)."""
    data, members, rows = valid(family)
    artifact = mutate(data, members, atheris.FuzzedDataProvider(recipe))
    try:
        estimator = SKOPS.loads(artifact)
    except REFUSALS:
        return "refused"
    try:
        for method in ("predict", "predict_proba", "decision_function"):
            if hasattr(estimator, method):
                getattr(estimator, method)(rows)
    except Exception:  # a Python exception, not a crash: verification refuses such a version
        return "raised"
    return "accepted"
