"""The router apps in process: ``httpx.ASGITransport`` in front, ``httpx.MockTransport`` upstreams behind.

The fake model servers read their answers from the request itself: pixel 0 of each image is the
light model's confidence, pixels 1 and 2 are the light and heavy models' labels (x10), pixel 3 is
the discriminator's P(light wrong). So every routing decision is known in advance. Each test gets a
client for the data app and one for the admin app (with the token).
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

from paretoserve.workers.router.app import RouterApps, build_router
from paretoserve.workers.router.config import parse_config
from paretoserve.workers.router.edf import EdfAdmission
from paretoserve.workers.router.limits import RequestLimits
from paretoserve.workers.router.worker_knobs import TritonTarget

A, B, C = "http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"
DEADLINE = "x-paretoserve-deadline-ms"
TOKEN = "s3cret-token"


class FakeTriton:
    """Mock upstreams; ``modes[host]`` is ok | refuse | timeout | 500 | 404 | 400 | late (Triton's queue timeout:
    503 "Request timeout expired") | gate, or a malformed answer:
    short (a row fewer) | badshape (declared columns do not match the data) | strings | notjson | nooutputs |
    huge (a 2 MiB padding field) | params (the answer's own ``parameters``) | leaky500 (a 500 naming a URL)."""

    def __init__(self) -> None:
        self.modes: dict[str, str] = {}
        self.calls: list[tuple[str, str, int]] = []
        self.gate = asyncio.Event()
        self.unready: set[tuple[str, str]] = set()
        """(host, model) pairs whose KServe v2 readiness answers 400 (Triton: not loaded)."""

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = f"{request.url.host}:{request.url.port}"
        model = request.url.path.split("/")[3]
        if request.method == "GET" and request.url.path.endswith("/ready"):
            return httpx.Response(400 if (host, model) in self.unready else 200)
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
        if mode == "late":
            return httpx.Response(503, json={"error": "Request timeout expired"})
        if mode == "leaky500":
            return httpx.Response(500, json={"error": f"backend http://{host}/internal crashed"})
        if mode == "notjson":
            return httpx.Response(200, content=b"<html>oops</html>")
        if mode == "nooutputs":
            return httpx.Response(200, json={"model_name": model, "outputs": []})
        data = body["inputs"][0]["data"]
        images = [data[r * 64 : (r + 1) * 64] for r in range(rows)]
        if mode != "ok":
            return self._malformed(mode, model, images)
        if model == "judge":
            probs = [v for image in images for v in (1 - image[3], image[3])]
            return self._answer(model, rows, probs, [max(1 - i[3], i[3]) for i in images], [0] * rows, 2)
        heavy = model in ("heavy", "alt")
        labels = [round(image[2 if heavy else 1] * 10) for image in images]
        conf = [0.99 if heavy else image[0] for image in images]
        probs = [(c if k == label else (1 - c) / 9) for c, label in zip(conf, labels, strict=True) for k in range(10)]
        return self._answer(model, rows, probs, conf, labels, 10)

    def _malformed(self, mode: str, model: str, images: list[list[float]]) -> httpx.Response:
        rows = len(images)
        conf = [image[0] for image in images]
        labels = [round(image[1] * 10) for image in images]
        probs = [c for c in conf for _ in range(10)]
        if mode == "short":
            return self._answer(model, rows - 1, probs[10:], conf[1:], labels[1:], 10)
        answer = json.loads(self._answer(model, rows, probs, conf, labels, 10).content)
        if mode == "badshape":
            answer["outputs"][0]["shape"] = [rows, 3]
        elif mode == "strings":
            answer["outputs"][1]["data"] = [str(c) for c in conf]
        elif mode == "huge":
            answer["padding"] = "x" * (2 * 1024 * 1024)
        elif mode == "params":
            answer["parameters"] = {"secret": "from-upstream"}
            answer["outputs"][0]["parameters"] = {"binary_data_size": 99}
        return httpx.Response(200, json=answer)

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
async def serving(raw: dict[str, Any], fake: FakeTriton, **options: Any,
                  ) -> AsyncIterator[tuple[httpx.AsyncClient, CollectorRegistry]]:
    """The data client and the registry; :func:`admin_of` gives the admin client, :func:`apps_of` the apps."""
    registry = CollectorRegistry()
    apps = build_router(parse_config(raw), transport=httpx.MockTransport(fake), registry=registry,
                        admin_token=TOKEN, **options)
    async with apps.running(), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=apps.data), base_url="http://router"
    ) as client, httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.admin), base_url="http://admin",
                                   headers={"authorization": f"Bearer {TOKEN}"}) as admin:
        client.headers["x-test-app"] = str(id(apps))
        APPS[id(apps)] = (apps, admin)
        try:
            yield client, registry
        finally:
            APPS.pop(id(apps), None)


