"""Many models per replica, in process: real registry, holders, canaries, loads and HTTP routes.

A `ModelSet` (serve_app/replica/models.py) behind the real data plane and ASGI app, over a
registry of small published models. Loads are real (`load_version`); where a test needs
a load to last, a gate holds it before it starts (`GatedLoader`), never a fake model.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pandas as pd
import pytest

from nonstop.loading import LoadedModel, TrustPolicy, load_version
from nonstop.registry import Registry
from serve_app.config import ManyModels, parse_user_config
from serve_app.grpc_v2 import oip_v2_pb2 as pb, oip_v2_pb2_grpc as pb_grpc
from serve_app.grpc_v2.servicer import GrpcV2
from serve_app.replica.dataplane import DataPlane
from serve_app.replica.holder import ModelHolder
from serve_app.replica.models import Canaries, ModelSet, estimate_bytes
from serve_app.rest.api import create_api
from serve_app.rollout.canary import Canary
from serve_app.wire.limits import Limits
from nonstop_ops.commands.stack import _describe
from tests.conftest import copy_into
from tests.inprocess.serve_app.test_v2_grpc import _Servicer, _status
from harness.small_models import ROW as INSTANCE, publish_small

MODELS = ("m0", "m1", "m2")
ROW = {"instances": [INSTANCE]}


@pytest.fixture(scope="module")
def small_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("many") / "registry"
    registry = Registry(str(root))
    for index, model in enumerate(MODELS):
        publish_small(registry, model, index)
    return root


@pytest.fixture
def small(small_once: Path, registry: Registry) -> Registry:
    return copy_into(registry, small_once)


class GatedLoader:
    """The holder's `load`, for real (`load_version` in a thread), each load waiting for
    `gate` first; records every load and the most that were in flight at once."""

    def __init__(self, registry: Registry, open_gate: bool = True) -> None:
        self._registry = registry
        self.gate = asyncio.Event()
        if open_gate:
            self.gate.set()
        self.calls: list[str] = []
        self.active = 0
        self.most = 0

    async def __call__(self, model: str, version: int, beside: bool) -> LoadedModel:
        self.calls.append(model)
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            await self.gate.wait()
            return await asyncio.to_thread(load_version, self._registry, model, version, TrustPolicy())
        finally:
            self.active -= 1


def model_set(registry: Registry, load: GatedLoader | None = None, sizer: Callable[[LoadedModel], int] = estimate_bytes) -> ModelSet:
    def make() -> tuple[ModelHolder, Canary]:
        holder = ModelHolder(registry, TrustPolicy(), load=load)
        canary = Canary(registry, holder.hold_candidate, lambda model, alias, tallies: None)
        holder.follow(canary.sync)
        return holder, canary

    return ModelSet(make, registry.models, sizer=sizer)


@asynccontextmanager
async def serving(models: ModelSet, config: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    await models.configure(parse_user_config(config))
    api = create_api(DataPlane(models, canary=Canaries(models)), Limits())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://test") as client:
            yield client
    finally:
        await models.close()


def many(*names: str, **budget: Any) -> dict[str, Any]:
    return {"models": [{"model": n, "poll_interval_s": 3600} for n in names], "budget": budget}


async def predict(client: httpx.AsyncClient, model: str) -> httpx.Response:
    return await client.post(f"/v1/models/{model}:predict", json=ROW)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


# --- config ---------------------------------------------------------------------------------


def test_the_single_model_config_is_read_as_before_and_many_models_as_a_list_or_a_selector() -> None:
    single = parse_user_config({"model": "m0", "alias": "production"})
    assert single.model == "m0" and single.followed_alias == "production"
    listed = parse_user_config({"models": [{"model": "m0"}, {"model": "m1", "version": 2}], "select": {"pattern": "store_*"}})
    assert isinstance(listed, ManyModels)
    assert {t.model: t.describe() for t in listed.targets().values()} == {"m0": "m0@production", "m1": "m1 v2"}
    assert listed.select is not None and listed.select.target("store_7").describe() == "store_7@production"


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"model": "m0", "models": [{"model": "m1"}]}, "not both"),
        ({"models": []}, "name the models served"),
        ({"models": [{"model": "m0"}, {"model": "m0"}]}, "m0 listed more than once"),
        ({"models": [{"model": "m0", "version": 1, "alias": "x"}]}, "not both"),
        ({"models": [{"model": "m0"}], "budget": {"max_modles": 3}}, "max_modles"),
        ({"models": [{"model": "m0"}], "budget": {"max_models": 0}}, "max_models"),
        ({"models": [{"model": "../etc"}]}, "invalid model name"),
        ({"select": {"pattern": "*", "alias": "bad alias"}}, "invalid alias name"),
    ],
)
def test_a_bad_many_models_config_is_refused_naming_the_problem(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(Exception, match=problem.replace(".", r"\.")):
        parse_user_config(config)


# --- serving many, held within a budget -------------------------------------------------------


def test_requests_load_their_model_and_the_least_recently_used_is_evicted_past_the_count(small: Registry) -> None:
    async def scenario() -> None:
        models = model_set(small)
        async with serving(models, many(*MODELS, max_models=2)) as client:
            for model in ("m0", "m1", "m0", "m2"):  # m1 is the least recently used when m2 loads
                response = await predict(client, model)
                assert response.status_code == 200, response.text
                assert (response.headers["x-model-name"], response.headers["x-model-version"]) == (model, "1")
            lines = {m.model: m for m in models.status("r", 1, pd.Timestamp.now(tz="UTC").to_pydatetime()).models}
            assert {m for m, line in lines.items() if line.held} == {"m0", "m2"}
            assert (lines["m1"].evictions, lines["m0"].hits, lines["m0"].loads) == (1, 1, 1)
            summary = _describe(models.status("r", 1, pd.Timestamp.now(tz="UTC").to_pydatetime()))  # `nonstop status`
            assert "models: 2 held" in summary and "of 3 loaded here" in summary and "1 evictions" in summary
            again = await predict(client, "m1")  # evicted: loads again, and m0 (now least recent) goes
            assert again.status_code == 200 and again.headers["x-model-name"] == "m1"
            assert models._held.keys() == {"m2", "m1"}

    run(scenario)


def test_models_are_held_within_the_byte_budget(small: Registry) -> None:
    async def scenario() -> None:
        one = estimate_bytes(load_version(small, "m0", 1, TrustPolicy()))
        models = model_set(small)
        async with serving(models, many(*MODELS, max_bytes=int(one * 2.5))) as client:
            for model in MODELS:
                assert (await predict(client, model)).status_code == 200
                assert models.held_bytes() <= one * 2.5
            assert len(models._held) == 2 and "m0" not in models._held

    run(scenario)


def test_one_load_per_model_however_many_ask_and_different_models_load_at_once(small: Registry) -> None:
    async def scenario() -> None:
        loader = GatedLoader(small, open_gate=False)
        models = model_set(small, loader)
        async with serving(models, many(*MODELS, load_wait_s=30, max_concurrent_loads=2)) as client:
            asked = [asyncio.create_task(predict(client, model)) for model in ("m0", "m1") for _ in range(10)]
            while loader.active < 2:  # both loads started while neither could finish
                await asyncio.sleep(0.01)
            loader.gate.set()
            answers = await asyncio.gather(*asked)
            assert [a.status_code for a in answers] == [200] * 20
            assert [a.headers["x-model-name"] for a in answers] == ["m0"] * 10 + ["m1"] * 10
            assert sorted(loader.calls) == ["m0", "m1"] and loader.most == 2

    run(scenario)


def test_a_load_past_the_bounded_wait_is_a_503_with_retry_after_and_the_load_goes_on(small: Registry) -> None:
    async def scenario() -> None:
        loader = GatedLoader(small, open_gate=False)
        models = model_set(small, loader)
        async with serving(models, many(*MODELS, load_wait_s=0.2)) as client:
            waiting = await predict(client, "m0")
            assert waiting.status_code == 503, waiting.text
            assert int(waiting.headers["retry-after"]) >= 1 and "'m0' is loading" in waiting.json()["error"]
            loader.gate.set()
            while "m0" not in models._held:
                await asyncio.sleep(0.01)
            served = await predict(client, "m0")
            assert served.status_code == 200 and loader.calls == ["m0"]  # the first request's load, not a second

    run(scenario)


def test_an_unknown_model_is_a_404_naming_it_and_never_a_load(small: Registry) -> None:
    async def scenario() -> None:
        loader = GatedLoader(small)
        models = model_set(small, loader)
        async with serving(models, many("m0", "m1")) as client:
            missing = await predict(client, "m2")  # in the registry, not served by this config
            assert missing.status_code == 404 and "'m2'" in missing.json()["error"]
            made_up = await predict(client, "nope")
            assert made_up.status_code == 404 and "'nope'" in made_up.json()["error"]
            assert loader.calls == []

    run(scenario)


def test_one_models_failure_does_not_affect_another(small: Registry) -> None:
    async def scenario() -> None:
        publish_small(small, "broken", 5)
        artifact = Path(small.uri) / "broken" / "versions" / "1" / small.manifest("broken", 1).artifact
        artifact.write_bytes(b"not a model")  # its digest no longer matches: refused at load
        models = model_set(small)
        async with serving(models, many("m0", "broken")) as client:
            refused = await predict(client, "broken")
            assert refused.status_code == 503 and "integrity" in refused.json()["error"]
            for _ in range(3):
                response = await predict(client, "m0")
                assert response.status_code == 200 and response.headers["x-model-name"] == "m0"
            assert models.state_of("m0").last_error is None

    run(scenario)


def test_adding_and_removing_a_model_is_a_reconfigure_that_leaves_the_others_alone(small: Registry) -> None:
    async def scenario() -> None:
        models = model_set(small)
        async with serving(models, many("m0")) as client:
            assert (await predict(client, "m0")).status_code == 200
            before = models._held["m0"].holder
            await models.configure(parse_user_config(many("m0", "m1")))
            assert (await predict(client, "m1")).status_code == 200
            await models.configure(parse_user_config(many("m1")))
            assert (await predict(client, "m0")).status_code == 404
            await models.configure(parse_user_config(many("m0", "m1")))
            assert (await predict(client, "m0")).status_code == 200 and models._held["m0"].holder is not before
            held_m1 = models._held["m1"].holder
            await models.configure(parse_user_config(many("m0", "m1", "m2")))
            assert models._held["m1"].holder is held_m1 and held_m1.polling  # untouched by the deploy

    run(scenario)


def test_a_selector_serves_the_registry_models_matching_its_pattern_and_later_ones(small: Registry) -> None:
    async def scenario() -> None:
        models = model_set(small)
        config = {"select": {"pattern": "m*", "refresh_s": 1.0, "poll_interval_s": 3600}}
        async with serving(models, config) as client:
            assert models.served_models() == list(MODELS)
            publish_small(small, "other", 1)
            publish_small(small, "m9", 2)
            assert (await predict(client, "m9")).status_code == 404  # not listed yet
            await models._refresh()  # what the refresher does every refresh_s
            assert (await predict(client, "m9")).status_code == 200
            assert (await predict(client, "other")).status_code == 404

    run(scenario)


def test_promoting_one_model_swaps_it_alone(small: Registry) -> None:
    async def scenario() -> None:
        models = model_set(small)
        async with serving(models, many("m0", "m1")) as client:
            for model in ("m0", "m1"):
                assert (await predict(client, model)).status_code == 200
            publish_small(small, "m1", 7)  # v2, promoted
            await models._held["m1"].holder.sync()  # what its poller does at its next tick
            await models._held["m0"].holder.sync()
            answers = {m: (await predict(client, m)).headers["x-model-version"] for m in ("m0", "m1")}
            assert answers == {"m0": "1", "m1": "2"}

    run(scenario)


def test_over_grpc_a_load_past_the_wait_is_unavailable_an_unknown_model_not_found_and_the_server_ready(small: Registry) -> None:
    async def scenario() -> None:
        loader = GatedLoader(small, open_gate=False)
        models = model_set(small, loader)
        await models.configure(parse_user_config(many(*MODELS, load_wait_s=0.2)))
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(GrpcV2(DataPlane(models, canary=Canaries(models)), Limits())), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)

                def infer(model: str) -> Any:
                    request = pb.ModelInferRequest(model_name=model)
                    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 3])
                    tensor.contents.fp64_contents.extend(INSTANCE)
                    return stub.ModelInfer(request)

                assert (await stub.ServerReady(pb.ServerReadyRequest())).ready  # models load on demand
                code, details = await _status(infer("m0"))
                assert code == grpc.StatusCode.UNAVAILABLE and "'m0' is loading" in details
                code, details = await _status(infer("nope"))
                assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in details
                loader.gate.set()
                while "m0" not in models._held:
                    await asyncio.sleep(0.01)
                answer = await infer("m0")
                assert (answer.model_name, answer.model_version) == ("m0", "1") and loader.calls == ["m0"]
        finally:
            await server.stop(None)
            await models.close()

    run(scenario)
