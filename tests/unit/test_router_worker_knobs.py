"""The sidecar's Triton knobs: pure config override, validation, and the endpoint over a mock Triton."""

from __future__ import annotations

import json

import httpx
import pytest

from paretoserve.workers.router.app import build_router
from paretoserve.workers.router.config import parse_config
from paretoserve.workers.router.errors import ConfigError
from paretoserve.workers.router.worker_knobs import Knobs, override_config, parse_knobs

CONFIG = {"instance_group": [{"count": 1, "kind": "KIND_CPU"}], "max_batch_size": 32,
          "dynamic_batching": {"max_queue_delay_microseconds": 100}}


def test_override_sets_instances_and_batching_and_leaves_the_rest() -> None:
    out = override_config(CONFIG, Knobs(instance_count=3, preferred_batch_size=8, max_queue_delay_us=500))
    assert out["instance_group"] == [{"count": 3, "kind": "KIND_CPU"}]
    assert out["dynamic_batching"] == {"preferred_batch_size": [8], "max_queue_delay_microseconds": 500}
    assert out["max_batch_size"] == 32 and CONFIG["instance_group"][0]["count"] == 1  # input untouched
    assert "preferred_batch_size" not in override_config(out, Knobs(3, 1, None))["dynamic_batching"]


@pytest.mark.parametrize(("raw", "field"), [
    ({}, "models"),
    ({"models": {"m": {"instanceCount": 0}}}, "models.m.instanceCount"),
    ({"models": {"m": {}}}, "models.m.instanceCount"),
    ({"models": {"m": {"instanceCount": 1, "threads": 2}}}, "models.m.threads"),
])
def test_bad_knobs_name_the_field(raw: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_knobs(raw)
    assert str(info.value).startswith(field)


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

    config = parse_config({"pipeline": "p", "stages": [{"name": "s", "variants": {"m": 1}}],
                           "upstreams": {"m": ["http://127.0.0.1:8000"]}})
    app = build_router(config, transport=httpx.MockTransport(triton))
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as client):
        knobs = {"loadProtocol": "http", "models": {"m": {"instanceCount": 2, "maxQueueDelayMicroseconds": 200}}}
        first = await client.post("/admin/worker", json=knobs)
        second = await client.post("/admin/worker", json=knobs)
        bad = await client.post("/admin/worker", json={"models": {"m": {"instanceCount": -1}}})
        bad_protocol = await client.post("/admin/worker", json={"loadProtocol": "ftp", "models": {}})
    assert first.json() == {"applied": ["m"], "unchanged": []}
    assert second.json() == {"applied": [], "unchanged": ["m"]}
    assert len(loads) == 1 and loads[0]["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert bad.status_code == 400 and "models.m.instanceCount" in bad.text
    assert bad_protocol.status_code == 400 and "loadProtocol" in bad_protocol.text
