"""The sidecar's Triton knobs: pure config override, validation (bounds, served models only, no URLs in the
body), and the admin endpoint over a mock Triton."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from paretoserve.workers.router import worker_knobs
from paretoserve.workers.router.app import build_router
from paretoserve.workers.router.config import local_models, parse_config
from paretoserve.workers.router.errors import ConfigError, UpstreamUnavailable
from paretoserve.workers.router.worker_knobs import (
    PARAM_ADOPTED,
    Knobs,
    TritonTarget,
    override_config,
    parse_knobs,
    watch_knobs_file,
)

CONFIG = {"instance_group": [{"count": 1, "kind": "KIND_CPU"}], "max_batch_size": 32,
          "dynamic_batching": {"max_queue_delay_microseconds": 100}}


def test_override_sets_instances_and_batching_and_leaves_the_rest() -> None:
    out = override_config(CONFIG, Knobs(instance_count=3, preferred_batch_size=8, max_queue_delay_us=500))
    assert out["instance_group"] == [{"count": 3, "kind": "KIND_CPU"}]
    assert out["dynamic_batching"] == {"preferred_batch_size": [8], "max_queue_delay_microseconds": 500}
    assert out["max_batch_size"] == 32 and CONFIG["instance_group"][0]["count"] == 1  # input untouched
    assert "preferred_batch_size" not in override_config(out, Knobs(3, 1, None))["dynamic_batching"]


def test_a_queue_timeout_becomes_the_default_queue_policy_and_keeps_its_other_fields() -> None:
    served = {**CONFIG, "dynamic_batching": {**CONFIG["dynamic_batching"], "default_queue_policy": {
        "timeout_action": "DELAY", "default_timeout_microseconds": 0, "allow_timeout_override": False,
        "max_queue_size": 7}}}
    out = override_config(served, Knobs(1, queue_timeout_us=43_750))
    assert out["dynamic_batching"] == {"max_queue_delay_microseconds": 100, "default_queue_policy": {
        "timeout_action": "REJECT", "default_timeout_microseconds": 43_750, "allow_timeout_override": False,
        "max_queue_size": 7}}
    assert override_config(out, Knobs(1, queue_timeout_us=43_750)) == out  # unchanged: no reload
    assert override_config(out, Knobs(2, queue_timeout_us=40_000)) == {**out, "instance_group": [
        {"count": 2, "kind": "KIND_CPU"}]}  # within 10 %: kept, so an instance change stays in place
    assert override_config(out, Knobs(1, queue_timeout_us=30_000))["dynamic_batching"]["default_queue_policy"][
        "default_timeout_microseconds"] == 30_000  # further: loaded (a reload)
    batch = override_config(out, Knobs(1, preferred_batch_size=4, queue_timeout_us=40_000))["dynamic_batching"]
    assert batch["default_queue_policy"]["default_timeout_microseconds"] == 40_000  # it reloads anyway: exact
    assert override_config(out, Knobs(1))["dynamic_batching"] == out["dynamic_batching"]  # not sent: kept
    with pytest.raises(ConfigError) as info:  # Triton's default scheduler has no queue policy
        override_config({"name": "plain", "instance_group": [{"count": 1}]}, Knobs(1, queue_timeout_us=1))
    assert info.value.field == "models.plain.queueTimeoutMicroseconds"
    generation = {"name": "g", "instance_group": [{"count": 1}], "model_transaction_policy": {"decoupled": True},
                  "parameters": {"max_sequences": {"string_value": "4"}}}
    with pytest.raises(ConfigError) as info:
        override_config(generation, Knobs(1, queue_timeout_us=1))
    assert info.value.field == "models.g.queueTimeoutMicroseconds"


@pytest.mark.parametrize(("raw", "field"), [
    ({}, "models"),
    ([], "models"),
    ({"models": {"m": {"instanceCount": 0}}}, "models.m.instanceCount"),
    ({"models": {"m": {"instanceCount": 65}}}, "models.m.instanceCount"),
    ({"models": {"m": {"instanceCount": 1_000_000}}}, "models.m.instanceCount"),
    ({"models": {"m": {"instanceCount": "2"}}}, "models.m.instanceCount"),
    ({"models": {"m": {"instanceCount": True}}}, "models.m.instanceCount"),
    ({"models": {"m": {}}}, "models.m.instanceCount"),
    ({"models": {"m": {"instanceCount": 1, "threads": 2}}}, "models.m.threads"),
    ({"models": {"m": {"instanceCount": 1, "preferredBatchSize": 0}}}, "models.m.preferredBatchSize"),
    ({"models": {"m": {"instanceCount": 1, "preferredBatchSize": 4097}}}, "models.m.preferredBatchSize"),
    ({"models": {"m": {"instanceCount": 1, "maxQueueDelayMicroseconds": -1}}}, "models.m.maxQueueDelayMicroseconds"),
    ({"models": {"m": {"instanceCount": 1, "maxQueueDelayMicroseconds": 60_000_001}}},
     "models.m.maxQueueDelayMicroseconds"),
    ({"models": {"m": {"instanceCount": 1, "queueTimeoutMicroseconds": -1}}}, "models.m.queueTimeoutMicroseconds"),
    ({"models": {"m": {"instanceCount": 1, "queueTimeoutMicroseconds": 3_600_000_001}}},
     "models.m.queueTimeoutMicroseconds"),
    ({"models": {"m": {"instanceCount": 1, "queueTimeoutMicroseconds": 1.5}}}, "models.m.queueTimeoutMicroseconds"),
    ({"models": {"m": {"instanceCount": 1, "maxSequences": 4, "queueTimeoutMicroseconds": 10}}},
     "models.m.maxSequences"),
    ({"models": {}, "tritonUrl": "http://127.0.0.1:18011"}, "tritonUrl"),
    ({"models": {}, "tritonGrpcUrl": "127.0.0.1:1"}, "tritonGrpcUrl"),
    ({"models": {}, "loadProtocol": "http"}, "loadProtocol"),
    ({"models": {"../../repository/index?x=": {"instanceCount": 1}}}, "models"),
    ({"models": {"a/b": {"instanceCount": 1}}}, "models"),
    ({"models": {"x" * 65: {"instanceCount": 1}}}, "models"),
    ({"models": {"other": {"instanceCount": 1}}}, "models.other"),
])
def test_bad_knobs_name_the_field(raw: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_knobs(raw, served={"m"})
    assert info.value.field == field


def test_knobs_at_their_bounds_are_accepted() -> None:
    knobs = parse_knobs({"models": {"m": {"instanceCount": 64, "preferredBatchSize": 4096,
                                          "maxQueueDelayMicroseconds": 60_000_000}}}, served={"m"})
    assert knobs == {"m": Knobs(64, 4096, 60_000_000)}
    assert parse_knobs({"models": {"m": {"instanceCount": 1, "queueTimeoutMicroseconds": 3_600_000_000}}})["m"] == \
        Knobs(1, queue_timeout_us=3_600_000_000)
    assert parse_knobs({"models": {"m": {"instanceCount": 1, "maxQueueDelayMicroseconds": 0}}})["m"].instance_count == 1


def test_local_models_are_those_served_from_the_pods_own_triton() -> None:
    config = parse_config({"pipeline": "p", "stages": [{"name": "s", "variants": {"a": 1, "b": 1, "c": 1}}],
                           "upstreams": {"a": ["http://127.0.0.1:8000"], "b": ["http://127.0.0.1:8000/"],
                                         "c": ["http://p-s-c.ns.svc:8000"]}})
    assert local_models(config, "http://127.0.0.1:8000") == {"a", "b"}
    assert local_models(config, "http://127.0.0.1:9000") == set()


async def test_endpoint_loads_a_config_override_only_when_something_changes() -> None:
    loads: list[dict[str, object]] = []
    state = {"config": json.loads(json.dumps(CONFIG))}

    def triton(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/v2/models/m/config":
            return httpx.Response(200, json=state["config"])
        if request.method == "POST" and request.url.path == "/v2/repository/models/m/load":
            body = json.loads(request.content)
            state["config"] = json.loads(body["parameters"]["config"])
            loads.append(state["config"])
            return httpx.Response(200, json={})
        return httpx.Response(404)

    config = parse_config({"pipeline": "p", "stages": [{"name": "s", "variants": {"m": 1, "far": 1}}],
                           "upstreams": {"m": ["http://127.0.0.1:8000"], "far": ["http://10.0.0.9:8000"]}})
    apps = build_router(config, transport=httpx.MockTransport(triton), admin_token="t",
                        triton=TritonTarget("http://127.0.0.1:8000", load_protocol="http"))
    async with (apps.running(),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.admin), base_url="http://router",
                                  headers={"authorization": "Bearer t"}) as client):
        knobs = {"models": {"m": {"instanceCount": 2, "maxQueueDelayMicroseconds": 200}}}
        first = await client.post("/admin/worker", json=knobs)
        second = await client.post("/admin/worker", json=knobs)
        bad = await client.post("/admin/worker", json={"models": {"m": {"instanceCount": -1}}})
        with_url = await client.post("/admin/worker", json={"tritonUrl": "http://10.0.0.9:8000", "models": {}})
        remote = await client.post("/admin/worker", json={"models": {"far": {"instanceCount": 1}}})
        anonymous = await client.post("/admin/worker", json=knobs, headers={"authorization": "Bearer wrong"})
    assert first.json() == {"applied": ["m"], "unchanged": []}
    assert second.json() == {"applied": [], "unchanged": ["m"]}
    assert len(loads) == 1 and loads[0]["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert bad.status_code == 400 and "models.m.instanceCount" in bad.text
    assert with_url.status_code == 400 and with_url.json()["field"] == "tritonUrl"
    assert remote.status_code == 400 and remote.json()["field"] == "models.far"
    assert anonymous.status_code == 401 and len(loads) == 1


async def test_the_clients_to_triton_are_made_once_at_start_not_on_the_event_loop_of_each_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Building an httpx client (an SSL context) takes 20-35 ms of CPU and importing the gRPC client 0.1 s; made per
    change, on the loop that serves requests, every knob change stalled the data plane that long."""
    made: list[str] = []  # every client the router makes (the upstream pool's too)
    closed: list[str] = []

    class Counted(httpx.AsyncClient):
        def __init__(self, **kwargs: Any) -> None:
            made.append("http")
            super().__init__(**kwargs)

        async def aclose(self) -> None:
            closed.append("http")
            await super().aclose()

    class Loader:
        def __init__(self, url: str, timeout_s: float) -> None:
            made.append(f"grpc {url}")

        async def __call__(self, model: str, config_json: str) -> None:
            state["config"] = json.loads(config_json)

        async def aclose(self) -> None:
            closed.append("grpc")

    state = {"config": json.loads(json.dumps(CONFIG))}
    monkeypatch.setattr(worker_knobs.httpx, "AsyncClient", Counted)
    monkeypatch.setattr(worker_knobs, "GrpcLoader", Loader)

    def triton(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=state["config"]) if request.url.path == "/v2/models/m/config" \
            else httpx.Response(404)

    config = parse_config({"pipeline": "p", "stages": [{"name": "s", "variants": {"m": 1}}],
                           "upstreams": {"m": ["http://127.0.0.1:8000"]}})
    apps = build_router(config, transport=httpx.MockTransport(triton), admin_token="t",
                        triton=TritonTarget("http://127.0.0.1:8000", "127.0.0.1:8001"))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.admin), base_url="http://r",
                               headers={"authorization": "Bearer t"})
    async with client, apps.running():
        assert "grpc 127.0.0.1:8001" in made  # at start, before any change
        at_start = list(made)
        answers = [await client.post("/admin/worker", json={"models": {"m": {"instanceCount": n}}}) for n in (2, 1, 3)]
        assert [a.json()["applied"] for a in answers] == [["m"], ["m"], ["m"]]
        assert state["config"]["instance_group"][0]["count"] == 3
        assert made == at_start  # three changes later: no client made
    assert "grpc" in closed


