"""The classic server a team writes first: FastAPI on uvicorn, pydantic body, joblib model.

Runs in its own virtualenv (fastapi, uvicorn[standard], scikit-learn, joblib), never in the
project's, as `uvicorn fastapi_server:app --workers N` with PEER_MODEL_FILE naming the
joblib export of the benchmark's estimator (its feature names beside it, features.json)
and PEER_MODEL_NAME its name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import joblib
import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

_name = os.environ["PEER_MODEL_NAME"]
_model = joblib.load(os.environ["PEER_MODEL_FILE"])
app = FastAPI()


# the schema's feature names in order (beside the joblib file), for instances keyed by name
_columns: list[str] = json.loads((Path(os.environ["PEER_MODEL_FILE"]).parent / "features.json").read_text())


class PredictRequest(BaseModel):
    instances: list[list[float]] | list[dict[str, float]]


@app.post("/v1/models/{model}:predict")
def predict(model: str, request: PredictRequest) -> dict[str, list[int]]:
    if model != _name:
        raise HTTPException(404, f"unknown model {model}")
    instances = request.instances
    if instances and isinstance(instances[0], dict):
        try:
            rows = [[instance[c] for c in _columns] for instance in instances]  # type: ignore[index]
        except KeyError as exc:
            raise HTTPException(422, f"missing feature {exc}") from exc
    else:
        rows = instances  # type: ignore[assignment]
    return {"predictions": _model.predict(np.asarray(rows)).tolist()}