APPS: dict[int, tuple[RouterApps, httpx.AsyncClient]] = {}


def apps_of(client: httpx.AsyncClient) -> RouterApps:
    return APPS[int(client.headers["x-test-app"])][0]


def admin_of(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return APPS[int(client.headers["x-test-app"])][1]


def admission_of(client: httpx.AsyncClient) -> EdfAdmission:
    return apps_of(client).service.admission


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


async def test_a_late_refusal_is_answered_at_once_never_retried_or_fallen_back() -> None:
    """A replica's Triton refused the request after its queue timeout (``slo.lateRequests: refuse``): it waited too
    long to be on time anywhere, so neither the other replica nor the other variant is tried; the client gets a
    503 that says so, in a pipeline and on the proxy path alike (where the last replica's answer passes as is)."""
    fake = FakeTriton()
    fake.modes["10.0.0.1:8000"] = "late"
    raw = direct_config({"light": 1, "alt": 1}) | {"upstreams": {"light": [A, B], "alt": [A, B]}}
    async with serving(raw, fake) as (client, registry):
        pipeline = await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 1, 1)))
        calls = len(fake.calls)
        proxied = [await client.post("/v2/models/light/infer", json=infer_body(image(0.5, 1, 1))) for _ in range(2)]

    assert (pipeline.status_code, pipeline.json()["reason"]) == (503, "late_refused")
    assert pipeline.json()["error"] == "a replica of model 'light' answered 503: Request timeout expired"
    assert calls == 1 and len(fake.calls) == 3  # one attempt per request
    assert sorted(a.status_code for a in proxied) == [200, 503]  # the round robin reached the late replica once
    late = next(a for a in proxied if a.status_code == 503)
    assert late.json()["error"].endswith("Request timeout expired")
    assert sample(registry, "paretoserve_router_upstream_failures_total", model="light", reason="late_refused") >= 1


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "reason"),
    [
        ("/v2/pipelines/digits/infer", {DEADLINE: "0"}, None, 504, "deadline_exceeded"),
        ("/v2/pipelines/digits/infer", {DEADLINE: "-5"}, None, 400, "bad_request"),
        ("/v2/pipelines/digits/infer", {DEADLINE: "soon"}, None, 400, "bad_request"),
        ("/v2/pipelines/digits/infer", {DEADLINE: "1_000"}, None, 400, "bad_request"),
        ("/v2/pipelines/digits/infer", {DEADLINE: "1e308"}, None, 400, "bad_request"),
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
    raw = cascade_config("confidence", 0.8)
    raw["upstreams"]["alt"] = [C]  # a configured origin: live updates may move models there
    async with serving(raw, fake) as (client, _):
        admin = admin_of(client)
        before = await client.post("/v2/pipelines/digits/infer", json=infer_body(*rows))
        current = (await admin.get("/admin/config")).json()
        bad = await admin.post("/admin/config", json={"stages": [{"name": "classify",
                                                                   "cascade": {"threshold": 3}}]})
        unchanged = (await admin.get("/admin/config")).json()
        good = await admin.post("/admin/config", json={"stages": [{"name": "classify",
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
        text = (await admin_of(client).get("/metrics", headers={"authorization": ""})).text  # no token needed

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


async def test_ready_only_when_the_pods_own_triton_has_its_models_loaded() -> None:
    fake = FakeTriton()
    fake.unready.add(("10.0.0.2:8000", "heavy"))  # the pod's own Triton is still loading heavy
    fake.unready.add(("10.0.0.1:8000", "light"))  # another pod's model: not this pod's readiness
    own = TritonTarget(url="http://10.0.0.2:8000")
    config = cascade_config("confidence", 0.8)
    config["upstreams"] = {"light": ["http://10.0.0.1:8000"], "heavy": ["http://10.0.0.2:8000"]}
    async with serving(config, fake, triton=own) as (client, _):
        loading = await client.get("/v2/health/ready")
        fake.unready.clear()
        loaded = await client.get("/v2/health/ready")

    assert loading.status_code == 503
    assert loading.json() == {"ready": False, "pipeline": "digits", "unreadyModels": ["heavy"]}
    assert loaded.status_code == 200 and loaded.json()["ready"] is True


async def test_the_router_is_not_ready_before_its_lifespan() -> None:
    apps = build_router(parse_config(direct_config({"light": 1})), transport=httpx.MockTransport(FakeTriton()),
                        registry=CollectorRegistry())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.data), base_url="http://router") as client:
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


# --- hardening: malformed upstream answers, bad inputs, limits, deadlines, the admin listener ---------------


@pytest.mark.parametrize(("mode", "light_status"), [
    ("short", 502), ("badshape", 502), ("strings", 502), ("notjson", 502), ("nooutputs", 502), ("huge", 502),
])
async def test_a_malformed_answer_is_a_502_never_a_wrong_200(mode: str, light_status: int) -> None:
    fake = FakeTriton()
    fake.modes["10.0.0.2:8000"] = mode
    for raw in (cascade_config("confidence", 0.8), direct_config({"light": 1})):
        raw["upstreams"]["light"] = [B]
        async with serving(raw, fake, limits=RequestLimits(max_upstream_bytes=1024 * 1024)) as (client, registry):
            answer = await client.post("/v2/pipelines/digits/infer",
                                       json=infer_body(image(0.95, 1, 1), image(0.2, 4, 9)))

        assert (answer.status_code, answer.json()["reason"]) == (light_status, "upstream_error"), answer.text
        assert answer.json()["model"] == "light" and "10.0.0" not in answer.text
        assert sample(registry, "paretoserve_router_errors_total", stage="classify", reason="upstream_error") == 1


async def test_the_heavy_model_answering_short_or_another_datatype_is_a_502() -> None:
    for mode in ("short", "strings"):
        fake = FakeTriton()
        fake.modes["10.0.0.2:8000"] = mode
        raw = cascade_config("confidence", 0.8)
        raw["upstreams"]["heavy"] = [B]
        async with serving(raw, fake) as (client, _):
            answer = await client.post("/v2/pipelines/digits/infer",
                                       json=infer_body(image(0.95, 1, 1), image(0.2, 4, 9)))
        assert (answer.status_code, answer.json()["model"]) == (502, "heavy"), answer.text


async def test_upstream_parameters_and_extra_fields_are_not_relayed() -> None:
    fake = FakeTriton()
    fake.modes["10.0.0.1:8000"] = "params"
    async with serving(direct_config({"light": 1}), fake) as (client, _):
        answer = await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 3, 3), id="mine"))

    body = answer.json()
    assert answer.status_code == 200 and "secret" not in answer.text and "binary_data_size" not in answer.text
    assert set(body) == {"id", "model_name", "outputs", "parameters"} and body["id"] == "mine"
    assert all(set(t) == {"name", "datatype", "shape", "data"} for t in body["outputs"])


