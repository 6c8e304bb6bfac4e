"""The peers: how each is installed, fed the benchmark's estimator, started and asked.

Each peer lives in its own virtualenv under the scratch folder, never in the project's
dependencies, with the project's scikit-learn version pinned so the joblib export loads as
it was fitted. KServe's and MLServer's sklearn servers read joblib files; nonstop reads its
skops artifact from the registry (see compare.py), so every server predicts with the same
fitted estimator.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
MODEL = "breast_cancer"
WORKERS = 2  # processes per peer: as many as nonstop has replicas, one per core here
SKLEARN = f"scikit-learn=={metadata.version('scikit-learn')}"
Payload = tuple[bytes, str]  # body and its content type
JSON = "application/json"
START_TIMEOUT_S = 300  # KServe restarts workers slower than 5 s to answer a ping: slow on a busy machine


def v1_body(rows: list[list[float]]) -> Payload:
    """KServe's V1 shape, which nonstop and the FastAPI server read too: lists in schema order."""
    return json.dumps({"instances": rows}).encode(), JSON


def v1_objects_body(names: list[str], rows: list[list[float]]) -> Payload:
    """V1 instances keyed by feature name, keys in schema order: what nonstop's README
    teaches and what a client serialising its records sends."""
    return json.dumps({"instances": [dict(zip(names, row, strict=True)) for row in rows]}).encode(), JSON


def v2_pandas_body(names: list[str], rows: list[list[float]]) -> Payload:
    """Named features the way KServe and MLServer take them: Open Inference Protocol v2,
    one FP64 tensor per feature, decoded into a pandas DataFrame (`content_type: pd`)."""
    inputs = [{"name": n, "shape": [len(rows)], "datatype": "FP64", "data": [r[i] for r in rows]} for i, n in enumerate(names)]
    return json.dumps({"parameters": {"content_type": "pd"}, "inputs": inputs}).encode(), JSON


def v2_body(rows: list[list[float]]) -> Payload:
    """Open Inference Protocol v2, the only REST shape MLServer reads: one FP64 tensor."""
    tensor = {"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64", "data": sum(rows, [])}
    return json.dumps({"inputs": [tensor]}).encode(), JSON


@dataclass(frozen=True)
class Peer:
    name: str  # as in the table
    setup: str  # how it is configured, for the report
    requirements: tuple[str, ...]
    packages: tuple[str, ...]  # whose installed versions the report names
    path: str  # the predict route
    body: Callable[[list[list[float]]], Payload]
    named_path: str  # the route for named features
    named_body: Callable[[list[str], list[list[float]]], Payload]  # features by name, its own way
    command: Callable[[Path, Path, int], list[str]]  # (venv, model folder, port) -> argv
    v2_path: str | None = None  # the V2 infer route, where one FP64 tensor is not already its `body`

    def venv(self, scratch: Path) -> Path:
        return scratch / f"venv-{self.name.lower()}"


def _kserve(venv: Path, model_dir: Path, port: int) -> list[str]:
    return [
        str(venv / "bin/python"), str(HERE / "kserve_server.py"),
        "--model_dir", str(model_dir), "--model_name", MODEL, "--http_port", str(port),
        "--grpc_port", str(port + 1), "--workers", str(WORKERS), "--enable_grpc", "false",
        "--enable_latency_logging", "false",
    ]  # fmt: skip


def _mlserver(venv: Path, model_dir: Path, port: int) -> list[str]:
    (model_dir / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": port,
                "grpc_port": port + 1,
                "metrics_port": port + 2,
                "parallel_workers": WORKERS,
                "debug": False,
            }
        )
    )
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib"},
            }
        )
    )
    return [str(venv / "bin/mlserver"), "start", str(model_dir)]


