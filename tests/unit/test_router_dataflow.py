"""Agent workflows in the router: stages run as a data flow, branches overlap, inputs join, failures name the node.

The fake model servers answer ``PROBS`` = the first ten values of what they were sent, plus ten times the
model's number, so every join is checkable by value. Concurrency is proven without sleeps: a gated model
waits until ``expect`` calls are in flight at once, which a router that ran the branches one after another
could never reach (the test would time out instead of passing).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from paretoserve.workers.router.app import build_router
from paretoserve.workers.router.config import ConfigError, StageConfig, StageInput, parse_config
from paretoserve.workers.router.dataflow import queue_key, stage_request
from paretoserve.workers.router.edf import EdfAdmission
from paretoserve.workers.router.errors import BadRequest
from paretoserve.workers.router.protocol import parse_infer_request

HOST = "http://10.0.0.1:8000"
MODELS = {"triage": 1, "left": 2, "right": 3, "judge": 4}


class FlowTriton:
    """Records every call's model and input; ``gated`` models wait until ``expect`` calls are in flight."""

    def __init__(self, gated: set[str] | None = None, expect: int = 0, failing: str | None = None) -> None:
        self.gated = gated or set()
        self.expect = expect
        self.failing = failing
        self.in_flight = 0
        self.most_in_flight = 0
        self.enough = asyncio.Event()
        self.inputs: dict[str, list[list[float]]] = {}
        self.cancelled: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        model = request.url.path.split("/")[3]
        body = json.loads(request.content)
        tensor = body["inputs"][0]
        rows = tensor["shape"][0]
        width = len(tensor["data"]) // rows
        self.inputs[model] = [tensor["data"][r * width:(r + 1) * width] for r in range(rows)]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight >= self.expect:
            self.enough.set()
        try:
            if model in self.gated:
                await self.enough.wait()
            if model == self.failing:
                return httpx.Response(500, json={"error": f"{model} crashed"})
            if model == "slow":
                await asyncio.Event().wait()  # never answers: only a cancellation ends it
        except asyncio.CancelledError:
            self.cancelled.append(model)
            raise
        finally:
            self.in_flight -= 1
        offset = 10.0 * MODELS.get(model, 9)
        probs = [v + offset for row in self.inputs[model] for v in (row + [0.0] * 10)[:10]]
        return httpx.Response(200, json={"model_name": model, "outputs": [
            {"name": "PROBS", "datatype": "FP32", "shape": [rows, 10], "data": probs},
            {"name": "LABEL", "datatype": "INT64", "shape": [rows, 1], "data": [MODELS.get(model, 9)] * rows}]})


def diamond(**extra: Any) -> dict[str, Any]:
    """triage -> {left, right} -> judge; judge reads right's then left's PROBS."""
    return {"pipeline": "flow", "upstreams": {m: [HOST] for m in (*MODELS, "slow")}, "stages": [
        {"name": "triage", "variants": {"triage": 1}, "latencyMs": 1.0},
        {"name": "left", "dependsOn": ["triage"], "inputs": ["$request", "triage"], "variants": {"left": 1},
         "latencyMs": 2.0},
        {"name": "right", "dependsOn": ["triage"], "variants": {"right": 1}, "latencyMs": 30.0},
        {"name": "judge", "dependsOn": ["left", "right"], "inputs": ["right", "left.PROBS"],
         "variants": {"judge": 1}, "latencyMs": 4.0},
    ], **extra}


@asynccontextmanager
async def serving(raw: dict[str, Any], fake: FlowTriton) -> AsyncIterator[httpx.AsyncClient]:
    apps = build_router(parse_config(raw), transport=httpx.MockTransport(fake), registry=CollectorRegistry(),
                        admin_token="t")
    async with apps.running(), httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.data),
                                                 base_url="http://router") as client:
        yield client


def body(*rows: list[float]) -> dict[str, Any]:
    return {"inputs": [{"name": "IMAGE", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                        "data": [v for row in rows for v in row]}]}


async def test_branches_run_concurrently_and_the_join_reads_the_declared_outputs_in_order() -> None:
    fake = FlowTriton(gated={"left", "right"}, expect=2)  # left and right must be in flight together
    async with serving(diamond(), fake) as client:
        answer = await asyncio.wait_for(client.post("/v2/pipelines/flow/infer", json=body([1, 2, 3, 4])), 10)

    assert answer.status_code == 200, answer.text
    assert fake.most_in_flight == 2
    request_row = [1.0, 2.0, 3.0, 4.0]
    triage = [v + 10 for v in request_row] + [10.0] * 6  # the fake pads its input to ten values
    assert fake.inputs["triage"] == [request_row]
    assert fake.inputs["left"] == [request_row + triage]  # $request, then triage's PROBS
    assert fake.inputs["right"] == [request_row]  # the default input: the request itself
    left = [v + 20 for v in (request_row + triage)[:10]]
    right = [v + 30 for v in request_row] + [30.0] * 6
    assert fake.inputs["judge"] == [right + left]  # the declared order: right, then left.PROBS
    parameters = answer.json()["parameters"]
    assert parameters["stage"] == "judge" and parameters["models"] == "judge"
    nodes = json.loads(parameters["nodes"])
    assert set(nodes) == set(MODELS)
    assert nodes["left"][0] >= nodes["triage"][1] and nodes["right"][0] >= nodes["triage"][1]
    assert nodes["judge"][0] >= max(nodes["left"][1], nodes["right"][1])
    assert nodes["left"][0] < nodes["right"][1] and nodes["right"][0] < nodes["left"][1]  # the spans overlap
    assert parameters["end_to_end_ms"] >= nodes["judge"][1]