async def test_knobs_file_is_applied_at_start_retried_until_triton_answers_and_reapplied_on_change(
    tmp_path: Path,
) -> None:
    """The pod's ConfigMap `worker.json`: a pod that starts after the operator's push still gets its knobs."""
    path = tmp_path / "worker.json"
    path.write_text(json.dumps({"models": {"m": {"instanceCount": 2}}}))
    calls: list[dict[str, Any]] = []
    changes = asyncio.Queue[int]()

    async def apply(raw: Mapping[str, Any]) -> Mapping[str, Any]:
        calls.append(dict(raw))
        if len(calls) == 1:
            raise UpstreamUnavailable("Triton is still loading", model="m", url="http://127.0.0.1:8000")
        changes.put_nowait(raw["models"]["m"]["instanceCount"])
        return {"applied": ["m"], "unchanged": []}

    settled: list[int] = []
    watch = asyncio.create_task(watch_knobs_file(path, apply, poll_s=0.01,
                                                 on_settled=lambda: settled.append(len(calls))))
    try:
        assert await asyncio.wait_for(changes.get(), 5) == 2  # second try: the first found Triton loading
        await asyncio.sleep(0.05)
        assert len(calls) == 2  # unchanged file: not applied again
        assert settled == [2]  # readiness was held through the first try, released once by the second
        path.write_text("{not json")
        await asyncio.sleep(0.05)
        assert len(calls) == 2  # invalid content is skipped (and logged) until the file changes
        path.write_text(json.dumps({"models": {"m": {"instanceCount": 3}}}))
        assert await asyncio.wait_for(changes.get(), 5) == 3
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


