"""scikit-learn-compatible estimators through skops, with an exact trust list.

skops trusts by default every scikit-learn estimator (FunctionTransformer included) and
every numpy and scipy ufunc, and a caller can only add to that. Trusting by module
prefix went further: every callable under numpy was admitted, so a pipeline of
FunctionTransformers over numpy functions could execute a string at load or predict.
Here the format walks skops' node tree itself, before anything is constructed, and
names every type and callable the artifact would create, skops' defaults included:

- a node that builds data (an object, an array, a container) must be of a type in
  `TRUSTED_TYPES`, exact names, never prefixes;
- a node that yields a callable (a function or a type used as a value) must be in
  `TRUSTED_CALLABLES`, named one by one: numpy ufuncs that only do arithmetic, feature
  scores, and constructors of plain data;
- any other kind of node (partials, bound methods, operator callables, node kinds a later
  skops adds) is refused outright.

Only then does skops construct the estimator, and before anything predicts with it,
the inside of every type whose native code indexes its own arrays (trees, ensembles of
trees, libsvm models, sparse matrices) is checked (nonstop/formats/structure.py). A type
whose inside cannot be checked is not on the list:

- LightGBM's and XGBoost's boosters: their libraries rebuild each from a model string or
  buffer in the artifact with their own native parsers, and predict by following the
  trees' child and feature indices in C++; checking those would mean re-implementing each
  library's model format ahead of its parser. An operator who accepts that trusts them by
  exact name in `NONSTOP_TRUSTED_TYPES`, unchecked.
- HistGradientBoosting: its TreePredictor's node indices are followed without bounds
  checks, and skops itself refuses it.
- SplineTransformer: its scipy BSplines are evaluated in C by knot and coefficient
  arrays the artifact would set.
"""

from __future__ import annotations

import io
import zipfile
from collections import OrderedDict, defaultdict
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse
import skops.io as sio
from skops.io._audit import Node, get_tree
from skops.io._utils import read_schema
from sklearn import (
    compose,
    decomposition,
    dummy,
    ensemble,
    feature_selection,
    impute,
    linear_model,
    naive_bayes,
    pipeline,
    preprocessing,
    svm,
    tree,
)
from sklearn._loss import link, loss
from sklearn.tree._tree import Tree

from nonstop.archive import check_unpacked_size
from nonstop.formats.base import UnreadableArtifact, UntrustedContent
from nonstop.formats.structure import check_structure


def _name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__name__}"


def _loss_types() -> list[type]:
    """The Cython losses gradient boosting keeps (`CyHalfSquaredError`, ...): the type of
    each loss object's `closs` attribute, read from scikit-learn rather than guessed."""
    from sklearn._loss import _loss

    return [getattr(_loss, name) for name in dir(_loss) if name.startswith("Cy") and isinstance(getattr(_loss, name), type)]


