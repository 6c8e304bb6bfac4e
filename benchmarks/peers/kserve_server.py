"""A KServe ModelServer with a scikit-learn model read from a joblib file.

What KServe's sklearnserver image does, on the `kserve` SDK from PyPI (the sklearnserver
package itself is not published there): the V1 protocol's `instances` become one numpy
array, one `predict` per request. Runs in its own virtualenv (kserve, scikit-learn,
joblib), never in the project's:

    python kserve_server.py --model_dir DIR --model_name NAME --http_port P --workers 2
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path
from typing import Any

import joblib
from kserve import Model, ModelServer, model_server
from kserve.utils.utils import get_predict_input, get_predict_response

# Quiet, as a tuned deployment runs it: no access or per-request latency lines, no
# per-request deprecation warning. At module level, so the spawned workers (which import
# this file again) are quiet too; KServe leaves loggers that have handlers as they are.
warnings.simplefilter("ignore")
for _name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access"):
    _logger = logging.getLogger(_name)
    _logger.addHandler(logging.NullHandler())
    _logger.setLevel(logging.WARNING)
    _logger.propagate = False


class JoblibModel(Model):
    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self._file = Path(model_dir) / "model.joblib"
        self._estimator: Any = None

    def load(self) -> bool:
        self._estimator = joblib.load(self._file)
        self.ready = True
        return self.ready

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        return get_predict_response(payload, self._estimator.predict(get_predict_input(payload)), self.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", required=True)
    args, _ = parser.parse_known_args()
    model = JoblibModel(args.model_name, args.model_dir)
    model.load()
    ModelServer().start([model])