def test_the_first_override_adopts_a_model_loaded_from_its_config_file() -> None:
    """Triton reloads a model loaded from its config.pbtxt on the first override, whatever it changes, and only then
    updates instances in place: so the first application loads a marked config even with unchanged knobs (the
    pod's start, not the plan's first change under load), and later unchanged knobs load nothing."""
    from_file = {"name": "m", "max_batch_size": 32, "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
                 "dynamic_batching": {}}
    adopted = override_config(from_file, Knobs(1))
    assert adopted != from_file and adopted["parameters"] == {PARAM_ADOPTED: {"string_value": "1"}}
    assert override_config(adopted, Knobs(1)) == adopted  # adopted: unchanged knobs, no load
    assert override_config(adopted, Knobs(2))["parameters"] == adopted["parameters"]  # an instance change only
    generation = {"name": "g", "model_transaction_policy": {"decoupled": True},
                  "instance_group": [{"count": 1}], "parameters": {"max_sequences": {"string_value": "4"}}}
    assert PARAM_ADOPTED not in override_config(generation, Knobs(1))["parameters"]  # reloads on every change anyway


async def test_readiness_waits_for_the_knobs_files_first_application(tmp_path: Path) -> None:
    """A pod with a knobs file is not ready until the sidecar applied it once, so the model's adoption reload
    happens before the pod takes traffic: while Triton does not answer the config read the pod stays unready
    (its model is ready, as during a reload), and once the file is applied it is ready."""
    path = tmp_path / "worker.json"
    path.write_text(json.dumps({"models": {"m": {"instanceCount": 1}}}))
    state: dict[str, Any] = {"config": json.loads(json.dumps(CONFIG)), "answer": False, "loads": 0}

    def triton(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/models/m/ready":
            return httpx.Response(200)
        if request.url.path == "/v2/models/m/config":
            return httpx.Response(200, json=state["config"]) if state["answer"] else httpx.Response(503)
        if request.url.path == "/v2/repository/models/m/load":
            state["config"] = json.loads(json.loads(request.content)["parameters"]["config"])
            state["loads"] += 1
            return httpx.Response(200, json={})
        return httpx.Response(404)

    config = parse_config({"pipeline": "p", "stages": [{"name": "s", "variants": {"m": 1}}],
                           "upstreams": {"m": ["http://127.0.0.1:8000"]}})
    apps = build_router(config, transport=httpx.MockTransport(triton), knobs_file=path, knobs_poll_s=0.01,
                        triton=TritonTarget("http://127.0.0.1:8000", load_protocol="http"))
    async with (apps.running(),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.data), base_url="http://router") as client):
        await asyncio.sleep(0.05)
        waiting = await client.get("/v2/health/ready")
        state["answer"] = True
        for _ in range(200):
            if apps.service.knobs_pending is False:
                break
            await asyncio.sleep(0.01)
        ready = await client.get("/v2/health/ready")
    assert waiting.status_code == 503 and waiting.json()["workerKnobs"] == "pending"
    assert ready.status_code == 200 and state["loads"] == 1  # the adoption: unchanged knobs, one marked load
    assert PARAM_ADOPTED in state["config"]["parameters"]
    no_file = build_router(config, transport=httpx.MockTransport(triton))
    assert not no_file.service.knobs_pending
