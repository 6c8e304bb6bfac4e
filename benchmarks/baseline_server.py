"""The classic baseline: FastAPI on uvicorn, one predict per request through a DataFrame.

This is the container a classic Kubernetes Deployment would run: the same model file,
loaded the same safe way, but no batching and scikit-learn's own predict per request.
Run by benchmarks/throughput.py as `uvicorn benchmarks.baseline_server:app --workers N`,
with the registry and model named in the environment.
"""

from __future__ import annotations

import os

import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel

from nonstop.loading import TrustPolicy, load_version
from nonstop.registry import Registry

_registry = Registry(os.environ["BASELINE_REGISTRY"])
_model = os.environ.get("BASELINE_MODEL", "breast_cancer")
_loaded = load_version(_registry, _model, _registry.resolve(_model, "production") or 1, TrustPolicy())
_names = _loaded.manifest.feature_names
app = FastAPI()


class PredictRequest(BaseModel):
    instances: list[dict[str, float]]


@app.post("/v1/models/{model}:predict")
def predict(model: str, request: PredictRequest) -> dict[str, object]:
    frame = pd.DataFrame(request.instances)[_names]
    predictions = _loaded.estimator.predict(frame.to_numpy())
    return {"predictions": predictions.tolist(), "model_version": str(_loaded.version)}
