"""Capture and outcomes in-process: the real routes (httpx over ASGI) and the real gRPC
servicer (grpc.aio on loopback) over one data plane and one recorder writing real Parquet.
What the clients were answered, with the request ids they saw, is counted against the store."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from functools import partial
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

from nonstop.capture import RECORDS, CaptureConfig, filesystem, read
from nonstop.loading import TrustPolicy
from nonstop.outcomes import joined
from nonstop.quality import NO_PROBABILITIES, VersionQuality
from nonstop.registry import Registry
from nonstop_ops.commands.stack import _describe
from nonstop.schema import frame_to_matrix
from serve_app.capture.live import LiveQuality
from serve_app.capture.outcomes import OutcomeSink
from serve_app.capture.recorder import Recorder
from serve_app.config import ModelTarget
from serve_app.edge import KEY_HEADER, REQUEST_ID_HEADER
from serve_app.grpc_v2 import oip_v2_pb2 as pb
from serve_app.grpc_v2 import oip_v2_pb2_grpc as pb_grpc
from serve_app.grpc_v2.servicer import GrpcV2
from serve_app.replica.dataplane import DataPlane
from serve_app.replica.holder import ModelHolder
from serve_app.replica.state import ReplicaStatus
from serve_app.rest.api import create_api
from serve_app.rollout.canary import Canary
from serve_app.rollout.moves import Rollouts
from serve_app.rollout.policy import Policy
from serve_app.wire.limits import Limits
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_stream
from serve_app.wire.v2_json import BINARY_CONTENT_TYPE, HEADER_LENGTH
from tests.conftest import MODEL, train_into
from tests.inprocess.serve_app.inprocess import PREDICT
from training import demo

V2_INFER = f"/v2/models/{MODEL}/infer"
OUTCOMES = f"/v1/models/{MODEL}/outcomes"
Client = tuple[httpx.AsyncClient, pb_grpc.GRPCInferenceServiceStub, Recorder]


class _Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """ModelInfer as the deployment wires it (serve_app/app.py): the request id from the call's metadata."""

    def __init__(self, v2: GrpcV2) -> None:
        self.v2 = v2

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await self.v2.answer(self.v2.infer_for(context), request, context, pb.ModelInferResponse, request.model_name)


def _serve(registry: Registry, config: CaptureConfig, calls: Callable[[Client], Awaitable[Any]]) -> tuple[Any, Recorder]:
    """Run `calls` against HTTP and gRPC over one plane; the recorder is closed (flushed) after."""

    async def go() -> Any:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(ModelTarget(model=MODEL, poll_interval_s=3600))
        recorder.configure(config)
        plane = DataPlane(holder, capture=recorder)
        api = create_api(plane, Limits(), OutcomeSink(recorder))
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(GrpcV2(plane, Limits())), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with (
                httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://test") as http,
                grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
            ):
                return await calls((http, pb_grpc.GRPCInferenceServiceStub(channel), recorder))
        finally:
            await server.stop(None)
            await holder.close()
            await asyncio.to_thread(recorder.close)

    recorder = Recorder(registry.uri)
    return asyncio.run(go()), recorder


def _rows(registry: Registry, n: int) -> list[list[float]]:
    return registry.manifest(MODEL, 1).samples.inputs[:n]


