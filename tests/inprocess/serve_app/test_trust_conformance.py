"""Every estimator type on the trust list serves every output it has, on every protocol.

Each type is fitted on small data of a matching task (a classifier, a regressor, or a
transformer as a pipeline step before a classifier), published to a real registry,
loaded as a replica loads it (audited, built, checked, verified, then shipped across the
loader's process boundary and rebuilt: `ship`/`arrive`), and asked over KServe V1 JSON,
V1 Arrow, V2 JSON, V2 binary tensors and V2 gRPC for its predictions and, where it has
them, its class probabilities; the loaded estimator's `decision_function` is compared
too. Every answer must be the in-process estimator's.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn import compose, decomposition, dummy, ensemble, feature_selection, impute, linear_model, naive_bayes
from sklearn import pipeline, preprocessing, svm, tree
from sklearn.base import is_classifier
from sklearn.datasets import load_diabetes

from nonstop.formats.skops_sklearn import _ESTIMATORS
from nonstop.loading import LoadedModel, TrustPolicy, load_version
from nonstop.registry import Registry
from serve_app.config import ModelTarget
from serve_app.grpc_v2 import oip_v2_pb2 as pb
from serve_app.grpc_v2 import oip_v2_pb2_grpc as pb_grpc
from serve_app.grpc_v2.servicer import GrpcV2
from serve_app.replica.dataplane import DataPlane
from serve_app.replica.holder import ModelHolder
from serve_app.replica.loader_actor import arrive, ship
from serve_app.rest.api import create_api
from serve_app.wire.limits import Limits
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_stream
from tests.conftest import MODEL
from tests.inprocess.serve_app.test_v2_grpc import _Servicer
from training.demo import day_frame
from training.publish import publish_model

ROWS = 6
Make = Callable[[], Any]


def _classifier_after(step: Make) -> Make:
    return lambda: pipeline.make_pipeline(step(), linear_model.LogisticRegression(max_iter=2000))


def _scaled(model: Make) -> Make:
    return lambda: pipeline.make_pipeline(preprocessing.StandardScaler(), model())


# how each type on the list is fitted and served: a model alone, a transformer as a step
RECIPES: dict[type, Make] = {
    pipeline.Pipeline: _classifier_after(preprocessing.StandardScaler),
    pipeline.FeatureUnion: _classifier_after(lambda: pipeline.FeatureUnion([("pca", decomposition.PCA(3)), ("scale", preprocessing.StandardScaler())])),
    compose.ColumnTransformer: _classifier_after(lambda: compose.ColumnTransformer([("s", preprocessing.StandardScaler(), [0, 1, 2])], remainder="drop")),
    compose.TransformedTargetRegressor: lambda: compose.TransformedTargetRegressor(linear_model.Ridge(), func=np.log1p, inverse_func=np.expm1),
    preprocessing.StandardScaler: _classifier_after(preprocessing.StandardScaler),
    preprocessing.MinMaxScaler: _classifier_after(preprocessing.MinMaxScaler),
    preprocessing.MaxAbsScaler: _classifier_after(preprocessing.MaxAbsScaler),
    preprocessing.RobustScaler: _classifier_after(preprocessing.RobustScaler),
    preprocessing.Normalizer: _classifier_after(preprocessing.Normalizer),
    preprocessing.Binarizer: _classifier_after(lambda: preprocessing.Binarizer(threshold=0.5)),
    preprocessing.OneHotEncoder: _classifier_after(lambda: preprocessing.OneHotEncoder(handle_unknown="ignore")),
    preprocessing.OrdinalEncoder: _classifier_after(lambda: preprocessing.OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)),
    preprocessing.TargetEncoder: _classifier_after(lambda: preprocessing.TargetEncoder(random_state=0)),
    preprocessing.KBinsDiscretizer: _classifier_after(lambda: preprocessing.KBinsDiscretizer(n_bins=3, encode="ordinal", quantile_method="averaged_inverted_cdf")),
    preprocessing.PolynomialFeatures: _classifier_after(lambda: preprocessing.PolynomialFeatures(2)),
    preprocessing.PowerTransformer: _classifier_after(preprocessing.PowerTransformer),
    preprocessing.QuantileTransformer: _classifier_after(lambda: preprocessing.QuantileTransformer(n_quantiles=20)),
    preprocessing.FunctionTransformer: _classifier_after(lambda: preprocessing.FunctionTransformer(np.log1p)),
    impute.SimpleImputer: _classifier_after(impute.SimpleImputer),
    impute.MissingIndicator: _classifier_after(
        lambda: pipeline.FeatureUnion([("all", impute.SimpleImputer()), ("gaps", impute.MissingIndicator(features="all"))])
    ),
    feature_selection.VarianceThreshold: _classifier_after(feature_selection.VarianceThreshold),
    feature_selection.SelectKBest: _classifier_after(lambda: feature_selection.SelectKBest(feature_selection.f_classif, k=5)),
    feature_selection.SelectPercentile: _classifier_after(lambda: feature_selection.SelectPercentile(feature_selection.chi2, percentile=20)),
    feature_selection.SelectFromModel: _classifier_after(lambda: feature_selection.SelectFromModel(linear_model.LogisticRegression(max_iter=2000))),
    decomposition.PCA: _classifier_after(lambda: decomposition.PCA(3)),
    decomposition.TruncatedSVD: _classifier_after(lambda: decomposition.TruncatedSVD(3, random_state=0)),
    linear_model.LogisticRegression: _scaled(linear_model.LogisticRegression),
    linear_model.LinearRegression: linear_model.LinearRegression,
    linear_model.Ridge: linear_model.Ridge,
    linear_model.RidgeClassifier: linear_model.RidgeClassifier,
    linear_model.Lasso: linear_model.Lasso,
    linear_model.ElasticNet: linear_model.ElasticNet,
    linear_model.BayesianRidge: linear_model.BayesianRidge,
    linear_model.HuberRegressor: _scaled(lambda: linear_model.HuberRegressor(max_iter=1000)),
    linear_model.PoissonRegressor: _scaled(linear_model.PoissonRegressor),
    linear_model.SGDClassifier: _scaled(lambda: linear_model.SGDClassifier(loss="log_loss", random_state=0)),
    linear_model.SGDRegressor: _scaled(lambda: linear_model.SGDRegressor(random_state=0)),
    tree.DecisionTreeClassifier: lambda: tree.DecisionTreeClassifier(max_depth=4, random_state=0),
    tree.DecisionTreeRegressor: lambda: tree.DecisionTreeRegressor(max_depth=4, random_state=0),
    tree.ExtraTreeClassifier: lambda: tree.ExtraTreeClassifier(max_depth=4, random_state=0),
    tree.ExtraTreeRegressor: lambda: tree.ExtraTreeRegressor(max_depth=4, random_state=0),
    ensemble.RandomForestClassifier: lambda: ensemble.RandomForestClassifier(n_estimators=5, random_state=0),
    ensemble.RandomForestRegressor: lambda: ensemble.RandomForestRegressor(n_estimators=5, random_state=0),
    ensemble.ExtraTreesClassifier: lambda: ensemble.ExtraTreesClassifier(n_estimators=5, random_state=0),
    ensemble.ExtraTreesRegressor: lambda: ensemble.ExtraTreesRegressor(n_estimators=5, random_state=0),
    ensemble.GradientBoostingClassifier: lambda: ensemble.GradientBoostingClassifier(n_estimators=5, random_state=0),
    ensemble.GradientBoostingRegressor: lambda: ensemble.GradientBoostingRegressor(n_estimators=5, random_state=0),
    svm.SVC: _scaled(lambda: svm.SVC(probability=True, random_state=0)),
    svm.SVR: _scaled(svm.SVR),
    svm.LinearSVC: _scaled(svm.LinearSVC),
    svm.LinearSVR: _scaled(svm.LinearSVR),
    naive_bayes.GaussianNB: naive_bayes.GaussianNB,
    dummy.DummyClassifier: lambda: dummy.DummyClassifier(strategy="prior"),
    dummy.DummyRegressor: dummy.DummyRegressor,
}
# on the list as parts of other estimators, never a model or a pipeline step of their own
PARTS_ONLY = {
    preprocessing.LabelEncoder: "encodes labels, not features (held inside classifiers)",
    preprocessing.LabelBinarizer: "encodes labels, not features (RidgeClassifier keeps one)",
}


def _estimator_types() -> list[type]:
    return [t for t in _ESTIMATORS if hasattr(t, "fit")]


def test_every_estimator_type_on_the_list_has_a_recipe() -> None:
    """A type added to the list without a way to serve it here fails this test."""
    missing = [t.__name__ for t in _estimator_types() if t not in RECIPES and t not in PARTS_ONLY]
    assert not missing, missing


def _data(classifier: bool) -> tuple[pd.DataFrame, str]:
    if classifier:
        return day_frame(0), "target"
    return load_diabetes(as_frame=True).frame.iloc[:200], "target"


async def _replica_load(registry: Registry, model: str, version: int) -> LoadedModel:
    """As a replica: the loader's load, shipped across its process boundary, rebuilt."""
    return arrive(ship(await asyncio.to_thread(load_version, registry, model, version, TrustPolicy())))


