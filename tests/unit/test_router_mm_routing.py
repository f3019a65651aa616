"""Multimodal generation through the pipeline (`paretoserve.workers.router.generate`, `prompt_router`,
`streaming`): a generate body carries ``IMAGE`` beside ``PROMPT``; the router checks it against the model's and the
scorer's Triton configs (dims included), sends both to a scorer that reads the image and the whole body to the model
the score chose; a bad image is the router's 400 naming ``IMAGE``, never a fallback nor a 5xx; completions are text
only. Pure parts, then the endpoints in process against ``httpx.MockTransport`` upstreams; the real Triton path is
``tests/integration/test_router_mm_cascade.py``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from paretoserve.workers.router.app import RouterApps, build_router
from paretoserve.workers.router.config import RouterConfig, parse_config
from paretoserve.workers.router.decisions import Route
from paretoserve.workers.router.errors import BadRequest
from paretoserve.workers.router.generate import (
    InputSpec,
    check_generate_body,
    check_input,
    infer_tensor,
    model_inputs,
    parse_completion_request,
    upstream_body,
)
from paretoserve.workers.router.prompt_router import Choice, choose, scorer_body, scorer_tensors
from tests.unit.test_router_prompt_routing import _Events

IMAGE = InputSpec("IMAGE", "TYPE_FP32", dims=(64,))
PROMPT = InputSpec("PROMPT", "TYPE_STRING", dims=(1,))
MM_INPUTS = (IMAGE, PROMPT, InputSpec("MAX_TOKENS", "TYPE_INT32", optional=True, dims=(1,)))
PIXELS = [round(i / 64, 4) for i in range(64)]


# --- the generate body and the scorer's tensors --------------------------------------------------


def test_model_inputs_read_the_dims_and_the_fixed_count() -> None:
    config = {"input": [{"name": "IMAGE", "data_type": "TYPE_FP32", "dims": [64]},
                        {"name": "PROMPT", "data_type": "TYPE_STRING", "dims": ["1"]},
                        {"name": "MAX_TOKENS", "data_type": "TYPE_INT32", "dims": [1], "optional": True}]}
    assert model_inputs(config) == MM_INPUTS
    assert [s.values for s in model_inputs(config)] == [64, 1, 1]
    assert InputSpec("X", "TYPE_FP32", dims=(-1,)).values is None and InputSpec("X", "TYPE_FP32").values is None
    assert InputSpec("X", "TYPE_FP32", dims=(2, 3)).values == 6


def test_an_image_is_checked_against_its_dims_and_fp32() -> None:
    assert check_input(IMAGE, PIXELS, "m") == PIXELS
    assert check_generate_body(orjson.dumps({"PROMPT": "+3=", "IMAGE": PIXELS}), "m", MM_INPUTS)["IMAGE"] == PIXELS
    for value, words in (([0.5] * 63, "IMAGE: must hold 64 values for model 'm' (its dims [64], flat), got 63"),
                         (0.5, "IMAGE: must hold 64 values"), ([[0.5] * 64], "IMAGE: must be a finite FP32 number"),
                         (["0.5"] * 64, "IMAGE: must be a finite FP32 number"),
                         ([1e39] * 64, "IMAGE: must be a finite FP32 number"),
                         ([True] * 64, "IMAGE: must be a finite FP32 number"), ([], "IMAGE: must be")):
        with pytest.raises(BadRequest, match=re.escape(words)):
            check_input(IMAGE, value, "m")
    assert check_input(InputSpec("X", "TYPE_FP64"), 1e39, "m") == [1e39]  # in FP64's range
    with pytest.raises(BadRequest, match="X: must be a finite FP16 number"):
        check_input(InputSpec("X", "TYPE_FP16"), 70000.0, "m")
    with pytest.raises(BadRequest, match="PROMPT: must hold 1 values"):  # a text model's one prompt
        check_generate_body(b'{"PROMPT":["a","b"]}', "m", (PROMPT,))
    with pytest.raises(BadRequest, match=r"IMAGE: missing \(model 'm' requires IMAGE, PROMPT\)"):
        check_generate_body(b'{"PROMPT":"+3="}', "m", MM_INPUTS)


def test_an_input_becomes_an_infer_tensor() -> None:
    assert infer_tensor(IMAGE, PIXELS, batched=True) == {"name": "IMAGE", "datatype": "FP32", "shape": [1, 64],
                                                         "data": PIXELS}
    assert infer_tensor(IMAGE, PIXELS, batched=False)["shape"] == [64]
    assert infer_tensor(InputSpec("T", "TYPE_STRING", dims=(-1,)), ["a", "b"], batched=False) == {
        "name": "T", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}


def test_the_scorer_gets_the_inputs_it_reads_from_the_body() -> None:
    body = {"PROMPT": "+3=", "IMAGE": PIXELS, "MAX_TOKENS": 2}
    assert scorer_tensors(body, "mm-scorer", (PROMPT,), batched=True) == []  # a text scorer: PROMPT alone
    (tensor,) = scorer_tensors(body, "mm-scorer", (IMAGE, PROMPT), batched=True)
    assert tensor == {"name": "IMAGE", "datatype": "FP32", "shape": [1, 64], "data": PIXELS}
    sent = orjson.loads(scorer_body("+3=", batched=True, extra=[tensor]))
    assert [t["name"] for t in sent["inputs"]] == ["PROMPT", "IMAGE"] and sent["outputs"] == [{"name": "SCORE"}]
    assert sent["inputs"][0] == {"name": "PROMPT", "datatype": "BYTES", "shape": [1, 1], "data": ["+3="]}
    optional = InputSpec("HINT", "TYPE_STRING", optional=True)
    assert scorer_tensors({"PROMPT": "+3="}, "s", (PROMPT, optional), batched=False) == []
    for given, words in (({"PROMPT": "+3="}, r"IMAGE: missing \(the pipeline's prompt scorer 'mm-scorer' reads it"),
                         ({"PROMPT": "+3=", "IMAGE": PIXELS[:10]}, "IMAGE: must hold 64 values for model 'mm-scorer'"),
                         (None, "IMAGE: missing .*/v1/completions carries a text prompt only")):
        with pytest.raises(BadRequest, match=words):
            scorer_tensors(given, "mm-scorer", (IMAGE, PROMPT), batched=True)


def test_a_completion_for_a_model_that_needs_an_image_is_a_400_naming_it() -> None:
    request = parse_completion_request(b'{"model":"mm-high","prompt":"+3=","max_tokens":2}')
    with pytest.raises(BadRequest, match=r"IMAGE: missing \(model 'mm-high' requires IMAGE besides the prompt, and "
                                         r"/v1/completions carries a text prompt only"):
        upstream_body(request, MM_INPUTS)
    optional = (PROMPT, InputSpec("IMAGE", "TYPE_FP32", optional=True, dims=(64,)))
    assert orjson.loads(upstream_body(parse_completion_request(b'{"model":"m","prompt":"x"}'), optional)) == {
        "PROMPT": "x"}


async def test_a_bad_body_for_the_scorer_is_the_requests_400_not_a_fallback() -> None:
    stage = config().stages[0]

    async def refuses(model: str, prompt: str) -> float:
        raise BadRequest("IMAGE: must hold 64 values")

    with pytest.raises(BadRequest, match="IMAGE"):
        await choose(stage, "+3=", refuses, "r")

    async def answers(model: str, prompt: str) -> float:
        return 0.9

    assert await choose(stage, "+3=", answers, "r") == Choice("answer", "mm-high", Route.PREROUTED, 0.9)


# --- the endpoints against mock upstreams ---------------------------------------------------------

UP = "http://replica:8000"
SCORER_UP = "http://scorer-replica:8000"
MODEL_CONFIG = {"max_batch_size": 0, "input": [
    {"name": "IMAGE", "data_type": "TYPE_FP32", "dims": [64]}, {"name": "PROMPT", "data_type": "TYPE_STRING",
                                                                "dims": [1]},
    {"name": "MAX_TOKENS", "data_type": "TYPE_INT32", "dims": [1], "optional": True}]}
SCORER_CONFIG = {"max_batch_size": 64, "input": [{"name": "IMAGE", "data_type": "TYPE_FP32", "dims": [64]},
                                                 {"name": "PROMPT", "data_type": "TYPE_STRING", "dims": [1]}]}


def config(threshold: float = 0.5) -> RouterConfig:
    cascade = {"light": "mm-low", "heavy": "mm-high", "router": "prompt", "threshold": threshold,
               "preRouteThreshold": threshold, "scorer": "mm-scorer"}
    return parse_config({"pipeline": "mm", "stages": [{"name": "answer", "cascade": cascade}],
                         "upstreams": {"mm-low": [UP], "mm-high": [UP], "mm-scorer": [SCORER_UP]}})


class Upstreams:
    """mm-scorer scoring the image's first pixel, two models streaming their own name as the token."""

    def __init__(self) -> None:
        self.scored: list[dict[str, Any]] = []
        self.generated: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        model, action = request.url.path.split("/")[3], request.url.path.rsplit("/", 1)[-1]
        if action == "config":
            return httpx.Response(200, json=SCORER_CONFIG if model == "mm-scorer" else MODEL_CONFIG)
        body = orjson.loads(request.content)
        if model == "mm-scorer":
            self.scored.append(body)
            image = next(t for t in body["inputs"] if t["name"] == "IMAGE")
            return httpx.Response(200, json={"outputs": [{"name": "SCORE", "datatype": "FP32", "shape": [1, 1],
                                                          "data": [image["data"][0]]}]})
        assert action == "generate_stream", request.url.path
        self.generated.append((model, body))
        events = [{"TOKEN": model[3], "model_name": model}, {"GENERATED": 1, "model_name": model}]
        return httpx.Response(200, stream=_Events([b"data: " + orjson.dumps(e) + b"\n\n" for e in events]),
                              headers={"content-type": "text/event-stream"})


