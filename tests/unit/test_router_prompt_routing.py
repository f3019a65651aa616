"""The router's query-aware split of token generation (`paretoserve.workers.router.prompt_router`): a request that
names the pipeline goes to the heavy model when the prompt scorer's score is at least the live preRouteThreshold,
else to the light one; a failing scorer sends it to the heavy model (never a 5xx because of the scorer alone).

Pure decisions and config parsing, then the endpoints in process against ``httpx.MockTransport`` upstreams (a
scorer answering per prompt, two token-streaming models); the real Triton path is
``tests/integration/test_router_prompt_cascade.py``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from paretoserve.planner.spec import RouterKind
from paretoserve.workers.router.app import RouterApps, build_router
from paretoserve.workers.router.config import (
    CascadeConfig,
    RouterConfig,
    apply_update,
    config_to_json,
    parse_config,
)
from paretoserve.workers.router.decisions import Route
from paretoserve.workers.router.errors import BadRequest, ConfigError, DeadlineExceeded, UpstreamError
from paretoserve.workers.router.generate import generate_prompt
from paretoserve.workers.router.prompt_router import (
    Choice,
    choose,
    model_for_score,
    pipeline_stage,
    read_score,
    scorer_body,
)

UP = "http://replica:8000"
SCORER_UP = "http://scorer-replica:8000"
TOKEN = "admin-token"


def raw_config(*, threshold: float = 0.5, router: str = "prompt", scorer: str | None = "scorer",
               stages: int = 1) -> dict[str, Any]:
    cascade: dict[str, Any] = {"light": "small", "heavy": "large", "router": router, "threshold": 0.5,
                               "preRouteThreshold": threshold if router in ("prompt", "hybrid") else None,
                               "scorer": scorer}
    if router in ("discriminator", "hybrid"):
        cascade["discriminator"] = "judge"
    listed = [{"name": "answer", "cascade": cascade}]
    listed += [{"name": f"next{i}", "dependsOn": ["answer"], "variants": {"small": 1.0}} for i in range(stages - 1)]
    upstreams = {"small": [UP], "large": [UP], "scorer": [SCORER_UP], "judge": [UP]}
    return {"pipeline": "arith", "stages": listed, "upstreams": upstreams}


def config(**kwargs: Any) -> RouterConfig:
    return parse_config(raw_config(**kwargs))


def cascade_of(cfg: RouterConfig) -> CascadeConfig:
    cascade = cfg.stages[0].cascade
    assert cascade is not None
    return cascade


# --- config -------------------------------------------------------------------------------------


def test_the_scorer_is_a_model_of_the_prompt_cascade_and_round_trips() -> None:
    cfg = config()
    cascade = cascade_of(cfg)
    assert (cascade.router, cascade.scorer, cascade.pre_route_threshold) == (RouterKind.PROMPT, "scorer", 0.5)
    assert "scorer" in cfg.stages[0].models()
    assert parse_config(config_to_json(cfg)) == cfg
    assert config_to_json(config(scorer=None))["stages"][0]["cascade"]["scorer"] is None


@pytest.mark.parametrize(("change", "words"), [
    ({"router": "confidence", "preRouteThreshold": None}, "not used by the confidence router"),
    ({"router": "hybrid", "discriminator": "judge"}, "not used by the hybrid router"),
    ({"scorer": "large"}, "must differ from light and heavy"),
    ({"scorer": "../scorer"}, "must be a string matching"),
    ({"scorer": 3}, "must be a string matching"),
])
def test_a_bad_scorer_is_refused_naming_the_field(change: dict[str, Any], words: str) -> None:
    raw = raw_config()
    raw["stages"][0]["cascade"].update(change)
    with pytest.raises(ConfigError, match=words) as error:
        parse_config(raw)
    assert error.value.field == "stages[0].cascade.scorer"


def test_the_scorer_needs_an_upstream_and_cannot_change_live() -> None:
    raw = raw_config()
    del raw["upstreams"]["scorer"]
    with pytest.raises(ConfigError, match="no upstream") as error:
        parse_config(raw)
    assert error.value.field == "upstreams.scorer"
    with pytest.raises(ConfigError, match="cannot be changed live") as error:
        apply_update(config(), {"stages": [{"name": "answer", "cascade": {"scorer": "other"}}]})
    assert error.value.field == "stages[0].cascade.scorer"
    updated = apply_update(config(), {"stages": [{"name": "answer", "cascade": {"preRouteThreshold": 0.9}}]})
    assert cascade_of(updated).pre_route_threshold == 0.9 and cascade_of(updated).scorer == "scorer"


# --- the decision ----------------------------------------------------------------------------------


def test_prompts_scored_at_or_above_the_threshold_go_to_the_heavy_model() -> None:
    cascade = cascade_of(config(threshold=0.5))
    assert model_for_score(cascade, 0.5) == ("large", Route.PREROUTED)
    assert model_for_score(cascade, 0.9) == ("large", Route.PREROUTED)
    assert model_for_score(cascade, 0.4999) == ("small", Route.LIGHT)
    assert model_for_score(cascade, None) == ("large", Route.FALLBACK)  # the scorer failed
    everything = cascade_of(config(threshold=0.0))
    assert all(model_for_score(everything, s)[0] == "large" for s in (0.0, 1e-9, 0.5, 1.0))
    nothing = cascade_of(config(threshold=1.0))  # only a certain failure (score exactly 1) goes heavy
    assert all(model_for_score(nothing, s)[0] == "small" for s in (0.0, 0.5, 0.9999999))
    assert model_for_score(nothing, 1.0)[0] == "large"


def test_only_a_one_stage_pipeline_with_a_prompt_scorer_or_no_cascade_generates() -> None:
    assert pipeline_stage(config()).name == "answer"
    split = parse_config({"pipeline": "arith", "stages": [{"name": "answer", "variants": {"small": 1.0}}],
                          "upstreams": {"small": [UP]}})
    assert pipeline_stage(split).cascade is None
    with pytest.raises(BadRequest, match="has 2 stages"):
        pipeline_stage(config(stages=2))
    with pytest.raises(BadRequest, match="confidence cascade without a prompt scorer"):
        pipeline_stage(config(router="confidence", scorer=None))
    with pytest.raises(BadRequest, match="prompt cascade without a prompt scorer"):
        pipeline_stage(config(scorer=None))


async def test_choose_asks_the_scorer_and_falls_back_to_heavy_only_for_the_scorers_own_failures() -> None:
    stage = config(threshold=0.5).stages[0]

    def scorer(outcome: float | Exception) -> Callable[[str, str], Any]:
        async def score(model: str, prompt: str) -> float:
            assert (model, prompt) == ("scorer", "12+34=")
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        return score

    assert await choose(stage, "12+34=", scorer(0.7), "r") == Choice("answer", "large", Route.PREROUTED, 0.7)
    assert await choose(stage, "12+34=", scorer(0.2), "r") == Choice("answer", "small", Route.LIGHT, 0.2)
    failed = await choose(stage, "12+34=", scorer(UpstreamError("boom", model="scorer")), "r")
    assert failed == Choice("answer", "large", Route.FALLBACK, None)
    with pytest.raises(DeadlineExceeded):  # the request's own deadline: not the scorer's failure
        await choose(stage, "12+34=", scorer(DeadlineExceeded("late")), "r")
    everything = config(threshold=0.0).stages[0]  # every probability is >= 0: nobody is asked
    unasked = await choose(everything, "12+34=", scorer(UpstreamError("never asked", model="scorer")), "r")
    assert unasked == Choice("answer", "large", Route.PREROUTED, None)


def test_the_scorer_request_and_answer() -> None:
    body = orjson.loads(scorer_body("1+2=", batched=True))
    assert body["inputs"] == [{"name": "PROMPT", "datatype": "BYTES", "shape": [1, 1], "data": ["1+2="]}]
    assert orjson.loads(scorer_body("1+2=", batched=False))["inputs"][0]["shape"] == [1]
    assert read_score({"outputs": [{"name": "SCORE", "datatype": "FP32", "shape": [1, 1], "data": [0.25]}]},
                      "scorer") == 0.25
    for answer in ({"outputs": [{"name": "SCORE", "datatype": "FP32", "shape": [1, 1], "data": [math.nan]}]},
                   {"outputs": [{"name": "SCORE", "datatype": "FP32", "shape": [1, 1], "data": [1.5]}]},
                   {"outputs": [{"name": "SCORE", "datatype": "FP32", "shape": [1, 1], "data": [-0.1]}]},
                   {"outputs": [{"name": "OTHER", "datatype": "FP32", "shape": [1, 1], "data": [0.25]}]},
                   {"outputs": [{"name": "SCORE", "datatype": "BYTES", "shape": [1, 1], "data": ["x"]}]}):
        with pytest.raises(UpstreamError):
            read_score(answer, "scorer")


def test_the_prompt_of_a_generate_body() -> None:
    assert generate_prompt(b'{"PROMPT":"1+2=","MAX_TOKENS":3}') == "1+2="
    assert generate_prompt(b'{"PROMPT":["1+2="]}') == "1+2="
    assert generate_prompt(b'{"text_input":"1+2="}') == "1+2="
    for body, words in ((b'{"MAX_TOKENS":3}', "PROMPT: missing"), (b'{"PROMPT":3}', "PROMPT: must be one string"),
                        (b'{"PROMPT":["a","b"]}', "PROMPT: must be one string"), (b"[1]", "request body")):
        with pytest.raises(BadRequest, match=words):
            generate_prompt(body)


# --- the endpoints against mock upstreams ---------------------------------------------------------------

MODEL_CONFIG = {"max_batch_size": 0, "input": [{"name": "PROMPT", "data_type": "TYPE_STRING"},
                                               {"name": "MAX_TOKENS", "data_type": "TYPE_INT32", "optional": True}]}
SCORER_CONFIG = {"max_batch_size": 8, "input": [{"name": "PROMPT", "data_type": "TYPE_STRING", "dims": [1]}]}
SCORES = {"1+1=": 0.1, "99*9=": 0.9, "5+5=": 0.5}


class _Events(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


class Upstreams:
    """The scorer (``scorer`` says how it answers) and two models streaming their own name as tokens."""

    def __init__(self) -> None:
        self.scorer: str = "ok"
        self.scored: list[dict[str, Any]] = []
        self.generated: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        model, action = request.url.path.split("/")[3], request.url.path.rsplit("/", 1)[-1]
        if action == "config":
            if model == "scorer" and self.scorer == "config-fails":
                return httpx.Response(500, json={"error": "down"})
            return httpx.Response(200, json=SCORER_CONFIG if model == "scorer" else MODEL_CONFIG)
        if model == "scorer":
            return await self._score(request)
        assert action == "generate_stream", request.url.path
        self.generated.append(model)
        events = [{"TOKEN": model[0], "model_name": model}, {"GENERATED": 1, "model_name": model}]
        return httpx.Response(200, stream=_Events([b"data: " + orjson.dumps(e) + b"\n\n" for e in events]),
                              headers={"content-type": "text/event-stream"})

    async def _score(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        self.scored.append(body)
        behaviour = self.scorer
        if behaviour == "unreachable":
            raise httpx.ConnectError("connection refused by 10.0.0.9:8000")
        if behaviour == "slow":
            await asyncio.sleep(5)
        if behaviour in ("500", "400"):
            return httpx.Response(int(behaviour), json={"error": "scorer: ValueError: not an arithmetic prompt"})
        score = SCORES[body["inputs"][0]["data"][0]]
        value: Any = {"nan": "NaN", "malformed": [score, score]}.get(behaviour, [score])
        return httpx.Response(200, json={"outputs": [{"name": "SCORE", "datatype": "FP32",
                                                      "shape": [1, 1], "data": value}]})


@asynccontextmanager
async def routed(cfg: RouterConfig, upstreams: Upstreams) -> AsyncIterator[tuple[httpx.AsyncClient, RouterApps]]:
    apps = build_router(cfg, transport=httpx.MockTransport(upstreams), registry=CollectorRegistry(),
                        admin_token=TOKEN)
    async with apps.running(), httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.data),
                                                 base_url="http://router") as client:
        yield client, apps


def rows(apps: RouterApps, model: str, route: str) -> float:
    labels = {"pipeline": "arith", "stage": "answer", "model": model, "route": route}
    return apps.service.registry.get_sample_value("paretoserve_router_requests_total", labels) or 0.0


def metric(apps: RouterApps, name: str, **labels: str) -> float:
    return apps.service.registry.get_sample_value(name, {"pipeline": "arith", **labels}) or 0.0


async def test_the_pipeline_routes_each_prompt_by_its_score_on_every_endpoint() -> None:
    upstreams = Upstreams()
    async with routed(config(threshold=0.5), upstreams) as (client, apps):
        for prompt, model, route in (("1+1=", "small", "light"), ("99*9=", "large", "prerouted"),
                                     ("5+5=", "large", "prerouted")):  # 0.5 >= 0.5: heavy
            whole = await client.post("/v2/models/arith/generate", json={"PROMPT": prompt})
            assert whole.status_code == 200, whole.text
            assert whole.json() == {"TOKEN": model[0], "GENERATED": 1, "model_name": model}
            assert (whole.headers["x-paretoserve-variant"], whole.headers["x-paretoserve-route"]) == (model, route)
            async with client.stream("POST", "/v2/models/arith/generate_stream", json={"PROMPT": prompt}) as stream:
                events = [line async for line in stream.aiter_lines() if line.startswith("data: ")]
            assert stream.headers["x-paretoserve-variant"] == model
            assert orjson.loads(events[0][6:]) == {"TOKEN": model[0], "model_name": model}
            completion = await client.post("/v1/completions", json={"model": "arith", "prompt": prompt})
            assert completion.json()["model"] == "arith"  # what the client named (OpenAI)
            assert completion.json()["choices"][0]["text"] == model[0]
            assert completion.headers["x-paretoserve-variant"] == model
        assert upstreams.generated == ["small"] * 3 + ["large"] * 6
        assert rows(apps, "small", "light") == 3 and rows(apps, "large", "prerouted") == 6
        assert metric(apps, "paretoserve_pipeline_requests_total") == 9
        assert metric(apps, "paretoserve_pipeline_request_duration_seconds_count") == 9
        assert metric(apps, "paretoserve_router_request_duration_seconds_count", stage="answer", model="scorer") == 9
        assert {tuple(b["inputs"][0]["shape"]) for b in upstreams.scored} == {(1, 1)}  # a batching scorer
        # a model named directly is proxied as before, without asking the scorer
        direct = await client.post("/v2/models/small/generate", json={"PROMPT": "99*9="})
        assert direct.headers["x-paretoserve-variant"] == "small" and direct.headers["x-paretoserve-route"] == "direct"
        assert len(upstreams.scored) == 9


async def test_a_pushed_threshold_applies_to_the_next_request() -> None:
    upstreams = Upstreams()
    async with routed(config(threshold=0.5), upstreams) as (client, apps), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=apps.admin), base_url="http://admin",
            headers={"authorization": f"Bearer {TOKEN}"}) as admin:

        async def variant(prompt: str) -> str:
            answer = await client.post("/v2/models/arith/generate", json={"PROMPT": prompt})
            return answer.headers["x-paretoserve-variant"]

        assert [await variant(p) for p in SCORES] == ["small", "large", "large"]
        asked = len(upstreams.scored)
        for threshold, expected in ((0.0, ["large"] * 3), (1.0, ["small"] * 3), (0.95, ["small"] * 3),
                                    (0.2, ["small", "large", "large"])):
            pushed = await admin.post("/admin/config", json={"stages": [
                {"name": "answer", "cascade": {"preRouteThreshold": threshold}}]})
            assert pushed.status_code == 200, pushed.text
            assert [await variant(p) for p in SCORES] == expected, threshold
        assert len(upstreams.scored) == asked + 3 * 3  # asked at every threshold but 0


@pytest.mark.parametrize("behaviour", ["500", "400", "unreachable", "nan", "malformed", "config-fails"])
async def test_a_failing_scorer_sends_the_prompt_to_the_heavy_model(behaviour: str) -> None:
    upstreams = Upstreams()
    upstreams.scorer = behaviour
    async with routed(config(threshold=0.5), upstreams) as (client, apps):
        for path, body in (("/v2/models/arith/generate", {"PROMPT": "1+1="}),
                           ("/v1/completions", {"model": "arith", "prompt": "1+1=", "stream": True})):
            answer = await client.post(path, json=body)
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-paretoserve-variant"] == "large"
            assert answer.headers["x-paretoserve-route"] == "fallback"
        assert upstreams.generated == ["large", "large"]
        assert rows(apps, "large", "fallback") == 2 and rows(apps, "small", "light") == 0
        assert metric(apps, "paretoserve_router_fallbacks_total", stage="answer") == 2
        assert metric(apps, "paretoserve_router_errors_total", stage="answer", reason="upstream_error") == 0


async def test_the_deadline_passing_while_scoring_is_the_requests_504_not_a_fallback() -> None:
    upstreams = Upstreams()
    upstreams.scorer = "slow"
    async with routed(config(), upstreams) as (client, apps):
        answer = await client.post("/v2/models/arith/generate", json={"PROMPT": "1+1="},
                                   headers={"x-paretoserve-deadline-ms": "50"})
        assert answer.status_code == 504 and answer.json()["reason"] == "deadline_exceeded"
        assert answer.json()["stage"] == "answer" and upstreams.generated == []
        assert metric(apps, "paretoserve_pipeline_requests_total") == 1
        assert metric(apps, "paretoserve_pipeline_request_duration_seconds_count") == 1


async def test_what_the_pipeline_cannot_generate_is_a_clear_400() -> None:
    upstreams = Upstreams()
    async with routed(config(stages=2), upstreams) as (client, _):
        for path, body in (("/v2/models/arith/generate_stream", {"PROMPT": "1+1="}),
                           ("/v1/completions", {"model": "arith", "prompt": "1+1="})):
            answer = await client.post(path, json=body)
            assert answer.status_code == 400 and "exactly one stage" in answer.json()["error"]
    async with routed(config(router="confidence", scorer=None), upstreams) as (client, _):
        answer = await client.post("/v2/models/arith/generate", json={"PROMPT": "1+1="})
        assert answer.status_code == 400 and "without a prompt scorer" in answer.json()["error"]
    async with routed(config(), upstreams) as (client, _):
        answer = await client.post("/v2/models/arith/generate", json={"MAX_TOKENS": 2})
        assert answer.status_code == 400 and answer.json()["error"].startswith("PROMPT: missing")
        answer = await client.post("/v2/models/nope/generate", json={"PROMPT": "1+1="})
        assert answer.status_code == 404 and "nope" in answer.json()["error"]
    assert upstreams.generated == [] and upstreams.scored == []


async def test_a_pipeline_without_a_cascade_generates_with_its_variant() -> None:
    cfg = parse_config({"pipeline": "arith", "stages": [{"name": "answer", "variants": {"small": 1.0}}],
                        "upstreams": {"small": [UP]}})
    upstreams = Upstreams()
    async with routed(cfg, upstreams) as (client, apps):
        answer = await client.post("/v2/models/arith/generate", json={"MAX_TOKENS": 1, "PROMPT": "1+1="})
        assert answer.status_code == 200 and answer.json()["model_name"] == "small"
        assert answer.headers["x-paretoserve-route"] == "direct" and upstreams.scored == []
        assert rows(apps, "small", "direct") == 1