async def _every_protocol(client: Client, rows: list[list[float]], names: list[str], given: str | None) -> list[tuple[str, list[Any]]]:
    """One request per protocol; each answer's request id and predictions, as the client saw them."""
    http, stub, _ = client
    headers = {REQUEST_ID_HEADER: f"{given}-{{}}"} if given else {}
    seen: list[tuple[str, list[Any]]] = []

    def h(kind: str, **more: str) -> dict[str, str]:
        return {k: v.format(kind) for k, v in headers.items()} | more

    answer = await http.post(PREDICT + "?probabilities=true", json={"instances": rows}, headers=h("v1json"))
    seen.append((answer.headers[REQUEST_ID_HEADER], answer.json()["predictions"]))
    table = pa.table({name: [r[i] for r in rows] for i, name in enumerate(names)})
    answer = await http.post(PREDICT, content=arrow_stream(table), headers=h("v1arrow", **{"content-type": ARROW_STREAM}))
    seen.append((answer.headers[REQUEST_ID_HEADER], answer.json()["predictions"]))
    tensor = {"name": "x", "shape": [len(rows), len(names)], "datatype": "FP64"}
    answer = await http.post(V2_INFER, json={"inputs": [tensor | {"data": np.ravel(rows).tolist()}]}, headers=h("v2json"))
    seen.append((answer.headers[REQUEST_ID_HEADER], answer.json()["outputs"][0]["data"]))
    matrix = np.asarray(rows, dtype="<f8")
    head = json.dumps({"inputs": [tensor | {"parameters": {"binary_data_size": matrix.nbytes}}]}).encode()
    answer = await http.post(
        V2_INFER, content=head + matrix.tobytes(), headers=h("v2binary", **{HEADER_LENGTH: str(len(head)), "content-type": BINARY_CONTENT_TYPE})
    )
    seen.append((answer.headers[REQUEST_ID_HEADER], answer.json()["outputs"][0]["data"]))
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="FP64", shape=[len(rows), len(names)]).contents.fp64_contents.extend(np.ravel(rows).tolist())
    call = stub.ModelInfer(request, metadata=tuple(h("grpc").items()))
    reply = await call
    trailing = dict(await call.trailing_metadata())
    seen.append((trailing[REQUEST_ID_HEADER], np.frombuffer(reply.raw_output_contents[0], "<i8").tolist()))
    return seen


@pytest.mark.parametrize("given", [None, "client"], ids=["generated-ids", "client-ids"])
def test_every_protocol_is_captured_once_as_the_client_was_answered(served: Registry, tmp_path: Path, given: str | None) -> None:
    manifest = served.manifest(MODEL, 1)
    rows = _rows(served, 3)
    config = CaptureConfig(enabled=True, destination=str(tmp_path / "captures"), flush_interval_s=600)

    async def calls(client: Client) -> list[tuple[str, list[Any]]]:
        rounds = [given and f"{given}{n}" for n in range(2)]
        return [pair for name in rounds for pair in await _every_protocol(client, rows, manifest.feature_names, name)]

    seen, recorder = _serve(served, config, calls)
    ids = [rid for rid, _ in seen]
    assert len(set(ids)) == len(ids) == 10  # a new id each request, the client's own when it sent one
    if given:
        assert {rid.rsplit("-", 1)[0] for rid in ids} == {"client0", "client1"}
    stored = read(*filesystem(config.destination or ""), RECORDS, MODEL).to_pandas()
    assert sorted(stored.drop_duplicates(["request_id", "row"])["request_id"]) == sorted(stored["request_id"])  # once each
    for rid, predictions in seen:
        mine = stored[stored["request_id"] == rid].sort_values("row")
        assert mine["prediction"].tolist() == predictions
        assert set(mine["version"]) == {1} and set(mine["role"]) == {"primary"} and set(mine["model"]) == {MODEL}
        np.testing.assert_allclose(mine[[f"f_{n}" for n in manifest.feature_names]].to_numpy(), rows)
    with_probabilities = stored[stored["probabilities"].notna()]
    assert len(with_probabilities) == 2 * len(rows)  # only the V1 requests that asked for them
    assert recorder.status().captured_rows == 10 * len(rows) and recorder.status().dropped_rows == 0


def test_capture_is_off_unless_configured(served: Registry, tmp_path: Path) -> None:
    async def calls(client: Client) -> list[tuple[str, list[Any]]]:
        return await _every_protocol(client, _rows(served, 2), served.manifest(MODEL, 1).feature_names, None)

    _, recorder = _serve(served, CaptureConfig(destination=str(tmp_path / "captures")), calls)
    assert not (tmp_path / "captures").exists() and not Path(served.uri, "captures").exists()
    assert recorder.status().captured_rows == recorder.status().dropped_rows == 0


