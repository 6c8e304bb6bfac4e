"""Class probabilities and regression outputs over HTTP, in-process through the real app.

A KServe V1 client that asks nothing new gets exactly the V1 answer; `?probabilities=true`
adds the probabilities and the classes they are ordered by; the metadata says the task,
the classes and the output shape; the Arrow body gives the same answers as JSON."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from sklearn.datasets import load_diabetes
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import Ridge

from nonstop.registry import Registry
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_stream
from tests.conftest import MODEL
from tests.inprocess.serve_app.inprocess import PREDICT, call
from training.demo import day_frame
from training.publish import publish_model


def _classifier(registry: Registry) -> tuple[RandomForestClassifier, list[dict[str, float]]]:
    frame, holdout = day_frame(0), day_frame(1)
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(frame.drop(columns="target"), frame["target"])
    publish_model(model, frame, model=MODEL, label="target", holdout=holdout, registry=registry, promote=True)
    return model, holdout.drop(columns="target").head(6).to_dict("records")


def test_probabilities_are_asked_for_and_kserve_v1_answers_stay_as_they_were(registry: Registry) -> None:
    model, rows = _classifier(registry)
    plain = call(registry, "POST", PREDICT, json={"instances": rows})
    assert plain.status_code == 200, plain.text
    assert set(plain.json()) == {"predictions", "model_version"}

    asked = call(registry, "POST", PREDICT, params={"probabilities": "true"}, json={"instances": rows})
    assert asked.status_code == 200, asked.text
    body = asked.json()
    frame_rows = day_frame(1).drop(columns="target").head(6)
    assert body["predictions"] == plain.json()["predictions"] == model.predict(frame_rows).tolist()
    assert body["classes"] == [0, 1]
    assert np.allclose(body["probabilities"], model.predict_proba(frame_rows), rtol=0, atol=0)

    table = pa.Table.from_pandas(frame_rows, preserve_index=False)
    arrow = call(registry, "POST", PREDICT, params={"probabilities": "true"}, content=arrow_stream(table),
                 headers={"content-type": ARROW_STREAM})  # fmt: skip
    assert arrow.status_code == 200, arrow.text
    assert arrow.json() == body

    meta = call(registry, "GET", f"/v1/models/{MODEL}").json()
    assert meta["task"] == "classification" and meta["classes"] == [0, 1]
    assert meta["output"] == {"prediction": "class", "probabilities": 2}


def test_a_regressor_answers_floats_and_refuses_probabilities(registry: Registry) -> None:
    frame = load_diabetes(as_frame=True).frame
    publish_model(Ridge(), frame, model=MODEL, label="target", registry=registry, promote=True)
    rows = frame.drop(columns="target").head(4)
    answer = call(registry, "POST", PREDICT, json={"instances": rows.to_dict("records")})
    assert answer.status_code == 200, answer.text
    assert all(isinstance(p, float) for p in answer.json()["predictions"])
    refused = call(registry, "POST", PREDICT, params={"probabilities": "true"}, json={"instances": rows.to_dict("records")})
    assert refused.status_code == 422 and "gives no probabilities (a regression model)" in refused.json()["error"]
    bad = call(registry, "POST", PREDICT, params={"probabilities": "maybe"}, json={"instances": rows.to_dict("records")})
    assert bad.status_code == 422 and "probabilities" in bad.json()["error"]
    meta = call(registry, "GET", f"/v1/models/{MODEL}").json()
    assert meta["task"] == "regression" and meta["classes"] == []
    assert meta["output"] == {"prediction": "number", "probabilities": None}