async def test_upstream_addresses_never_reach_the_client() -> None:
    fake = FakeTriton()
    fake.modes["10.0.0.1:8000"] = "leaky500"
    fake.modes["10.0.0.2:8000"] = "refuse"
    raw = direct_config({"light": 1}) | {"upstreams": {"light": [A, B]}}
    async with serving(raw, fake) as (client, _):
        answer = await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 3, 3)))

    assert answer.status_code == 503 and answer.json()["reason"] == "upstream_unavailable"
    assert "10.0.0" not in answer.text and "http://" not in answer.text


@pytest.mark.parametrize(("body", "words"), [
    ({"inputs": [{"name": "IMAGE", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2], 3, 4]}]}, "data"),
    ({"inputs": [{"name": "IMAGE", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}]}, "nesting"),
    ({"inputs": [{"name": "IMAGE", "shape": [1, 2], "datatype": "FP32", "data": ["a", "b"]}]}, "number"),
    ({"inputs": [{"name": "IMAGE", "shape": [1, 2], "datatype": "FP32", "data": [True, 1]}]}, "number"),
    ({"inputs": [{"name": "IMAGE", "shape": [1, 2], "datatype": "INT32", "data": [1.5, 1]}]}, "int"),
    ({"inputs": [{"name": "IMAGE", "shape": [1, 2], "datatype": "FP128", "data": [1, 1]}]}, "datatype"),
    ({"inputs": [{"name": "IMAGE", "shape": [1, 2], "data": [1, 1]}]}, "datatype"),
    ({"inputs": [{"name": "IMAGE", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}], "outputs": "LABEL"},
     "outputs"),
    ({"inputs": [{"name": "IMAGE", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}], "id": 5}, "id"),
])
async def test_malformed_inputs_are_a_400_naming_the_field(body: dict[str, Any], words: str) -> None:
    async with serving(direct_config({"light": 1}), FakeTriton()) as (client, _):
        answer = await client.post("/v2/pipelines/digits/infer", json=body)
    assert (answer.status_code, answer.json()["reason"]) == (400, "bad_request")
    assert words in answer.json()["error"]