_ESTIMATORS: list[type] = [
    pipeline.Pipeline,
    pipeline.FeatureUnion,
    compose.ColumnTransformer,
    compose.TransformedTargetRegressor,
    # preprocessing; FunctionTransformer only ever calls a function this list names
    preprocessing.StandardScaler,
    preprocessing.MinMaxScaler,
    preprocessing.MaxAbsScaler,
    preprocessing.RobustScaler,
    preprocessing.Normalizer,
    preprocessing.Binarizer,
    preprocessing.OneHotEncoder,
    preprocessing.OrdinalEncoder,
    preprocessing.TargetEncoder,
    preprocessing.LabelEncoder,
    preprocessing.LabelBinarizer,
    preprocessing.KBinsDiscretizer,
    preprocessing.PolynomialFeatures,
    preprocessing.PowerTransformer,
    preprocessing.QuantileTransformer,
    preprocessing.FunctionTransformer,
    impute.SimpleImputer,
    impute.MissingIndicator,
    feature_selection.VarianceThreshold,
    feature_selection.SelectKBest,
    feature_selection.SelectPercentile,
    feature_selection.SelectFromModel,
    decomposition.PCA,
    decomposition.TruncatedSVD,
    # models
    linear_model.LogisticRegression,
    linear_model.LinearRegression,
    linear_model.Ridge,
    linear_model.RidgeClassifier,
    linear_model.Lasso,
    linear_model.ElasticNet,
    linear_model.BayesianRidge,
    linear_model.HuberRegressor,
    linear_model.PoissonRegressor,
    linear_model.SGDClassifier,
    linear_model.SGDRegressor,
    tree.DecisionTreeClassifier,
    tree.DecisionTreeRegressor,
    tree.ExtraTreeClassifier,  # the members of ExtraTrees*
    tree.ExtraTreeRegressor,
    Tree,
    ensemble.RandomForestClassifier,
    ensemble.RandomForestRegressor,
    ensemble.ExtraTreesClassifier,
    ensemble.ExtraTreesRegressor,
    ensemble.GradientBoostingClassifier,
    ensemble.GradientBoostingRegressor,
    svm.SVC,
    svm.SVR,
    svm.LinearSVC,
    svm.LinearSVR,
    naive_bayes.GaussianNB,
    dummy.DummyClassifier,
    dummy.DummyRegressor,
    # what gradient boosting keeps of its loss
    loss.HalfSquaredError,
    loss.AbsoluteError,
    loss.HuberLoss,
    loss.PinballLoss,
    loss.HalfBinomialLoss,
    loss.HalfMultinomialLoss,
    loss.ExponentialLoss,
    loss.HalfPoissonLoss,  # PoissonRegressor's
    link.IdentityLink,
    link.LogLink,
    link.LogitLink,
    link.HalfLogitLink,
    link.MultinomialLogit,
    link.Interval,
]
# Left out on purpose (see the module's docstring): HistGradientBoosting, SplineTransformer,
# LightGBM's and XGBoost's wrappers and boosters.

_NUMPY_SCALARS: list[type] = [
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.str_,
]  # fmt: skip


def _sgd_loss_types() -> list[type]:
    """The Cython losses SGDClassifier keeps as `loss_function_` (`Hinge`, ...): used by
    `fit` only, read from scikit-learn rather than guessed."""
    from sklearn.linear_model import _sgd_fast

    return [t for t in vars(_sgd_fast).values() if isinstance(t, type) and t.__module__ == _sgd_fast.__name__]


TRUSTED_TYPES: frozenset[str] = frozenset(
    [_name(t) for t in _ESTIMATORS]
    + [_name(t) for t in _loss_types() + _sgd_loss_types()]
    + [_name(t) for t in _NUMPY_SCALARS]
    + [_name(t) for t in (dict, list, tuple, set, str, int, float, bool, slice, bytes, bytearray)]
    + [_name(t) for t in (OrderedDict, defaultdict)]
    + ["numpy.ndarray", "numpy.dtype", "numpy.random.mtrand.RandomState", "numpy.random._generator.Generator"]
    + [_name(t) for t in (scipy.sparse.csr_matrix, scipy.sparse.csc_matrix, scipy.sparse.csr_array, scipy.sparse.csc_array)]
)

_ARITHMETIC_UFUNCS = [np.log, np.log1p, np.log2, np.log10, np.exp, np.expm1, np.sqrt, np.square, np.absolute, np.negative]

TRUSTED_CALLABLES: frozenset[str] = frozenset(
    # ufuncs are C loops over numbers: they cannot import, open or evaluate anything
    [f"numpy.{u.__name__}" for u in _ARITHMETIC_UFUNCS]
    # univariate scores SelectKBest calls with (X, y): arithmetic on arrays
    + [_name(f) for f in (feature_selection.f_classif, feature_selection.f_regression, feature_selection.chi2)]
    # types used as values (a dtype parameter, a dict's key type, a tree's constructor)
    + [_name(t) for t in _NUMPY_SCALARS]
    + [_name(t) for t in (str, int, float, bool, list, dict, tuple, OrderedDict, Tree)]
    + [_name(t) for t in _loss_types() + _sgd_loss_types()]
    # the bit generators a numpy Generator is rebuilt with
    + ["numpy.random.PCG64", "numpy.random.MT19937"]
)

