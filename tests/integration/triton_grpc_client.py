"""Run by tests/integration/test_v2_grpc.py with the python of a separate venv that holds
`tritonclient[grpc]` (it pins protobuf<7, below what Ray Serve 2.60 runs with here, so it
cannot share the project's venv). Never imported by the project: it speaks to the served
app over gRPC only, as any Triton user would, with Triton's client and Triton's protos.

    python triton_grpc_client.py check ADDRESS MODEL < {"names": [...], "rows": [[...], ...]}
    python triton_grpc_client.py load ADDRESS MODEL STOP_FILE < {"names": [...], "rows": [[...], ...]}

`check` prints one JSON object: what each call returned, or the status code and message
it failed with. `load` calls infer from 4 threads until STOP_FILE exists (5 minutes at
most) and prints one JSON line per call: the version that answered and its predictions,
or the failure.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

MAX_LOAD_S = 300.0


def _failure(call: Callable[[], Any]) -> dict[str, Any]:
    """What a call that should fail failed with (or what it returned, if it did not)."""
    try:
        return {"returned": str(call())[:300]}
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}


def _matrix_input(rows: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput("input-0", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows)
    return tensor


def _feature_inputs(names: list[str], matrix: np.ndarray) -> list[triton.InferInput]:
    inputs = []
    for i, name in enumerate(names):
        tensor = triton.InferInput(name, [len(matrix)], "FP64")
        tensor.set_data_from_numpy(np.ascontiguousarray(matrix[:, i]))
        inputs.append(tensor)
    return inputs


def _answer(result: triton.InferResult, output: str = "predict") -> dict[str, Any]:
    response = result.get_response()
    return {"version": response.model_version, "id": response.id, "values": result.as_numpy(output).tolist()}


def check(address: str, model: str, names: list[str], rows: list[list[float]]) -> dict[str, Any]:
    client = triton.InferenceServerClient(address)
    matrix = np.asarray(rows, dtype=np.float64)
    report: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "metadata": client.get_model_metadata(model, as_json=True),
        "server": client.get_server_metadata(as_json=True),
    }
    report["fp64_matrix"] = _answer(client.infer(model, [_matrix_input(matrix, "FP64")], request_id="m64"))
    report["fp32_matrix"] = _answer(client.infer(model, [_matrix_input(matrix.astype(np.float32), "FP32")]))
    report["per_feature"] = _answer(client.infer(model, _feature_inputs(names, matrix)))
    asked = [triton.InferRequestedOutput("predict_proba"), triton.InferRequestedOutput("predict")]
    both = client.infer(model, _feature_inputs(names, matrix), outputs=asked)
    report["probabilities"] = {**_answer(both), "probabilities": both.as_numpy("predict_proba").tolist()}
    version = report["fp64_matrix"]["version"]
    report["versioned"] = _answer(client.infer(model, [_matrix_input(matrix, "FP64")], model_version=version))
    report["version_not_held"] = _failure(lambda: client.infer(model, [_matrix_input(matrix, "FP64")], model_version="999"))
    report["model_ready_not_held"] = _failure(lambda: client.is_model_ready(model, "999"))
    report["unknown_model"] = _failure(lambda: client.infer("no_such_model", [_matrix_input(matrix, "FP64")]))

    wide = np.hstack([matrix, matrix[:, :1]])
    report["wrong_shape"] = _failure(lambda: client.infer(model, [_matrix_input(wide, "FP64")]))
    as_text = [triton.InferInput(name, [len(rows)], "BYTES") for name in names]
    for i, tensor in enumerate(as_text):
        tensor.set_data_from_numpy(np.array([str(v).encode() for v in matrix[:, i]], dtype=np.object_))
    report["wrong_datatype"] = _failure(lambda: client.infer(model, as_text))
    report["unknown_output"] = _failure(
        lambda: client.infer(model, [_matrix_input(matrix, "FP64")], outputs=[triton.InferRequestedOutput("nope")])
    )
    many = np.repeat(matrix, 12_000 // len(matrix) + 1, axis=0).astype(np.float32)
    report["too_many_rows"] = _failure(lambda: client.infer(model, [_matrix_input(many, "FP32")]))
    huge = np.repeat(matrix, 20_000 // len(matrix) + 1, axis=0)[:20_000]
    report["oversized_message"] = _failure(lambda: client.infer(model, [_matrix_input(huge, "FP64")]))

    # What Triton's client never sends by itself: typed contents, and raw bytes of the
    # wrong length, built with Triton's own protos and sent through its own stub.
    stub = client._client_stub
    typed = service_pb2.ModelInferRequest(model_name=model, id="typed")
    tensor = typed.inputs.add(name="input-0", datatype="FP64", shape=list(matrix.shape))
    tensor.contents.fp64_contents.extend(matrix.ravel().tolist())
    reply = stub.ModelInfer(typed, timeout=30)
    report["typed_contents"] = {
        "version": reply.model_version,
        "values": np.frombuffer(reply.raw_output_contents[0], dtype="<i8").tolist(),
    }
    short = service_pb2.ModelInferRequest(model_name=model)
    short.inputs.add(name="input-0", datatype="FP64", shape=list(matrix.shape))
    short.raw_input_contents.append(matrix.tobytes()[:-8])

    def send_short() -> Any:
        try:
            return stub.ModelInfer(short, timeout=30)
        except Exception as exc:  # grpc.RpcError, reported in the shape _failure uses
            raise InferenceServerException(msg=exc.details(), status=str(exc.code())) from exc

    report["raw_wrong_length"] = _failure(send_short)
    client.close()
    return report


def load(address: str, model: str, names: list[str], rows: list[list[float]], stop: Path) -> None:
    matrix = np.asarray(rows, dtype=np.float64)
    deadline = time.monotonic() + MAX_LOAD_S
    lock = threading.Lock()

    def worker(per_feature: bool) -> None:
        client = triton.InferenceServerClient(address)
        inputs = _feature_inputs(names, matrix) if per_feature else [_matrix_input(matrix, "FP64")]
        while time.monotonic() < deadline and not stop.exists():
            try:
                line = _answer(client.infer(model, inputs))
            except Exception as exc:  # every failure is the test's finding, whatever its type
                line = {"failure": f"{type(exc).__name__}: {exc}"}
            with lock:
                print(json.dumps(line), flush=True)
        client.close()

    threads = [threading.Thread(target=worker, args=(i % 2 == 1,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    given = json.load(sys.stdin)
    command, address, model = sys.argv[1:4]
    if command == "check":
        print(json.dumps(check(address, model, given["names"], given["rows"])))
    else:
        load(address, model, given["names"], given["rows"], Path(sys.argv[4]))
