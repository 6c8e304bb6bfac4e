"""The inside of trusted types whose native code indexes their own arrays, checked at load.

The trust list admits a type, not its content. A decision tree's `nodes` hold child and
feature indices that scikit-learn's Cython follows without bounds checks; gradient
boosting's `predict_stages` writes into a column per tree of its `estimators_` grid;
libsvm reads as many support vectors as `_n_support` says; scipy's sparse kernels follow
`indptr` and `indices` as given. A hand-edited artifact of such a type crashes the process
or spins forever at the first prediction. So once skops has built the object, and before
anything predicts with it, every such part of it is checked here, and anything that does
not hold is refused naming the type and the field:

- `sklearn.tree._tree.Tree`: children either both leaves (-1) or both later nodes (an
  index greater than the parent's: sklearn builds parents first, so this is also what
  makes the walk end), features within the estimator's width, `n_outputs` and
  `n_classes` matching `value`'s shape;
- decision trees and their ensembles (forests, extra trees, gradient boosting): every tree
  of the exact expected type, of the ensemble's width and outputs, gradient boosting's
  grid one column per tree of an iteration and its `init_` of as many outputs;
- libsvm models (SVC, SVR): support vectors, their counts and coefficients consistent,
  support indices within the training rows, a kernel libsvm computes itself;
- scipy sparse matrices (csr, csc), wherever they sit: 2-d, indices of int32 or int64
  (what scipy's kernels take) and numeric values, `indptr` non-decreasing from 0 to `nnz`
  (compared element to element: scipy's own check subtracts neighbours, which wraps in
  int32 and let a decreasing `indptr` through), `indices` within the shape.

Estimators whose predictions are numpy arithmetic (linear models, scalers, encoders) need
nothing here: numpy checks every index and shape itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import scipy.sparse
from sklearn import ensemble, svm, tree
from sklearn.tree._tree import TREE_LEAF, Tree

from nonstop.formats.base import InvalidStructure

_TREE_ESTIMATORS = (
    tree.DecisionTreeClassifier,
    tree.DecisionTreeRegressor,
    tree.ExtraTreeClassifier,
    tree.ExtraTreeRegressor,
)
_FORESTS = {
    ensemble.RandomForestClassifier: tree.DecisionTreeClassifier,
    ensemble.RandomForestRegressor: tree.DecisionTreeRegressor,
    ensemble.ExtraTreesClassifier: tree.ExtraTreeClassifier,
    ensemble.ExtraTreesRegressor: tree.ExtraTreeRegressor,
}
_BOOSTING = (ensemble.GradientBoostingClassifier, ensemble.GradientBoostingRegressor)
_LIBSVM = (svm.SVC, svm.SVR)
_KERNELS = frozenset({"linear", "poly", "rbf", "sigmoid"})  # "precomputed" indexes inputs by support_
_SPARSE = (scipy.sparse.csr_matrix, scipy.sparse.csc_matrix, scipy.sparse.csr_array, scipy.sparse.csc_array)
_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_MAX_DEPTH = 10_000  # objects nested deeper than any estimator: refused rather than recursed into


def _name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _require(ok: bool, owner: Any, field: str, problem: str) -> None:
    if not ok:
        raise InvalidStructure(_name(owner), field, problem)


def check_structure(root: Any) -> None:
    """Every part of `root` whose native code indexes its own arrays, checked; raises
    `InvalidStructure` at the first that does not hold."""
    for obj in _walk(root):
        kind = type(obj)
        if kind is Tree:
            check_tree(obj, obj, obj.n_features)
        elif isinstance(obj, scipy.sparse.sparray | scipy.sparse.spmatrix):
            _check_sparse(obj)
        elif kind in _CHECKS:
            fitted, check = _CHECKS[kind]
            if fitted in vars(obj):  # else an unfitted template (a forest's `estimator_`): predicts nothing
                check(obj)


def _walk(root: Any) -> Iterator[Any]:
    """Every object reachable through estimators' attributes, containers and object
    arrays, each once."""
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        obj, depth = stack.pop()
        if id(obj) in seen or isinstance(obj, str | bytes | int | float | bool | type | type(None)):
            continue
        if depth > _MAX_DEPTH:
            raise InvalidStructure(_name(obj), "(nesting)", f"nested more than {_MAX_DEPTH} levels deep")
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            children: Any = list(obj.keys()) + list(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            children = obj
        elif isinstance(obj, np.ndarray):
            children = obj.ravel().tolist() if obj.dtype == object else ()
        elif hasattr(obj, "__dict__"):
            children = list(vars(obj).values())
        else:
            children = ()
        stack.extend((child, depth + 1) for child in children)


def check_tree(t: Tree, owner: Any, width: int) -> None:
    """A tree sklearn's Cython can walk: every path ends at a leaf, within its arrays."""
    count = t.node_count  # sklearn's __setstate__ checked the nodes' dtype and length
    _require(count >= 1, owner, "tree_.node_count", f"{count}")
    _require(t.n_features == width, owner, "tree_.n_features", f"{t.n_features}, the estimator takes {width}")
    left, right, feature = t.children_left, t.children_right, t.feature
    index = np.arange(count)
    leaf = left == TREE_LEAF
    _require(bool(np.array_equal(leaf, right == TREE_LEAF)), owner, "tree_.nodes.right_child", "a node with one child")
    _require(not leaf[0] or count == 1, owner, "tree_.nodes.left_child", "a root leaf with more nodes after it")
    inner = ~leaf
    for name, children in (("left_child", left), ("right_child", right)):
        _require(
            bool(np.all((children[inner] > index[inner]) & (children[inner] < count))),
            owner, f"tree_.nodes.{name}", f"a child index not after its parent or not below {count}",
        )  # fmt: skip
    _require(bool(np.all((feature[inner] >= 0) & (feature[inner] < width))), owner, "tree_.nodes.feature",
             f"a feature index outside [0, {width})")  # fmt: skip
    reached = np.zeros(count, dtype=np.int64)
    np.add.at(reached, left[inner], 1)
    np.add.at(reached, right[inner], 1)
    _require(bool(reached[0] == 0 and np.all(reached[1:] == 1)), owner, "tree_.nodes", "a node reached twice or never")
    n_classes = np.asarray(t.n_classes)
    _require(t.n_outputs >= 1 and n_classes.shape == (t.n_outputs,) and bool(np.all(n_classes >= 1)), owner,
             "tree_.n_classes", f"{n_classes.tolist()} for {t.n_outputs} output(s)")  # fmt: skip
    _require(t.value.shape == (count, t.n_outputs, int(n_classes.max())), owner, "tree_.value", f"shape {t.value.shape}")