# skops node kinds that build data, checked against TRUSTED_TYPES
_DATA_NODES = frozenset(
    {
        "DictNode", "DefaultDictNode", "ListNode", "SetNode", "TupleNode", "SliceNode", "JsonNode",
        "BytesNode", "BytearrayNode", "NdArrayNode", "RandomStateNode", "RandomGeneratorNode", "DTypeNode",
        "SparseMatrixNode", "ObjectNode", "ConstructorFromReduceNode", "ReduceNode", "TreeNode", "LossNode",
        "CachedNode",
    }
)  # fmt: skip
# skops node kinds that yield a callable, checked against TRUSTED_CALLABLES
_CALLABLE_NODES = frozenset({"FunctionNode", "TypeNode"})


class SkopsFormat:
    name: ClassVar[str] = "skops"

    def dumps(self, estimator: Any) -> bytes:
        return sio.dumps(estimator)

    def types_in(self, data: bytes) -> set[str]:
        return set(self._audit(data, frozenset()).declared)

    def needs(self, data: bytes) -> list[str]:
        return self._audit(data, frozenset()).refused

    def loads(self, data: bytes, extra_types: Collection[str] = ()) -> Any:
        audited = self._audit(data, frozenset(extra_types))
        if audited.refused:
            raise UntrustedContent(audited.refused)
        try:
            # the tree just audited is the one constructed: skops' `loads` would read the
            # archive and build the same tree again, a third of a large forest's load
            estimator = audited.root.construct()
        except Exception as exc:  # skops and the libraries it calls raise assorted errors
            raise UnreadableArtifact(f"skops could not load the artifact: {exc}") from exc
        check_structure(estimator)  # before anything predicts with it
        return estimator

    def predict(self, estimator: Any, inputs: Any) -> np.ndarray:
        return np.asarray(estimator.predict(inputs))

    def predict_proba(self, estimator: Any, inputs: Any) -> np.ndarray | None:
        if not hasattr(estimator, "predict_proba"):
            return None
        return np.asarray(estimator.predict_proba(inputs), dtype=np.float64)

    # --- the audit ------------------------------------------------------------------

    def _audit(self, data: bytes, extra: frozenset[str]) -> _Audited:
        """Every name the artifact would construct, and those refused, constructing nothing.
        The nodes hold their arrays' bytes, read here within the size bound: constructing
        the root needs the archive no more."""
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                check_unpacked_size(archive, len(data))  # before any member is inflated
                schema, context = read_schema(archive)
                root = get_tree(schema, context, trusted=None)
                nodes = list(_nodes(root))
                for node in nodes:
                    node.trusted = []  # skops' own defaults no longer count: it reports every name
                declared = root.get_unsafe_set()
        except Exception as exc:  # a malformed archive or schema: zipfile, json and skops raise several types
            raise UnreadableArtifact(f"not a readable skops artifact: {exc}") from exc
        refused: set[str] = set()
        callables: set[str] = set()
        for node in nodes:
            kind, name = type(node).__name__, f"{node.module_name}.{node.class_name}"
            if kind in _CALLABLE_NODES:
                callables.add(name)
                if name not in TRUSTED_CALLABLES | extra:
                    refused.add(name)
            elif kind not in _DATA_NODES:
                refused.add(f"{name} (a {kind})")
            elif name not in TRUSTED_TYPES | extra:
                refused.add(name)
        # names a node declares besides its own type (a bit generator, a type held as a child)
        refused |= {n for n in declared - callables if n not in TRUSTED_TYPES | TRUSTED_CALLABLES | extra}
        return _Audited(root, sorted(declared), sorted(refused))


@dataclass(frozen=True)
class _Audited:
    root: Node
    declared: list[str]
    refused: list[str]


def _nodes(root: Node) -> Iterator[Node]:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        for child in node.children.values():
            items = child if isinstance(child, list) else child.values() if isinstance(child, dict) else [child]
            stack.extend(c for c in items if isinstance(c, Node))


SKOPS = SkopsFormat()