@asynccontextmanager
async def routed(cfg: RouterConfig, upstreams: Upstreams) -> AsyncIterator[tuple[httpx.AsyncClient, RouterApps]]:
    apps = build_router(cfg, transport=httpx.MockTransport(upstreams), registry=CollectorRegistry())
    async with apps.running(), httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.data),
                                                 base_url="http://router") as client:
        yield client, apps


def image(first: float) -> list[float]:
    return [first, *PIXELS[1:]]


async def test_the_image_goes_to_the_scorer_and_the_whole_body_to_the_chosen_model() -> None:
    upstreams = Upstreams()
    async with routed(config(0.5), upstreams) as (client, _):
        for first, model, route in ((0.2, "mm-low", "light"), (0.7, "mm-high", "prerouted")):
            body = {"PROMPT": "+37=", "IMAGE": image(first), "MAX_TOKENS": 3}
            whole = await client.post("/v2/models/mm/generate", json=body)
            assert whole.status_code == 200, whole.text
            assert whole.json() == {"TOKEN": model[3], "GENERATED": 1, "model_name": model}
            assert (whole.headers["x-paretoserve-variant"], whole.headers["x-paretoserve-route"]) == (model, route)
            assert upstreams.generated[-1] == (model, body)  # the model gets the client's body, image included
            async with client.stream("POST", "/v2/models/mm/generate_stream", json=body) as stream:
                events = [line async for line in stream.aiter_lines() if line.startswith("data: ")]
            assert stream.headers["x-paretoserve-variant"] == model and len(events) == 2
        assert len(upstreams.scored) == 4
        assert upstreams.scored[0]["inputs"] == [
            {"name": "PROMPT", "datatype": "BYTES", "shape": [1, 1], "data": ["+37="]},
            {"name": "IMAGE", "datatype": "FP32", "shape": [1, 64], "data": image(0.2)}]


