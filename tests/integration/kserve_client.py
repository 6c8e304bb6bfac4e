"""Run by tests/integration/test_v2_clients.py with the python of a separate venv that
holds KServe's own package (`kserve` pins pandas, protobuf and psutil below what Ray
Serve 2.60 and this project use, so it cannot share the project's venv). Never imported
by the project: it speaks to the served app over HTTP only, as any KServe user would.

    python kserve_client.py BASE_URL MODEL  < {"names": [...], "rows": [[...], ...]}

prints one JSON object: what each client call returned.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(base_url: str, model: str, names: list[str], rows: list[list[float]]) -> dict[str, object]:
    matrix = np.asarray(rows, dtype=np.float64)
    report: dict[str, object] = {}
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
    report["v1_live"] = await v1.is_server_live(base_url)
    report["v1_model_ready"] = await v1.is_model_ready(base_url, model)
    report["v1_predictions"] = (await v1.infer(base_url, {"instances": rows}, model_name=model))["predictions"]
    await v1.close()

    v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    report["v2_live"] = await v2.is_server_live(base_url)
    report["v2_ready"] = await v2.is_server_ready(base_url)
    report["v2_model_ready"] = await v2.is_model_ready(base_url, model)
    for binary in (False, True):
        inputs = []
        for i, name in enumerate(names):
            tensor = InferInput(name=name, shape=[len(rows)], datatype="FP64")
            tensor.set_data_from_numpy(np.ascontiguousarray(matrix[:, i]), binary_data=binary)
            inputs.append(tensor)
        request = InferRequest(model_name=model, infer_inputs=inputs, request_id=f"kserve-{binary}")
        headers: dict[str, str] = {}
        response = await v2.infer(base_url, request, model_name=model, response_headers=headers)
        output = response.outputs[0]
        report[f"v2_{'binary' if binary else 'json'}"] = {
            # KServe's InferResponse.from_bytes drops the body's model_version; the header has it too
            "version": headers.get("x-model-version"),
            "id": response.id,
            "name": output.name,
            "predictions": output.as_numpy().tolist(),
        }
    await v2.close()
    return report


if __name__ == "__main__":
    given = json.load(sys.stdin)
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], given["names"], given["rows"]))))