def _width(owner: Any) -> int:
    width = getattr(owner, "n_features_in_", None)
    _require(isinstance(width, int | np.integer) and 0 < int(width), owner, "n_features_in_", f"{width!r}")
    return int(width)  # type: ignore[arg-type]


def _check_tree_estimator(est: Any, width: int | None = None) -> None:
    """A tree estimator alone takes rows of its own `n_features_in_`; inside an ensemble,
    the ensemble's (its members may not record a width of their own)."""
    t = getattr(est, "tree_", None)
    _require(type(t) is Tree, est, "tree_", f"a {type(t).__name__}, not a Tree")
    own = getattr(est, "n_features_in_", None)
    if width is None:
        width = _width(est) if own is not None else int(t.n_features)
    _require(own is None or own == width, est, "n_features_in_", f"{own}, the ensemble takes {width}")
    check_tree(t, est, width)
    _require(t.n_outputs == est.n_outputs_, est, "n_outputs_", f"{est.n_outputs_}, the tree has {t.n_outputs}")
    classes = getattr(est, "n_classes_", None)
    if classes is not None:
        _require(bool(np.array_equal(np.atleast_1d(classes), t.n_classes)), est, "n_classes_", f"{classes} for {t.n_classes}")


def _check_forest(forest: Any) -> None:
    width, kind = _width(forest), _FORESTS[type(forest)]
    members = forest.estimators_
    _require(isinstance(members, list) and len(members) >= 1, forest, "estimators_", "not a non-empty list")
    for member in members:
        _require(type(member) is kind, forest, "estimators_", f"holds a {type(member).__name__}, not a {kind.__name__}")
        _check_tree_estimator(member, width)
        _require(member.n_outputs_ == forest.n_outputs_, forest, "n_outputs_", "differs from its trees'")


def _check_boosting(booster: Any) -> None:
    """`predict_stages` writes tree (i, k)'s value into column k of a grid as wide as the
    initial predictions, reading each tree's feature from rows as wide as the first tree's."""
    width, grid = _width(booster), booster.estimators_
    per_iteration = booster.n_trees_per_iteration_
    _require(isinstance(grid, np.ndarray) and grid.dtype == object and grid.ndim == 2 and grid.shape[0] >= 1,
             booster, "estimators_", "not a 2-d object array of trees")  # fmt: skip
    classifier = isinstance(booster, ensemble.GradientBoostingClassifier)
    expected = (1 if booster.n_classes_ <= 2 else booster.n_classes_) if classifier else 1
    _require(per_iteration == expected and grid.shape[1] == expected, booster, "estimators_",
             f"{grid.shape[1]} trees per iteration (n_trees_per_iteration_ {per_iteration}), expected {expected}")  # fmt: skip
    if classifier:
        _require(len(booster.classes_) == booster.n_classes_, booster, "n_classes_", f"{booster.n_classes_} for {len(booster.classes_)} classes")
        _require(getattr(booster._loss, "n_classes", expected) in (expected, booster.n_classes_), booster, "_loss", "another class count")
    for member in grid.ravel():
        _require(type(member) is tree.DecisionTreeRegressor, booster, "estimators_", f"holds a {type(member).__name__}")
        _check_tree_estimator(member, width)
        _require(member.tree_.n_outputs == 1 and member.tree_.max_n_classes == 1, booster, "estimators_", "a tree of more than one output")
    init = booster.init_
    if init != "zero":
        outputs = len(getattr(init, "classes_", ())) if classifier else getattr(init, "n_outputs_", 1)
        wanted = booster.n_classes_ if classifier else 1
        _require(outputs == wanted, booster, "init_", f"gives {outputs} output(s), expected {wanted}")