async def test_asking_for_an_output_the_model_lacks_is_a_400() -> None:
    async with serving(cascade_config("confidence", 0.8), FakeTriton()) as (client, _):
        answer = await client.post("/v2/pipelines/digits/infer",
                                   json=infer_body(image(0.2, 1, 2), outputs=[{"name": "NOPE"}]))
    assert answer.status_code == 400 and "no output 'NOPE'" in answer.json()["error"]


async def test_body_limits() -> None:
    """413 from Content-Length and while streaming; slow bodies are cut off below the app (the hostile suite)."""
    limits = RequestLimits(max_body_bytes=1000)
    body = json.dumps(infer_body(*[image(0.5, 1, 1)] * 4)).encode()
    assert len(body) > 1000

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    async with serving(direct_config({"light": 1}), FakeTriton(), limits=limits) as (client, _):
        declared = await client.post("/v2/pipelines/digits/infer", content=body)
        streamed = await client.post("/v2/pipelines/digits/infer", content=chunks())
        admin_big = await admin_of(client).post("/admin/config", content=b" " * (1024 * 1024 + 1))
        small = await client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 1, 1)))

    assert (declared.status_code, streamed.status_code, admin_big.status_code) == (413, 413, 413)
    assert declared.headers["connection"] == "close" and declared.json()["reason"] == "payload_too_large"
    assert small.status_code == 200


async def test_a_deadline_counts_in_the_gauge_only_once_its_body_is_read() -> None:
    fake = FakeTriton()
    fake.modes["10.0.0.1:8000"] = "gate"
    body = json.dumps(infer_body(image(0.5, 1, 1))).encode()
    release = asyncio.Event()

    async def held() -> AsyncIterator[bytes]:
        yield body[:20]
        await release.wait()
        yield body[20:]

    async with serving(direct_config({"light": 1}), fake) as (client, registry):
        pending = asyncio.create_task(client.post("/v2/pipelines/digits/infer", content=held(),
                                                  headers={DEADLINE: "60000"}))
        for _ in range(50):
            await asyncio.sleep(0)
        while_sending = registry.get_sample_value("paretoserve_router_min_deadline_remaining_ms",
                                                  {"pipeline": "digits"})
        release.set()
        while admission_of(client).in_flight < 1:  # at the (gated) upstream
            await asyncio.sleep(0)
        while_served = sample(registry, "paretoserve_router_min_deadline_remaining_ms")
        fake.gate.set()
        assert (await pending).status_code == 200

    assert while_sending is None
    assert 0 < while_served <= 60000