async def test_a_failed_node_is_named_and_the_branches_still_running_are_cancelled() -> None:
    raw = diamond()
    raw["stages"][2]["variants"] = {"slow": 1}  # right never answers
    fake = FlowTriton(gated={"left"}, expect=2, failing="left")
    async with serving(raw, fake) as client:
        answer = await asyncio.wait_for(client.post("/v2/pipelines/flow/infer", json=body([1, 2, 3, 4])), 10)

    assert answer.status_code == 503  # every replica of left failed: upstream_unavailable
    error = answer.json()
    assert error["stage"] == "left" and "left" in error["error"]
    assert fake.cancelled == ["slow"]
    assert "judge" not in fake.inputs


async def test_a_chain_still_runs_on_the_request_and_answers_with_the_last_stage() -> None:
    raw = {"pipeline": "flow", "upstreams": {m: [HOST] for m in MODELS}, "stages": [
        {"name": "a", "variants": {"triage": 1}}, {"name": "b", "dependsOn": ["a"], "variants": {"right": 1}}]}
    fake = FlowTriton()
    async with serving(raw, fake) as client:
        answer = await client.post("/v2/pipelines/flow/infer", json=body([1, 2, 3, 4], [5, 6, 7, 8]))
    assert answer.status_code == 200
    assert fake.inputs["right"] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert answer.json()["parameters"]["stages"] == "a=triage,b=right"


def test_stage_request_concatenates_per_row_and_refuses_a_request_without_a_numeric_input() -> None:
    stage = StageConfig("j", ("p",), (("m", 1.0),), inputs=(StageInput(), StageInput("p", "OUT")))
    request = parse_infer_request(json.dumps(body([1, 2], [3, 4])).encode())
    answers = {"p": {"outputs": [{"name": "OUT", "datatype": "FP32", "shape": [2, 1], "data": [9.0, 8.0]}]}}
    built = stage_request(stage, request, answers, {"p": "m"})
    assert built.batch == 2
    assert built.message["inputs"][0]["shape"] == [2, 3]
    assert built.message["inputs"][0]["data"] == [1, 2, 9.0, 3, 4, 8.0]
    words = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["hi"]}]}
    with pytest.raises(BadRequest, match="must be numeric"):
        stage_request(stage, parse_infer_request(json.dumps(words).encode()), answers, {"p": "m"})


def test_inputs_must_read_parents_and_slack_puts_the_longest_path_ahead_first() -> None:
    with pytest.raises(ConfigError, match=r"stages\[1\]\.inputs\[1\]"):
        parse_config({**diamond(), "stages": [diamond()["stages"][0],
                                              {"name": "x", "variants": {"left": 1}, "inputs": ["$request", "y"]}]})
    config = parse_config(diamond())
    # ahead = own latency + the longest path after: triage 1 + right 30 + judge 4
    assert dict(config.ahead_ms) == {"triage": 35.0, "left": 6.0, "right": 34.0, "judge": 4.0}
    # slack: right's calls (34 ms still ahead) go before left's (6 ms) of a request with the same deadline
    assert queue_key(config, "right", 10.0, 9.0) == pytest.approx(10.0 - 0.034)
    assert queue_key(config, "right", 10.0, 9.0) < queue_key(config, "left", 10.0, 9.0)  # type: ignore[operator]
    fifo = parse_config(diamond(queue={"order": "fifo"}))
    deadline = parse_config(diamond(queue={"order": "deadline"}))
    assert queue_key(fifo, "right", 10.0, 9.0) is None and queue_key(deadline, "right", 10.0, 9.0) == 10.0
    with pytest.raises(ConfigError, match="queue.order"):
        parse_config(diamond(queue={"order": "random"}))


async def test_least_slack_first_admits_the_call_with_the_longest_path_ahead() -> None:
    admission = EdfAdmission(concurrency=1, max_size=8, clock=lambda: 0.0)
    await admission.acquire(100.0)  # hold the only slot
    order: list[str] = []

    async def call(name: str, key: float) -> None:
        await admission.acquire(100.0, key)
        order.append(name)
        admission.release()

    config = parse_config(diamond())
    tasks = [asyncio.create_task(call(name, queue_key(config, name, 100.0, 0.0) or 0.0))
             for name in ("left", "judge", "right")]
    await asyncio.sleep(0)
    admission.release()
    await asyncio.gather(*tasks)
    assert order == ["right", "left", "judge"]