def _fastapi(venv: Path, model_dir: Path, port: int) -> list[str]:
    return [
        str(venv / "bin/uvicorn"), "fastapi_server:app", "--app-dir", str(HERE), "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(WORKERS), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip


PEERS = (
    Peer(
        name="KServe",
        setup=f"kserve ModelServer, {WORKERS} workers, sklearn model (joblib) as KServe's sklearnserver loads it, "
        "access and latency logging off",
        requirements=("kserve==0.21.0", SKLEARN, "joblib"),
        packages=("kserve", "scikit-learn"),
        path=f"/v1/models/{MODEL}:predict",
        body=v1_body,
        named_path=f"/v2/models/{MODEL}/infer",  # V1 objects of scalars fail in its get_predict_input
        named_body=v2_pandas_body,
        command=_kserve,
        v2_path=f"/v2/models/{MODEL}/infer",
    ),
    Peer(
        name="MLServer",
        setup=f"mlserver start, mlserver_sklearn.SKLearnModel (joblib), parallel_workers={WORKERS}, "
        "no adaptive batching",
        requirements=("mlserver==1.7.1", "mlserver-sklearn==1.7.1", SKLEARN, "uvloop<0.22"),  # 0.22 broke its workers
        packages=("mlserver", "mlserver-sklearn", "scikit-learn", "uvloop"),
        path=f"/v2/models/{MODEL}/infer",
        body=v2_body,
        named_path=f"/v2/models/{MODEL}/infer",
        named_body=v2_pandas_body,
        command=_mlserver,
    ),
    Peer(
        name="FastAPI",
        setup=f"FastAPI + uvicorn[standard] (uvloop, httptools), {WORKERS} workers, pydantic body, "
        "joblib model, sklearn predict per request",
        requirements=("fastapi", "uvicorn[standard]", SKLEARN, "joblib"),
        packages=("fastapi", "uvicorn", "uvloop", "scikit-learn"),
        path=f"/v1/models/{MODEL}:predict",
        body=v1_body,
        named_path=f"/v1/models/{MODEL}:predict",
        named_body=v1_objects_body,
        command=_fastapi,
    ),
)


def ensure_venv(peer: Peer, scratch: Path) -> dict[str, str]:
    """Create or reuse the peer's virtualenv; returns the installed versions it runs."""
    venv = peer.venv(scratch)
    stamp = venv / ".requirements"
    wanted = "\n".join(peer.requirements)
    if not stamp.exists() or stamp.read_text() != wanted:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)  # on the base interpreter
        pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, *peer.requirements], check=True)
        stamp.write_text(wanted)
    query = "import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in %r}))" % (peer.packages,)
    out = subprocess.run([str(venv / "bin/python"), "-c", query], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


class Running:
    """One peer's server process group, alive for the `with` block only."""

    def __init__(self, peer: Peer, scratch: Path, model_dir: Path, port: int, probe: Payload) -> None:
        self.peer, self.url = peer, f"http://127.0.0.1:{port}{peer.path}"
        self.named_url = f"http://127.0.0.1:{port}{peer.named_path}"
        self.v2_url = f"http://127.0.0.1:{port}{peer.v2_path}" if peer.v2_path else None
        self._argv = peer.command(peer.venv(scratch), model_dir, port)
        self._log = scratch / f"{peer.name.lower()}.log"
        self._probe = probe
        self._model_dir = model_dir
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Running:
        with self._log.open("ab") as log:
            env = {**os.environ, "PEER_MODEL_NAME": MODEL, "PEER_MODEL_FILE": str(self._model_dir / "model.joblib")}
            self._process = subprocess.Popen(
                self._argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=HERE, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        body, content_type = self._probe
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.peer.name} exited with {self._process.returncode}; see {self._log}")
            try:
                answer = httpx.post(self.url, content=body, headers={"content-type": content_type}, timeout=5)
                if answer.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"{self.peer.name} did not answer {self.url} within {START_TIMEOUT_S} s; see {self._log}")
            time.sleep(0.5)

    def __exit__(self, *_: Any) -> None:
        if self._process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self._process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self._process.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue
        self._process = None