async def _ask_everything(registry: Registry, rows: pd.DataFrame, probabilities: bool) -> dict[str, Any]:
    """Predictions (and probabilities, asked or refused) over every protocol, from one replica."""
    holder = ModelHolder(registry, TrustPolicy(), load=lambda m, v, _beside: _replica_load(registry, m, v))
    await holder.configure(ModelTarget(model=MODEL, poll_interval_s=3600))
    plane = DataPlane(holder)
    got: dict[str, Any] = {}
    matrix = rows.to_numpy(dtype=np.float64)
    outputs = ["predict"] + (["predict_proba"] if probabilities else [])
    v2_json = {
        "inputs": [{"name": "x", "shape": list(matrix.shape), "datatype": "FP64", "data": matrix.tolist()}],
        "outputs": [{"name": name} for name in outputs],
    }
    header = json.dumps({
        "inputs": [{"name": "x", "shape": list(matrix.shape), "datatype": "FP64", "parameters": {"binary_data_size": matrix.nbytes}}],
        "outputs": [{"name": name, "parameters": {"binary_data": False}} for name in outputs],
    }).encode()  # fmt: skip
    api = create_api(plane, Limits())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://test") as client:
        query = {"probabilities": "true"} if probabilities else {}
        v1 = f"/v1/models/{MODEL}:predict"
        got["v1-json"] = await client.post(v1, params=query, json={"instances": rows.to_dict("records")})
        table = pa.Table.from_pandas(rows, preserve_index=False)
        got["v1-arrow"] = await client.post(v1, params=query, content=arrow_stream(table), headers={"content-type": ARROW_STREAM})
        infer = f"/v2/models/{MODEL}/infer"
        got["v2-json"] = await client.post(infer, json=v2_json)
        got["v2-binary"] = await client.post(
            infer, content=header + matrix.astype("<f8").tobytes(),
            headers={"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"},
        )  # fmt: skip
        got["refused-probabilities"] = None if probabilities else await client.post(v1, params={"probabilities": "true"}, json={"instances": rows.to_dict("records")})
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(GrpcV2(plane, Limits())), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = pb.ModelInferRequest(model_name=MODEL)
            request.inputs.add(name="x", datatype="FP64", shape=list(matrix.shape)).contents.fp64_contents.extend(matrix.ravel().tolist())
            for name in outputs:
                request.outputs.add(name=name)
            got["grpc"] = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    finally:
        await server.stop(None)
    got["loaded"] = holder.state.primary
    await holder.close()
    return got