async def test_the_deadline_is_clamped_to_the_slo() -> None:
    fake = FakeTriton()
    fake.modes["10.0.0.1:8000"] = "gate"
    async with serving(direct_config({"light": 1}, sloMs=500), fake) as (client, registry):
        pending = asyncio.create_task(client.post("/v2/pipelines/digits/infer", json=infer_body(image(0.5, 1, 1)),
                                                  headers={DEADLINE: "999999999.999"}))
        while admission_of(client).in_flight < 1:
            await asyncio.sleep(0)
        remaining = sample(registry, "paretoserve_router_min_deadline_remaining_ms")
        fake.gate.set()
        await pending
    assert 0 < remaining <= 500


async def test_the_data_listener_has_no_admin_or_metrics_and_errors_are_json() -> None:
    async with serving(direct_config({"light": 1}), FakeTriton()) as (client, _):
        answers = [await client.request(method, path) for method, path in [
            ("GET", "/admin/config"), ("POST", "/admin/config"), ("POST", "/admin/worker"), ("GET", "/metrics"),
            ("GET", "/v2/pipelines/digits/infer"), ("PUT", "/v2/health/live"), ("GET", "/nope")]]
    assert [a.status_code for a in answers] == [404, 404, 404, 404, 405, 405, 404]
    assert all(a.headers["content-type"] == "application/json" and a.json()["error"] for a in answers)
    assert answers[4].headers["allow"] == "POST"


async def test_the_admin_api_needs_the_token() -> None:
    async with serving(direct_config({"light": 1}), FakeTriton()) as (client, _):
        admin = admin_of(client)
        answers = {auth: await admin.get("/admin/config", headers={"authorization": auth}) for auth in
                   ("", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"bearer {TOKEN}")}
        unauthenticated_post = await admin.post("/admin/worker", json={"models": {}}, headers={"authorization": ""})
        metrics = await admin.get("/metrics", headers={"authorization": ""})

    for auth, answer in answers.items():
        expected = 200 if auth == f"bearer {TOKEN}" else 401
        assert answer.status_code == expected, auth
        if expected == 401:
            assert answer.headers["www-authenticate"] == "Bearer" and answer.json()["reason"] == "unauthorized"
    assert unauthenticated_post.status_code == 401 and metrics.status_code == 200


async def test_without_a_token_the_admin_api_is_off() -> None:
    apps = build_router(parse_config(direct_config({"light": 1})), transport=httpx.MockTransport(FakeTriton()),
                        registry=CollectorRegistry())
    async with apps.running(), httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.admin),
                                                 base_url="http://admin") as admin:
        config = await admin.get("/admin/config", headers={"authorization": "Bearer anything"})
        metrics = await admin.get("/metrics")
    assert config.status_code == 403 and "admin API disabled" in config.json()["error"]
    assert metrics.status_code == 200


@pytest.mark.parametrize("url", ["http://attacker.example:80", "ftp://10.0.0.1:8000", "http://u:p@10.0.0.1:8000",
                                 "http://10.0.0.1:8000/?x=1", "http://10.0.0.1:8000#f", "http://", "http://10.0.0.1:9"])
async def test_live_updates_cannot_point_a_model_at_a_new_host(url: str) -> None:
    async with serving(direct_config({"light": 1}), FakeTriton()) as (client, _):
        answer = await admin_of(client).post("/admin/config", json={"upstreams": {"light": [url]}})
        current = (await admin_of(client).get("/admin/config")).json()
    assert answer.status_code == 400 and answer.json()["field"] == "upstreams.light[0]"
    assert current["upstreams"]["light"] == [A]
