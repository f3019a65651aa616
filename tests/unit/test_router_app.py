"""The router app in process: ``httpx.ASGITransport`` in front, ``httpx.MockTransport`` upstreams behind.

The fake model servers read their answers from the request itself: pixel 0 of each image is the
light model's confidence, pixels 1 and 2 are the light and heavy models' labels (x10), pixel 3 is
the discriminator's P(light wrong). So every routing decision is known in advance.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from paretoserve.workers.router.app import build_router, router_service
from paretoserve.workers.router.config import parse_config
from paretoserve.workers.router.edf import EdfAdmission

A, B, C = "http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"
DEADLINE = "x-paretoserve-deadline-ms"


class FakeTriton:
    """Mock upstreams; ``modes[host]`` is ok | refuse | timeout | 500 | 404 | 400 | gate."""

    def __init__(self) -> None:
        self.modes: dict[str, str] = {}
        self.calls: list[tuple[str, str, int]] = []
        self.gate = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = f"{request.url.host}:{request.url.port}"
        model = request.url.path.split("/")[3]
        mode = self.modes.get(host, "ok")
        if mode == "gate":
            await self.gate.wait()
        body = json.loads(request.content)
        rows = body["inputs"][0]["shape"][0]
        self.calls.append((host, model, rows))
        if mode == "refuse":
            raise httpx.ConnectError("connection refused", request=request)
        if mode == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if mode in ("500", "404", "400"):
            return httpx.Response(int(mode), json={"error": f"{model} says {mode}"})
        data = body["inputs"][0]["data"]
        images = [data[r * 64 : (r + 1) * 64] for r in range(rows)]
        if model == "judge":
            probs = [v for image in images for v in (1 - image[3], image[3])]
            return self._answer(model, rows, probs, [max(1 - i[3], i[3]) for i in images], [0] * rows, 2)
        heavy = model in ("heavy", "alt")
        labels = [round(image[2 if heavy else 1] * 10) for image in images]
        conf = [0.99 if heavy else image[0] for image in images]
        probs = [(c if k == label else (1 - c) / 9) for c, label in zip(conf, labels, strict=True) for k in range(10)]
        return self._answer(model, rows, probs, conf, labels, 10)

    @staticmethod
    def _answer(model: str, rows: int, probs: list[float], conf: list[float], labels: list[int],
                width: int) -> httpx.Response:
        return httpx.Response(200, json={"model_name": model, "model_version": "1", "outputs": [
            {"name": "PROBS", "datatype": "FP32", "shape": [rows, width], "data": probs},
            {"name": "CONFIDENCE", "datatype": "FP32", "shape": [rows, 1], "data": conf},
            {"name": "LABEL", "datatype": "INT64", "shape": [rows, 1], "data": labels}]})

    def rows_seen(self, model: str) -> int:
        return sum(rows for _, m, rows in self.calls if m == model)


EASY = [1.0 if 1 <= c <= 6 and (r in (1, 6) or c in (1, 6)) else 0.0 for r in range(8) for c in range(8)]
HARD = [0.0] * 64


def image(conf: float, light: int, heavy: int, p_wrong: float = 0.0, base: list[float] = EASY) -> list[float]:
    return [conf, light / 10, heavy / 10, p_wrong, *base[4:]]


def infer_body(*images: list[float], **extra: Any) -> dict[str, Any]:
    data = [v for img in images for v in img]
    return {"inputs": [{"name": "IMAGE", "shape": [len(images), 8, 8], "datatype": "FP32", "data": data}], **extra}


def cascade_config(router: str = "confidence", threshold: float = 0.8, **extra: Any) -> dict[str, Any]:
    cascade: dict[str, Any] = {"light": "light", "heavy": "heavy", "router": router, "threshold": threshold}
    for key in ("discriminator", "preRouteThreshold"):
        if key in extra:
            cascade[key] = extra.pop(key)
    upstreams = {m: [A] for m in ("light", "heavy", "judge", "alt")}
    return {"pipeline": "digits", "stages": [{"name": "classify", "cascade": cascade}], "upstreams": upstreams,
            **extra}


def direct_config(variants: dict[str, float], **extra: Any) -> dict[str, Any]:
    return {"pipeline": "digits", "stages": [{"name": "classify", "variants": variants}],
            "upstreams": {m: [A] for m in ("light", "heavy", "judge", "alt")}, **extra}


@asynccontextmanager
async def serving(raw: dict[str, Any], fake: FakeTriton) -> AsyncIterator[tuple[httpx.AsyncClient, CollectorRegistry]]:
    registry = CollectorRegistry()
    app = build_router(parse_config(raw), transport=httpx.MockTransport(fake), registry=registry)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://router"
    ) as client:
        client.headers["x-test-app"] = str(id(app))
        APPS[id(app)] = app
        try:
            yield client, registry
        finally:
            APPS.pop(id(app), None)


APPS: dict[int, Starlette] = {}


def admission_of(client: httpx.AsyncClient) -> EdfAdmission:
    return router_service(APPS[int(client.headers["x-test-app"])]).admission


def assert_includes(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert {key: actual.get(key) for key in expected} == expected


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"pipeline": "digits", **labels}) or 0.0


def labels_of(answer: httpx.Response) -> list[int]:
    return next(t for t in answer.json()["outputs"] if t["name"] == "LABEL")["data"]


async def test_direct_stage_forwards_and_reports_the_model() -> None:
    fake = FakeTriton()
    async with serving(direct_config({"light": 1}), fake) as (client, registry):
        answer = await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 3, 7), image(0.9, 4, 4)))

    assert answer.status_code == 200
    assert labels_of(answer) == [3, 4]
    assert answer.json()["model_name"] == "digits"
    assert_includes(answer.json()["parameters"], {"models": "light", "routes": "direct,direct", "deferred": 0,
                                                  "fallback": False, "pipeline": "digits", "stage": "classify"})
    assert sample(registry, "paretoserve_pipeline_requests_total") == 1
    assert sample(registry, "paretoserve_router_requests_total", stage="classify", model="light", route="direct") == 2
    assert sample(registry, "paretoserve_router_request_duration_seconds_count", stage="classify", model="light") == 1


async def test_weighted_split_follows_weights_and_request_ids() -> None:
    fake = FakeTriton()
    async with serving(direct_config({"light": 3, "alt": 1}), fake) as (client, _):
        for i in range(400):
            await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 1, 2), id=f"req-{i}"))
        first = await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 1, 2), id="sticky"))
        again = await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 1, 2), id="sticky"))

    share = fake.rows_seen("light") / (fake.rows_seen("light") + fake.rows_seen("alt"))
    assert 0.68 <= share <= 0.82
    assert first.json()["parameters"]["models"] == again.json()["parameters"]["models"]


async def test_confidence_cascade_defers_only_the_unsure_rows() -> None:
    fake = FakeTriton()
    rows = [image(0.95, 1, 1), image(0.5, 2, 7), image(0.85, 3, 3), image(0.2, 4, 9)]
    async with serving(cascade_config("confidence", 0.8), fake) as (client, registry):
        answer = await client.post("/v2/pipelines/digits/infer", json=infer_body(*rows, outputs=[{"name": "LABEL"}]))

    assert answer.status_code == 200
    assert labels_of(answer) == [1, 7, 3, 9]
    assert [t["name"] for t in answer.json()["outputs"]] == ["LABEL"]
    parameters = answer.json()["parameters"]
    assert parameters["routes"] == "light,heavy,light,heavy"
    assert (parameters["deferred"], parameters["models"]) == (2, "light,heavy")
    assert [(m, n) for _, m, n in fake.calls] == [("light", 4), ("heavy", 2)]
    assert sample(registry, "paretoserve_router_deferrals_total", stage="classify") == 2
    assert sample(registry, "paretoserve_router_requests_total", stage="classify", model="light", route="light") == 2
    assert sample(registry, "paretoserve_router_requests_total", stage="classify", model="heavy", route="heavy") == 2


async def test_discriminator_cascade_defers_when_one_minus_p_wrong_is_low() -> None:
    fake = FakeTriton()
    rows = [image(0.99, 1, 5, p_wrong=0.9), image(0.3, 2, 6, p_wrong=0.1), image(0.99, 3, 7, p_wrong=0.3)]
    async with serving(cascade_config("discriminator", 0.75, discriminator="judge"), fake) as (client, _):
        answer = await client.post("/v2/pipelines/digits/infer", json=infer_body(*rows))

    assert labels_of(answer) == [5, 2, 7]
    assert answer.json()["parameters"]["routes"] == "heavy,light,heavy"
    assert sorted((m, n) for _, m, n in fake.calls) == [("heavy", 2), ("judge", 3), ("light", 3)]


@pytest.mark.parametrize("router", ["prompt", "hybrid"])
async def test_hard_requests_are_prerouted_to_the_heavy_model(router: str) -> None:
    fake = FakeTriton()
    extra = {"preRouteThreshold": 0.5} | ({"discriminator": "judge"} if router == "hybrid" else {})
    rows = [image(0.99, 1, 5, base=HARD), image(0.99, 2, 6), image(0.1, 3, 7, p_wrong=0.95)]
    async with serving(cascade_config(router, 0.8, **extra), fake) as (client, registry):
        answer = await client.post("/v2/pipelines/digits/infer", json=infer_body(*rows))

    assert labels_of(answer) == [5, 2, 7]
    assert answer.json()["parameters"]["routes"] == "prerouted,light,heavy"
    assert answer.json()["parameters"]["prerouted"] == 1
    assert fake.rows_seen("light") == 2  # the hard row never went to the light model
    assert fake.rows_seen("heavy") == 2
    assert sample(registry, "paretoserve_router_requests_total", stage="classify", model="heavy",
                  route="prerouted") == 1


async def test_a_failed_replica_is_retried_on_the_next() -> None:
    fake = FakeTriton()
    fake.modes["10.0.0.1:8000"] = "refuse"
    raw = direct_config({"light": 1}) | {"upstreams": {"light": [A, B]}}
    async with serving(raw, fake) as (client, registry):
        answers = [await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 3, 3)))
                   for _ in range(4)]

    assert [a.status_code for a in answers] == [200] * 4
    assert all(a.json()["parameters"]["fallback"] is False for a in answers)
    assert sample(registry, "paretoserve_router_upstream_failures_total", model="light",
                  reason="upstream_unavailable") == 2  # round robin: every other request tried A first


@pytest.mark.parametrize("mode", ["refuse", "500", "404", "timeout"])
async def test_heavy_failure_falls_back_to_light(mode: str) -> None:
    fake = FakeTriton()
    fake.modes["10.0.0.2:8000"] = mode
    raw = cascade_config("confidence", 0.8)
    raw["upstreams"]["heavy"] = [B]
    async with serving(raw, fake) as (client, registry):
        answer = await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.95, 1, 1), image(0.2, 4, 9)))

    assert answer.status_code == 200
    assert labels_of(answer) == [1, 4]  # the light model's answer stands
    parameters = answer.json()["parameters"]
    assert (parameters["routes"], parameters["fallback"], parameters["deferred"]) == ("light,fallback", True, 1)
    assert "heavy model failed" in parameters["notes"]
    assert sample(registry, "paretoserve_router_fallbacks_total", stage="classify") == 1


async def test_light_failure_falls_back_to_heavy() -> None:
    fake = FakeTriton()
    fake.modes["10.0.0.2:8000"] = "500"
    raw = cascade_config("confidence", 0.8)
    raw["upstreams"]["light"] = [B]
    async with serving(raw, fake) as (client, _):
        answer = await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.95, 1, 5), image(0.2, 4, 9)))

    assert labels_of(answer) == [5, 9]
    assert answer.json()["parameters"]["routes"] == "fallback,fallback"
    assert answer.json()["parameters"]["models"] == "heavy"


async def test_other_variant_serves_when_the_chosen_one_fails() -> None:
    fake = FakeTriton()
    fake.modes["10.0.0.2:8000"] = "refuse"
    raw = direct_config({"light": 1, "alt": 0}) | {"upstreams": {"light": [B], "alt": [A]}}
    async with serving(raw, fake) as (client, registry):
        answer = await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 3, 8)))

    assert_includes(answer.json()["parameters"], {"models": "alt", "routes": "fallback", "fallback": True})
    assert sample(registry, "paretoserve_router_requests_total", stage="classify", model="alt", route="fallback") == 1


async def test_without_fallback_a_dead_backend_is_an_explicit_error() -> None:
    fake = FakeTriton()
    fake.modes["10.0.0.2:8000"] = "refuse"
    raw = cascade_config("confidence", 0.8, fallback={"heavyToLight": False})
    raw["upstreams"]["heavy"] = [B, B.replace("8000", "8001")]
    fake.modes["10.0.0.2:8001"] = "500"
    async with serving(raw, fake) as (client, registry):
        answer = await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.2, 4, 9)))

    assert answer.status_code == 503
    body = answer.json()
    assert (body["reason"], body["stage"], body["model"]) == ("upstream_unavailable", "classify", "heavy")
    assert "all 2 replicas of 'heavy' failed" in body["error"]
    assert sample(registry, "paretoserve_router_errors_total", stage="classify", reason="upstream_unavailable") == 1


async def test_timeouts_everywhere_are_a_504() -> None:
    fake = FakeTriton()
    fake.modes["10.0.0.1:8000"] = "timeout"
    async with serving(direct_config({"light": 1}), fake) as (client, _):
        answer = await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 1, 1)))

    assert (answer.status_code, answer.json()["reason"]) == (504, "upstream_timeout")


async def test_an_input_the_model_rejects_is_not_retried_or_fallen_back() -> None:
    fake = FakeTriton()
    fake.modes["10.0.0.1:8000"] = "400"
    raw = direct_config({"light": 1, "alt": 1}) | {"upstreams": {"light": [A, B], "alt": [A]}}
    async with serving(raw, fake) as (client, _):
        answer = await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 1, 1)))

    assert (answer.status_code, answer.json()["reason"]) == (400, "upstream_rejected")
    assert len(fake.calls) == 1


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "reason"),
    [
        ("/v2/pipelines/digits/infer", {DEADLINE: "0"}, None, 504, "deadline_exceeded"),
        ("/v2/pipelines/digits/infer", {DEADLINE: "-5"}, None, 504, "deadline_exceeded"),
        ("/v2/pipelines/digits/infer", {DEADLINE: "soon"}, None, 400, "bad_request"),
        ("/v2/pipelines/other/infer", {}, None, 404, "not_found"),
        ("/v2/pipelines/digits/infer", {}, b"{not json", 400, "bad_request"),
        ("/v2/pipelines/digits/infer", {}, b'{"inputs": []}', 400, "bad_request"),
        ("/v2/models/unknown/infer", {}, None, 404, "not_found"),
    ],
)
async def test_explicit_errors(path: str, headers: dict[str, str], body: bytes | None, status: int,
                               reason: str) -> None:
    fake = FakeTriton()
    content = body if body is not None else json.dumps(infer_body(image(0.5, 1, 1))).encode()
    async with serving(direct_config({"light": 1}), fake) as (client, registry):
        answer = await client.post(path, content=content, headers=headers)

    assert answer.status_code == status
    assert answer.json()["reason"] == reason and answer.json()["error"]
    stage = "proxy" if path.startswith("/v2/models") else ("classify" if reason == "deadline_exceeded" else "-")
    assert sample(registry, "paretoserve_router_errors_total", stage=stage, reason=reason) == 1


async def test_backpressure_and_deadlines_while_queued() -> None:
    fake = FakeTriton()
    fake.modes["10.0.0.1:8000"] = "gate"
    raw = direct_config({"light": 1}, queue={"maxSize": 1, "concurrency": 1})
    body = infer_body(image(0.5, 1, 1))
    async with serving(raw, fake) as (client, registry):
        admission = admission_of(client)
        first = asyncio.create_task(client.post("/v2/pipelines/digits/infer", json=body))
        while admission.in_flight < 1:
            await asyncio.sleep(0)
        queued = asyncio.create_task(client.post("/v2/pipelines/digits/infer", json=body,
                                                 headers={DEADLINE: "20"}))
        while admission.queue_length < 1:
            await asyncio.sleep(0)
        full = await client.post("/v2/pipelines/digits/infer", json=body)
        expired = await queued  # its 20 ms pass while the first request holds the only slot
        fake.gate.set()
        done = await first

    assert (full.status_code, full.json()["reason"], full.headers["retry-after"]) == (429, "queue_full", "1")
    assert (expired.status_code, expired.json()["reason"]) == (504, "deadline_exceeded")
    assert "queued" in expired.json()["error"]
    assert done.status_code == 200
    assert sample(registry, "paretoserve_router_queue_length") == 0


async def test_transparent_proxy_streams_the_upstream_answer() -> None:
    fake = FakeTriton()
    async with serving(direct_config({"light": 1}), fake) as (client, registry):
        ok = await client.post("/v2/models/heavy/infer", json=infer_body(image(0.5, 1, 6)))
        fake.modes["10.0.0.1:8000"] = "404"
        missing = await client.post("/v2/models/heavy/infer", json=infer_body(image(0.5, 1, 6)))

    assert ok.status_code == 200 and ok.json()["model_name"] == "heavy" and labels_of(ok) == [6]
    assert ok.headers["content-type"] == "application/json"
    assert missing.status_code == 404 and missing.json() == {"error": "heavy says 404"}  # passed through
    assert sample(registry, "paretoserve_router_requests_total", stage="proxy", model="heavy", route="direct") == 2


async def test_admin_config_live_update_changes_the_split_atomically() -> None:
    fake = FakeTriton()
    rows = [image(0.95, 1, 1), image(0.5, 2, 7), image(0.85, 3, 3)]
    async with serving(cascade_config("confidence", 0.8), fake) as (client, _):
        before = await client.post("/v2/pipelines/digits/infer", json=infer_body(*rows))
        current = (await client.get("/admin/config")).json()
        bad = await client.post("/admin/config", json={"stages": [{"name": "classify",
                                                                    "cascade": {"threshold": 3}}]})
        unchanged = (await client.get("/admin/config")).json()
        good = await client.post("/admin/config", json={"stages": [{"name": "classify",
                                                                     "cascade": {"threshold": 0.9}}],
                                                         "upstreams": {"heavy": [C]}})
        after = await client.post("/v2/pipelines/digits/infer", json=infer_body(*rows))

    assert current["stages"][0]["cascade"]["threshold"] == 0.8
    assert bad.status_code == 400
    assert bad.json()["field"] == "stages[0].cascade.threshold" and bad.json()["reason"] == "bad_config"
    assert unchanged == current
    assert good.status_code == 200 and good.json()["stages"][0]["cascade"]["threshold"] == 0.9
    assert before.json()["parameters"]["deferred"] == 1
    assert after.json()["parameters"]["deferred"] == 2
    assert ("10.0.0.3:8000", "heavy", 2) in fake.calls  # the new heavy replica served the deferred rows


async def test_health_and_metrics_contract() -> None:
    fake = FakeTriton()
    async with serving(cascade_config("confidence", 0.8), fake) as (client, _):
        await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.2, 1, 2)),
                          headers={DEADLINE: "60000"})
        ready = await client.get("/v2/health/ready")
        live = await client.get("/v2/health/live")
        text = (await client.get("/metrics")).text

    assert ready.status_code == 200 and live.status_code == 200
    for name in ("paretoserve_pipeline_requests_total", "paretoserve_router_requests_total",
                 "paretoserve_router_deferrals_total", "paretoserve_router_fallbacks_total",
                 "paretoserve_router_request_duration_seconds_bucket",
                 "paretoserve_pipeline_request_duration_seconds_bucket", "paretoserve_router_queue_length",
                 "paretoserve_router_upstream_failures_total", "paretoserve_router_errors_total"):
        assert name in text, name
    assert "# TYPE paretoserve_router_min_deadline_remaining_ms gauge" in text


async def test_min_deadline_gauge_tracks_requests_in_flight() -> None:
    fake = FakeTriton()
    fake.modes["10.0.0.1:8000"] = "gate"
    async with serving(direct_config({"light": 1}), fake) as (client, registry):
        pending = asyncio.create_task(client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 1, 1)),
                                                  headers={DEADLINE: "60000"}))
        while not fake.calls and sample(registry, "paretoserve_router_min_deadline_remaining_ms") == 0:
            await asyncio.sleep(0)
        remaining = sample(registry, "paretoserve_router_min_deadline_remaining_ms")
        fake.gate.set()
        await pending
        after = registry.get_sample_value("paretoserve_router_min_deadline_remaining_ms", {"pipeline": "digits"})

    assert 0 < remaining <= 60000
    assert after is None  # no request held: no sample


async def test_the_router_is_not_ready_before_its_lifespan() -> None:
    app = build_router(parse_config(direct_config({"light": 1})), transport=httpx.MockTransport(FakeTriton()),
                       registry=CollectorRegistry())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as client:
        ready = await client.get("/v2/health/ready")
        answer = await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 1, 1)))

    assert ready.status_code == 503
    assert answer.status_code == 503 and answer.json()["reason"] == "internal"


async def test_every_request_gets_an_answer_or_an_explicit_error() -> None:
    rng = random.Random(7)
    modes = ["ok", "ok", "refuse", "500", "timeout", "404"]

    class Flaky(FakeTriton):
        async def __call__(self, request: httpx.Request) -> httpx.Response:
            self.modes[f"{request.url.host}:{request.url.port}"] = rng.choice(modes)
            return await super().__call__(request)

    flaky = Flaky()
    raw = cascade_config("discriminator", 0.8, discriminator="judge", queue={"maxSize": 8, "concurrency": 4},
                         fallback={"heavyToLight": True, "lightToHeavy": False})
    raw["upstreams"] = {"light": [A, B], "heavy": [B, C], "judge": [C]}
    sent = 300
    async with serving(raw, flaky) as (client, registry):
        answers = await asyncio.gather(*(
            client.post("/v2/pipelines/digits/infer",
                        json=infer_body(image(rng.random(), 1, 2, rng.random()), image(0.3, 3, 4, 0.5)),
                        headers={DEADLINE: str(rng.choice([0, 5000, 60000]))})
            for _ in range(sent)))

    answered = [a for a in answers if a.status_code == 200]
    errors = [a for a in answers if a.status_code != 200]
    assert len(answered) + len(errors) == sent
    assert answered and errors
    for error in errors:
        body = error.json()
        assert body["status"] == error.status_code and body["reason"] and body["error"]
    assert {e.json()["reason"] for e in errors} <= {"deadline_exceeded", "queue_full", "upstream_unavailable",
                                                     "upstream_timeout"}
    assert sample(registry, "paretoserve_pipeline_requests_total") == sent
    counted = sum(s.value for m in registry.collect() if m.name == "paretoserve_router_errors"
                  for s in m.samples if s.name.endswith("_total"))
    assert counted == len(errors)