def _check_libsvm(model: Any) -> None:
    """What libsvm's `set_model` copies by counts it is given, and `predict` then reads."""
    _require(model.kernel in _KERNELS, model, "kernel", f"{model.kernel!r} is not one libsvm computes itself")
    _require(model._impl == ("c_svc" if isinstance(model, svm.SVC) else "epsilon_svr"), model, "_impl", f"{model._impl!r}")
    vectors, support = model.support_vectors_, model.support_
    _require(not model._sparse and isinstance(vectors, np.ndarray), model, "support_vectors_", "sparse support vectors")
    count, width = len(support), _width(model)
    _require(vectors.ndim == 2 and vectors.shape == (count, width), model, "support_vectors_", f"shape {vectors.shape} for {count} x {width}")
    rows = int(model.shape_fit_[0])
    _require(bool(np.all((support >= 0) & (support < rows))), model, "support_", f"an index outside [0, {rows})")
    n_support, coef, intercept = model._n_support, model._dual_coef_, model._intercept_
    if isinstance(model, svm.SVC):
        classes = len(model.classes_)
        pairs = classes * (classes - 1) // 2
        _require(classes >= 2 and n_support.shape == (classes,), model, "_n_support", f"shape {n_support.shape} for {classes} classes")
        _require(bool(np.all(n_support >= 0)) and int(n_support.sum()) == count, model, "_n_support", f"does not sum to {count}")
        _require(coef.shape == (classes - 1, count), model, "_dual_coef_", f"shape {coef.shape}, expected {(classes - 1, count)}")
    else:
        pairs = 1
        _require(coef.shape == (1, count), model, "_dual_coef_", f"shape {coef.shape}, expected {(1, count)}")
    _require(intercept.shape == (pairs,), model, "_intercept_", f"shape {intercept.shape}, expected ({pairs},)")
    for field in ("_probA", "_probB"):
        values = getattr(model, field)
        _require(values.ndim == 1 and len(values) in (0, pairs), model, field, f"length {len(values)}, expected 0 or {pairs}")
    _require(len(model._probA) == len(model._probB), model, "_probB", "not as long as _probA")


_CHECKS: dict[type, tuple[str, Callable[[Any], None]]] = {
    **{kind: ("tree_", _check_tree_estimator) for kind in _TREE_ESTIMATORS},
    **{kind: ("estimators_", _check_forest) for kind in _FORESTS},
    **{kind: ("estimators_", _check_boosting) for kind in _BOOSTING},
    **{kind: ("support_", _check_libsvm) for kind in _LIBSVM},
}


def _check_sparse(matrix: Any) -> None:
    """The compressed layout checked whole before scipy's own check, which is not enough
    alone: it skips its index checks when `indptr` ends at 0, and finds `indptr`
    non-decreasing by `np.diff`, which wraps in int32 (both fuzzing findings that crashed
    the process at the first product)."""
    _require(type(matrix) in _SPARSE, matrix, "(type)", "not a csr or csc matrix")
    _require(matrix.ndim == 2, matrix, "shape", f"{matrix.ndim}-d")
    major, minor = matrix.shape if matrix.format == "csr" else matrix.shape[::-1]
    indptr, indices, data = np.asarray(matrix.indptr), np.asarray(matrix.indices), np.asarray(matrix.data)
    for field, array in (("indptr", indptr), ("indices", indices)):
        _require(array.ndim == 1 and array.dtype in _INDEX_DTYPES, matrix, field, f"{array.ndim}-d {array.dtype}, not 1-d int32 or int64")
    _require(data.ndim == 1 and data.dtype.kind in "biufc", matrix, "data", f"{data.ndim}-d {data.dtype}, not 1-d numbers")
    _require(len(indptr) == major + 1, matrix, "indptr", f"length {len(indptr)} for {major} rows")
    _require(int(indptr[0]) == 0 and bool(np.all(indptr[1:] >= indptr[:-1])), matrix, "indptr", "not non-decreasing from 0")
    _require(int(indptr[-1]) == len(indices) == len(data), matrix, "indices",
             f"{len(indices)} indices and {len(data)} values for indptr ending at {int(indptr[-1])}")  # fmt: skip
    _require(bool(np.all((indices >= 0) & (indices < minor))), matrix, "indices", f"an index outside [0, {minor})")
    try:
        matrix.check_format(full_check=True)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidStructure(_name(matrix), "indptr/indices", str(exc)) from exc