@pytest.mark.parametrize("threshold", [0.0, 0.5])
async def test_a_bad_image_is_a_400_naming_it_before_any_model_runs(threshold: float) -> None:
    upstreams = Upstreams()
    async with routed(config(threshold), upstreams) as (client, apps):
        for path in ("generate", "generate_stream"):
            for bad, words in (([0.5] * 63, "IMAGE: must hold 64 values"), ("x", "IMAGE: must be a finite FP32"),
                               ([1e39] * 64, "IMAGE: must be a finite FP32"), (None, "IMAGE: missing")):
                body: dict[str, Any] = {"PROMPT": "+3="} if bad is None else {"PROMPT": "+3=", "IMAGE": bad}
                answer = await client.post(f"/v2/models/mm/{path}", json=body)
                assert answer.status_code == 400 and answer.json()["reason"] == "bad_request", answer.text
                assert answer.json()["error"].startswith(words) and answer.json()["stage"] == "answer"
        completion = await client.post("/v1/completions", json={"model": "mm", "prompt": "+3=", "stream": True})
        assert completion.status_code == 400 and completion.json()["error"].startswith("IMAGE: missing")
        assert "/v1/completions carries a text prompt only" in completion.json()["error"]
        assert upstreams.scored == [] and upstreams.generated == []
        registry = apps.service.registry
        assert registry.get_sample_value("paretoserve_router_fallbacks_total",
                                         {"pipeline": "mm", "stage": "answer"}) in (None, 0.0)
        assert registry.get_sample_value("paretoserve_pipeline_requests_total", {"pipeline": "mm"}) == 9