def test_an_unwritable_destination_answers_every_request_and_counts_the_drops(served: Registry, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = CaptureConfig(enabled=True, destination=str(blocker / "captures"), flush_interval_s=0.1)

    async def calls(client: Client) -> list[tuple[str, list[Any]]]:
        answers = [pair for _ in range(3) for pair in await _every_protocol(client, _rows(served, 2), served.manifest(MODEL, 1).feature_names, None)]
        label = served.manifest(MODEL, 1).classes[0]
        outcomes = await client[0].post(OUTCOMES, json={"outcomes": [{"request_id": answers[0][0], "label": label}]})
        assert outcomes.status_code == 503 and "cannot write captures" in outcomes.json()["error"]  # try again later
        return answers

    seen, recorder = _serve(served, config, calls)
    assert len(seen) == 15  # every request answered (an error would have no request id header)
    assert recorder.status().captured_rows == 0 and recorder.status().dropped_rows == 15 * 2


def test_the_memory_bound_drops_and_counts_what_would_pass_it(served: Registry, tmp_path: Path) -> None:
    config = CaptureConfig(enabled=True, destination=str(tmp_path / "captures"), max_buffered_rows=3, flush_interval_s=600)

    async def calls(client: Client) -> list[str]:
        http, _, recorder = client
        return [(await http.post(PREDICT, json={"instances": _rows(served, 2)})).headers[REQUEST_ID_HEADER] for _ in range(3)]

    ids, recorder = _serve(served, config, calls)
    stored = read(*filesystem(config.destination or ""), RECORDS, MODEL).to_pandas()
    assert sorted(set(stored["request_id"])) == [ids[0]]  # the second would have made 4 rows of 3
    assert recorder.status().dropped_rows == 4 and recorder.status().captured_rows == 2


def test_outcomes_join_by_request_id_and_bad_batches_are_refused_by_name(served: Registry, tmp_path: Path) -> None:
    config = CaptureConfig(enabled=True, destination=str(tmp_path / "captures"), flush_interval_s=600)
    classes = served.manifest(MODEL, 1).classes

    async def calls(client: Client) -> list[Any]:
        http, _, recorder = client
        ids = [(await http.post(PREDICT, json={"instances": _rows(served, 1)})).headers[REQUEST_ID_HEADER] for _ in range(3)]
        await asyncio.to_thread(recorder.flush)  # captured before the outcomes arrive
        answers = [
            await http.post(OUTCOMES, json={"outcomes": [{"request_id": ids[0], "label": classes[0]}, {"request_id": "later", "label": classes[1]}]}),
            await http.post(OUTCOMES, json={"outcomes": [{"request_id": ids[1], "label": str(classes[1])}]}),  # a CSV's text
            await http.post(OUTCOMES, json={"outcomes": [{"request_id": ids[0], "label": classes[1]}]}),  # corrected: last wins
            await http.post(OUTCOMES, json={"outcomes": [{"request_id": ids[2], "label": 1}, {"request_id": ids[2], "label": 0}]}),
            await http.post(OUTCOMES, json={"outcomes": [{"request_id": ids[2], "label": "cat"}]}),
            await http.post(OUTCOMES, json={"outcomes": [{"request_id": ids[2], "label": 1, "extra": 1}]}),
            await http.post("/v1/models/other/outcomes", json={"outcomes": [{"request_id": ids[2], "label": 1}]}),
        ]
        return [ids, answers]

    (ids, answers), _ = _serve(served, config, calls)
    first, text, corrected, repeated, wrong, extra, other = answers
    assert first.status_code == 200 and first.json() == {"stored": 2, "unknown": 1, "unknown_ids": ["later"]}
    assert text.status_code == corrected.status_code == 200 and text.json()["unknown"] == 0
    assert repeated.status_code == 422 and ids[2] in repeated.json()["error"] and "more than once" in repeated.json()["error"]
    assert wrong.status_code == 422 and "'cat' is not a class" in wrong.json()["error"]
    assert extra.status_code == 422 and "extra" in extra.json()["error"]
    assert other.status_code == 404
    labels = joined(*filesystem(config.destination or ""), MODEL).set_index("request_id")["label"]
    assert labels[ids[0]] == classes[1] and labels[ids[1]] == classes[1] and labels.isna()[ids[2]]


@pytest.mark.usefixtures("trained")
def test_a_rollout_captures_who_answered_and_the_off_path_comparison(registry: Registry, demo_data: Path, tmp_path: Path) -> None:
    candidate = train_into(registry, demo_data, promote=False).manifest.version
    frame = demo.day_frame(5)
    recorder = Recorder(registry.uri)
    recorder.configure(CaptureConfig(enabled=True, destination=str(tmp_path / "captures"), flush_interval_s=600))

    async def scenario() -> dict[str, int]:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(ModelTarget(model=MODEL, alias="production", poll_interval_s=3600))
        canary = Canary(registry, holder.hold_candidate, lambda m, a, t: None)
        plane = DataPlane(holder, canary=canary, capture=recorder)
        Rollouts(registry, MODEL, "production").start(candidate, Policy(steps=(0.5, 1.0)), actor="test")
        await canary.sync(holder.state)
        answered = {}
        for index in range(40):
            binding = plane.bind(MODEL, key=f"k{index}")
            result = await plane.infer(binding, frame_to_matrix(frame.iloc[[index]], binding.features), request_id=f"r{index}")
            answered[f"r{index}"] = result.version
            await asyncio.sleep(0)  # the off-path comparison gets its turn
        await holder.close()
        return answered

    answered = asyncio.run(scenario())
    recorder.close()
    stored = read(*filesystem(str(tmp_path / "captures")), RECORDS, MODEL).to_pandas()
    served = stored[stored["role"] != "shadow"].set_index("request_id")
    assert sorted(served.index) == sorted(answered)  # once each
    assert {rid: int(served.loc[rid, "version"]) for rid in answered} == answered
    assert {rid: served.loc[rid, "role"] for rid in answered} == {
        rid: "candidate" if version == candidate else "primary" for rid, version in answered.items()
    }
    shadows = stored[stored["role"] == "shadow"]
    by_candidate = {rid for rid, version in answered.items() if version == candidate}
    assert by_candidate and set(shadows["request_id"]) == by_candidate  # the primary scored what the candidate answered
    assert set(shadows["version"]) == {1}


class _Gauges:
    """What the replica's metrics are handed (serve_app/replica/serving_metrics.py `live_quality`)."""

    def __init__(self) -> None:
        self.set: dict[tuple[int, str, str], float] = {}

    def live_quality(self, model: str, lines: list[VersionQuality]) -> None:
        self.set |= {(line.version, line.role, name): value for line in lines for name, value in line.metrics.items()}


@pytest.mark.usefixtures("trained")
def test_outcomes_posted_for_a_days_requests_give_each_version_its_live_quality_by_hand(
    registry: Registry, demo_data: Path, tmp_path: Path
) -> None:
    """A rollout answers a day's requests with two versions over HTTP; labels for most of
    them are posted to the outcomes route; the replica's measure (the figure exported to
    Prometheus and shown by `nonstop status`) equals sklearn's on the captured rows,
    joined to the posted labels by hand."""
    candidate = train_into(registry, demo_data, promote=False).manifest.version
    frame = demo.day_frame(6).head(120)
    config = CaptureConfig(enabled=True, destination=str(tmp_path / "captures"), flush_interval_s=600)
    recorder = Recorder(registry.uri)
    recorder.configure(config)
    manifest = registry.manifest(MODEL, 1)
    labels = {f"day-{i}": int(frame["target"].iloc[i]) for i in range(len(frame)) if i % 5}  # four in five labelled

    async def scenario() -> None:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(ModelTarget(model=MODEL, alias="production", poll_interval_s=3600))
        canary = Canary(registry, holder.hold_candidate, lambda m, a, t: None)
        plane = DataPlane(holder, canary=canary, capture=recorder)
        Rollouts(registry, MODEL, "production").start(candidate, Policy(steps=(0.5, 1.0)), actor="test")
        await canary.sync(holder.state)
        rows = frame[manifest.feature_names].to_numpy().tolist()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(plane, Limits(), OutcomeSink(recorder))), base_url="http://t") as http:
            for index, row in enumerate(rows):
                path = PREDICT + ("?probabilities=true" if index % 3 else "")  # two in three ask for probabilities
                answer = await http.post(path, json={"instances": [row]}, headers={REQUEST_ID_HEADER: f"day-{index}", KEY_HEADER: f"k{index}"})
                assert answer.status_code == 200
                await asyncio.sleep(0)
            await asyncio.to_thread(recorder.flush)
            posted = await http.post(OUTCOMES, json={"outcomes": [{"request_id": r, "label": v} for r, v in labels.items()]})
            assert posted.status_code == 200 and posted.json()["unknown"] == 0
        await holder.close()

    asyncio.run(scenario())
    recorder.close()
    gauges = _Gauges()
    measured = LiveQuality(gauges).measure(recorder.root, manifest, config, manifest_of=partial(registry.manifest, MODEL))
    lines = {(q.version, q.role): q for q in measured}
    stored = pd.read_parquet(tmp_path / "captures" / "records")  # by hand: the files as anyone reads them
    stored["label"] = stored["request_id"].map(labels)
    for (version, role), rows in stored.groupby([stored["version"].astype(int), stored["role"].astype(str)]):
        labelled = rows[rows["label"].notna()]
        truth, predicted = labelled["label"].astype(int), labelled["prediction"].astype(int)
        expected = {"accuracy": accuracy_score(truth, predicted), "f1_macro": f1_score(truth, predicted, average="macro")}
        scored = labelled[labelled["probabilities"].notna()]  # ROC AUC and log loss: the rows that asked for probabilities
        if len(scored):
            classes = registry.manifest(MODEL, version).classes
            scores = np.vstack(scored["probabilities"].tolist())
            expected["roc_auc"] = roc_auc_score(scored["label"].astype(int), scores[:, 1])
            expected["log_loss"] = log_loss(scored["label"].astype(int), scores, labels=classes)
        assert (lines[version, role].captured, lines[version, role].labelled) == (len(rows), len(labelled))
        assert lines[version, role].with_probabilities == len(scored)
        assert lines[version, role].metrics == pytest.approx(expected)
        assert {name: gauges.set[version, role, name] for name in expected} == pytest.approx(expected)
    assert {(1, "primary"), (candidate, "candidate")} <= set(lines)  # both versions answered the day
    status = ReplicaStatus(
        replica_id="r", pid=1, model=MODEL, target=None, versions=[], last_error=None, reported_at=datetime.now(UTC),
        capture=recorder.status().model_copy(update={"quality": list(lines.values())}),
    )  # fmt: skip
    shown, printed = lines[1, "primary"], [line.strip() for line in _describe(status).splitlines()[1:]]  # as `nonstop status` prints
    assert (
        f"live quality v1 primary: accuracy {shown.metrics['accuracy']:.4g}, f1_macro {shown.metrics['f1_macro']:.4g}, "
        f"roc_auc {shown.metrics['roc_auc']:.4g}, log_loss {shown.metrics['log_loss']:.4g} "
        f"({shown.labelled}/{shown.captured} rows labelled, {shown.with_probabilities} with probabilities)"
    ) in printed
    assert lines[1, "shadow"].omitted == {"roc_auc": NO_PROBABILITIES, "log_loss": NO_PROBABILITIES}  # the off-path comparison keeps none
    assert f"no roc_auc, log_loss: {NO_PROBABILITIES}" in printed


