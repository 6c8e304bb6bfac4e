"""The classic server a team writes first: FastAPI on uvicorn, pydantic body, joblib model.

Runs in its own virtualenv (fastapi, uvicorn[standard], scikit-learn, joblib), never in the
project's, as `uvicorn fastapi_server:app --workers N` with PEER_MODEL_FILE naming the
joblib export of the benchmark's estimator and PEER_MODEL_NAME its name.
"""

from __future__ import annotations

import os

import joblib
import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

_name = os.environ["PEER_MODEL_NAME"]
_model = joblib.load(os.environ["PEER_MODEL_FILE"])
app = FastAPI()


class PredictRequest(BaseModel):
    instances: list[list[float]]


@app.post("/v1/models/{model}:predict")
def predict(model: str, request: PredictRequest) -> dict[str, list[int]]:
    if model != _name:
        raise HTTPException(404, f"unknown model {model}")
    return {"predictions": _model.predict(np.asarray(request.instances)).tolist()}