def _v2_outputs(response: httpx.Response) -> dict[str, list[Any]]:
    assert response.status_code == 200, response.text
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


def _grpc_outputs(reply: pb.ModelInferResponse) -> dict[str, list[Any]]:
    widths = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4", "BOOL": "?"}
    found: dict[str, list[Any]] = {}
    for index, output in enumerate(reply.outputs):
        if reply.raw_output_contents:
            found[output.name] = np.frombuffer(reply.raw_output_contents[index], widths[output.datatype]).tolist()
        else:
            contents = output.contents
            found[output.name] = list(contents.fp64_contents or contents.int64_contents or contents.int_contents or contents.bool_contents)
    return found


def _same(a: Any, b: Any, exact: bool) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if exact:
        return a.tolist() == b.tolist()
    return a.shape == b.shape and bool(np.allclose(a.astype(float), b.astype(float), rtol=1e-9, atol=1e-12))


@pytest.mark.parametrize("kind", list(RECIPES), ids=lambda t: t.__name__)
def test_a_trusted_type_serves_every_output_it_has_on_every_protocol(registry: Registry, kind: type) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and deprecation notices of small fits
        estimator = RECIPES[kind]()
        classifier = is_classifier(estimator)
        frame, label = _data(classifier)
        publish_model(estimator, frame, model=MODEL, label=label, registry=registry, promote=True)
    rows = (day_frame(1) if classifier else load_diabetes(as_frame=True).frame.iloc[300:]).drop(columns=label).head(ROWS)
    probabilities = classifier and hasattr(estimator, "predict_proba")
    got = asyncio.run(_ask_everything(registry, rows, probabilities))
    predicted = estimator.predict(rows)
    exact = classifier
    proba = estimator.predict_proba(rows) if probabilities else None

    for protocol in ("v1-json", "v1-arrow"):
        response = got[protocol]
        assert response.status_code == 200, (protocol, response.text)
        assert _same(response.json()["predictions"], predicted, exact), protocol
        if probabilities:
            assert _same(response.json()["probabilities"], proba, False), protocol
    for protocol, outputs in (("v2-json", _v2_outputs(got["v2-json"])), ("v2-binary", _v2_outputs(got["v2-binary"])),
                              ("grpc", _grpc_outputs(got["grpc"]))):  # fmt: skip
        assert _same(outputs["predict"], predicted, exact), protocol
        if probabilities:
            assert _same(np.reshape(outputs["predict_proba"], proba.shape), proba, False), protocol  # type: ignore[union-attr]
    if not probabilities:
        refused = got["refused-probabilities"]
        assert refused.status_code == 422 and "gives no probabilities" in refused.json()["error"], refused.text
    loaded = got["loaded"].estimator
    if hasattr(estimator, "decision_function"):
        assert _same(loaded.decision_function(rows), estimator.decision_function(rows), False)