def test_behind_serve_the_request_id_header_is_left_to_serve(served: Registry, tmp_path: Path) -> None:
    """Serve's HTTP servers answer x-request-id on every response, with the id they put in
    the request: the routes built for Serve add none of their own (two headers reach a
    client as 'id, id'), and capture under the id Serve gave them."""
    config = CaptureConfig(enabled=True, destination=str(tmp_path / "captures"), flush_interval_s=600)
    recorder = Recorder(served.uri)

    async def go() -> list[httpx.Response]:
        holder = ModelHolder(served, TrustPolicy())
        await holder.configure(ModelTarget(model=MODEL, poll_interval_s=3600))
        recorder.configure(config)
        api = create_api(DataPlane(holder, capture=recorder), Limits(), OutcomeSink(recorder), answers_request_id=False)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as http:
            rows = _rows(served, 1)
            answers = [
                await http.post(PREDICT, json={"instances": rows}, headers={REQUEST_ID_HEADER: "from-serve-1"}),
                await http.post(V2_INFER, json={"inputs": [{"name": "x", "shape": [1, len(rows[0])], "datatype": "FP64", "data": rows[0]}]},
                                headers={REQUEST_ID_HEADER: "from-serve-2"}),
            ]  # fmt: skip
        await holder.close()
        return answers

    answers = asyncio.run(go())
    recorder.close()
    assert [a.status_code for a in answers] == [200, 200]
    assert all(REQUEST_ID_HEADER not in a.headers and "x-model-version" in a.headers for a in answers)
    stored = read(*filesystem(config.destination or ""), RECORDS, MODEL)
    assert stored is not None and sorted(stored.column("request_id").to_pylist()) == ["from-serve-1", "from-serve-2"]
