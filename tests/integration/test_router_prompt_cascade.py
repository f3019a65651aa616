"""The query-aware split applied per request, against the REAL Triton serving arith-small, arith-large and the
prompt scorer arith-scorer (the session's ``llm_triton_url``).

The router's config is what the operator renders for ``manifests/examples/arith-llm.yaml`` (a ``router: prompt``
cascade with ``scorerModel: arith-scorer``); requests name the pipeline. Covers: the served scorer is the fit the
manifest's rows were measured with (its scores reproduce every row's heavy share on the 2,000 test prompts,
Triton's FP32 ``SCORE`` equals the offline score, and the cached weights equal a fit computed afresh); each prompt
scored at or above the threshold is answered by arith-large and every other by arith-small, token for token as
each engine's offline greedy answer, on ``generate``, ``generate_stream`` and ``/v1/completions``; threshold 0
sends every prompt to arith-large and 1 none (no prompt scores 1); a threshold pushed through the admin API
applies to the next request; a scorer that is unreachable or that Triton does not serve sends every prompt to
arith-large (200, counted as fallbacks).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from paretoserve.planner.spec import ServingPipelineSpec, load_pipeline_text
from paretoserve.workers.llm.cache import CachedScorer, LLMCatalog, ensure_scorer
from paretoserve.workers.llm.engine import NumpyLM
from paretoserve.workers.llm.routing import SCORER_TRAIN_PROMPTS, DifficultyScore, fit_scorer
from paretoserve.workers.llm.scorer import SCORER_MODEL
from paretoserve.workers.llm.tasks import make_splits
from paretoserve.workers.llm.tokenizer import decode, encode_prompt
from paretoserve.workers.plan_rendering import router_config
from paretoserve.workers.router.app import build_router
from paretoserve.workers.router.config import RouterConfig, parse_config

pytestmark = [pytest.mark.triton, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "arith-llm.yaml"
PIPELINE = "arith-llm"
LIGHT, HEAVY = "arith-small", "arith-large"
TOKEN = "test-admin-token"
PROMPTS = 40


@pytest.fixture(scope="module")
def spec() -> ServingPipelineSpec:
    return load_pipeline_text(EXAMPLE.read_text()).spec


@pytest.fixture(scope="module")
def score(llm_scorer: CachedScorer) -> DifficultyScore:
    return llm_scorer.score()


@pytest.fixture(scope="module")
def engines(llm_catalog: LLMCatalog) -> dict[str, NumpyLM]:
    return {model: llm_catalog.engine(model) for model in (LIGHT, HEAVY)}


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return [problem.prompt for problem in make_splits().test[:PROMPTS]]


def served(score: DifficultyScore, prompt: str) -> float:
    """The score as the router reads it: Triton's FP32 ``SCORE``."""
    return float(np.float32(score(prompt)))


def between(values: Sequence[float], near: float) -> float:
    """A threshold halfway between two neighbouring distinct ``values`` near ``near``: no score lies within
    rounding of it, so the expected decisions cannot flip on the last bit."""
    distinct = sorted(set(values))
    i = min(range(1, len(distinct)), key=lambda k: abs(distinct[k] - near))
    return (distinct[i - 1] + distinct[i]) / 2


def offline(engine: NumpyLM, prompt: str, max_tokens: int = 5) -> str:
    return decode(engine.generate([encode_prompt(prompt)], max_tokens)[0])


def rendered(spec: ServingPipelineSpec, url: str, **overrides: Any) -> RouterConfig:
    """The router config the operator renders for the example before its first plan, upstreams at ``url``."""
    upstreams = {LIGHT: [url], HEAVY: [url], SCORER_MODEL: [url]}
    raw = router_config(PIPELINE, spec, upstreams, None)
    cascade = raw["stages"][0]["cascade"]
    if "scorer" in overrides:
        cascade["scorer"] = overrides["scorer"]
        raw["upstreams"][overrides["scorer"]] = [overrides.get("scorer_url", url)]
    return parse_config(raw)


@asynccontextmanager
async def routed(config: RouterConfig) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient,
                                                                CollectorRegistry]]:
    """The router in process with its real upstream transport: (data client, admin client, metrics)."""
    registry = CollectorRegistry()
    apps = build_router(config, registry=registry, admin_token=TOKEN)
    async with apps.running(), \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.data), base_url="http://router",
                              timeout=60.0) as client, \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.admin), base_url="http://admin",
                              headers={"authorization": f"Bearer {TOKEN}"}) as admin:
        yield client, admin, registry


async def push(admin: httpx.AsyncClient, threshold: float) -> None:
    """What the operator pushes when a plan picks a row: the stage's live cascade settings."""
    answer = await admin.post("/admin/config", json={"stages": [
        {"name": "answer", "cascade": {"threshold": threshold, "preRouteThreshold": threshold}}]})
    assert answer.status_code == 200, answer.text


async def generate(client: httpx.AsyncClient, prompt: str) -> tuple[str, str, str]:
    """(the model that answered, how it was chosen, the answer's text) for ``prompt`` sent to the pipeline."""
    answer = await client.post(f"/v2/models/{PIPELINE}/generate", json={"PROMPT": prompt})
    assert answer.status_code == 200, (prompt, answer.text)
    body = answer.json()
    tokens = body.get("TOKEN", [])
    variant = answer.headers["x-paretoserve-variant"]
    assert body["model_name"] == variant  # the model's own events name it too
    return variant, answer.headers["x-paretoserve-route"], "".join([tokens] if isinstance(tokens, str) else tokens)


def routed_rows(registry: CollectorRegistry, model: str, route: str) -> float:
    labels = {"pipeline": PIPELINE, "stage": "answer", "model": model, "route": route}
    return registry.get_sample_value("paretoserve_router_requests_total", labels) or 0.0


async def test_the_served_scorer_is_the_fit_the_planned_rows_were_measured_with(
        llm_triton_url: str, spec: ServingPipelineSpec, score: DifficultyScore) -> None:
    cascade = spec.stages[0].cascade
    assert cascade is not None and cascade.scorer_model == SCORER_MODEL
    scores = np.array([score(problem.prompt) for problem in make_splits().test])
    for row in cascade.rows:
        assert row.prompt_threshold is not None
        assert round(float((scores >= row.prompt_threshold).mean()), 4) == row.heavy_fraction, row
    prompts = [problem.prompt for problem in make_splits().test[:32]]
    request = {"inputs": [{"name": "PROMPT", "datatype": "BYTES", "shape": [len(prompts), 1], "data": prompts}]}
    async with httpx.AsyncClient(base_url=llm_triton_url, timeout=60.0) as triton:
        answer = await triton.post(f"/v2/models/{SCORER_MODEL}/infer", json=request)
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        assert (output["name"], output["datatype"], output["shape"]) == ("SCORE", "FP32", [len(prompts), 1])
        assert output["data"] == pytest.approx([score(p) for p in prompts], rel=1e-6)
        refused = await triton.post(f"/v2/models/{SCORER_MODEL}/infer", json={"inputs": [
            {"name": "PROMPT", "datatype": "BYTES", "shape": [1, 1], "data": ["hello"]}]})
        assert refused.status_code == 400 and "not an arithmetic prompt" in refused.json()["error"]


def test_the_cached_scorer_is_the_fit_computed_afresh(llm_catalog: LLMCatalog, llm_scorer: CachedScorer) -> None:
    again = ensure_scorer()
    assert not again.trained and again.directory == llm_scorer.directory
    light = llm_scorer.metadata["light"]
    train = make_splits().train[:SCORER_TRAIN_PROMPTS]
    fresh = fit_scorer(llm_catalog.engine(light), train, int(llm_catalog.metadata[light]["max_new_tokens"]))
    assert fresh == again.score()  # deterministic: every worker image serves the weights the rows were measured with


async def test_each_prompt_is_answered_by_the_model_its_score_chooses(
        llm_triton_url: str, spec: ServingPipelineSpec, score: DifficultyScore, engines: dict[str, NumpyLM],
        prompts: list[str]) -> None:
    threshold = between([served(score, p) for p in prompts], 0.7)
    expected = {p: HEAVY if served(score, p) >= threshold else LIGHT for p in prompts}
    assert set(expected.values()) == {LIGHT, HEAVY}
    answers = {model: {p: offline(engine, p) for p in prompts} for model, engine in engines.items()}
    assert any(answers[LIGHT][p] != answers[HEAVY][p] for p in prompts)  # the text itself tells the models apart
    async with routed(rendered(spec, llm_triton_url)) as (client, admin, registry):
        await push(admin, threshold)
        for prompt in prompts:
            variant, route, text = await generate(client, prompt)
            assert variant == expected[prompt], (prompt, served(score, prompt), threshold)
            assert route == ("prerouted" if variant == HEAVY else "light")
            assert text == answers[variant][prompt], prompt
        heavy = sum(model == HEAVY for model in expected.values())
        assert routed_rows(registry, HEAVY, "prerouted") == heavy
        assert routed_rows(registry, LIGHT, "light") == len(prompts) - heavy
        for model in (LIGHT, HEAVY):  # the streaming endpoints route the same way
            prompt = next(p for p in prompts if expected[p] == model)
            completion = await client.post("/v1/completions", json={"model": PIPELINE, "prompt": prompt})
            assert completion.status_code == 200, completion.text
            assert completion.headers["x-paretoserve-variant"] == model and completion.json()["model"] == PIPELINE
            assert completion.json()["choices"][0]["text"] == answers[model][prompt]
            async with client.stream("POST", f"/v2/models/{PIPELINE}/generate_stream",
                                     json={"PROMPT": prompt}) as stream:
                events = [orjson.loads(line[6:]) async for line in stream.aiter_lines() if line.startswith("data: ")]
            assert stream.headers["x-paretoserve-variant"] == model
            assert "".join(e["TOKEN"] for e in events if "TOKEN" in e) == answers[model][prompt]
            assert {e["model_name"] for e in events} == {model}


async def test_threshold_zero_sends_every_prompt_to_large_one_none_and_a_push_applies_at_once(
        llm_triton_url: str, spec: ServingPipelineSpec, score: DifficultyScore, prompts: list[str]) -> None:
    assert max(score(p) for p in prompts) < 1.0
    async with routed(rendered(spec, llm_triton_url)) as (client, admin, _):
        # before a plan the operator renders the best row: all of the example's quality, threshold 0
        assert [(await generate(client, p))[0] for p in prompts] == [HEAVY] * len(prompts)
        await push(admin, 1.0)
        assert [(await generate(client, p))[0] for p in prompts] == [LIGHT] * len(prompts)
        threshold = between([served(score, p) for p in prompts], 0.5)
        await push(admin, threshold)
        assert [(await generate(client, p))[0] for p in prompts] == [
            HEAVY if served(score, p) >= threshold else LIGHT for p in prompts]
        await push(admin, 0.0)
        assert [(await generate(client, p))[0] for p in prompts[:5]] == [HEAVY] * 5


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("failure", ["unreachable", "not-served"])
async def test_a_failing_scorer_sends_every_prompt_to_large(
        llm_triton_url: str, spec: ServingPipelineSpec, engines: dict[str, NumpyLM], prompts: list[str],
        failure: str) -> None:
    broken = (rendered(spec, llm_triton_url, scorer=SCORER_MODEL, scorer_url=f"http://127.0.0.1:{_closed_port()}")
              if failure == "unreachable" else rendered(spec, llm_triton_url, scorer="arith-scorer-gone"))
    async with routed(broken) as (client, admin, registry):
        await push(admin, 1.0)  # a working scorer would send every prompt to arith-small
        for prompt in prompts[:6]:
            variant, route, text = await generate(client, prompt)
            assert (variant, route) == (HEAVY, "fallback")
            assert text == offline(engines[HEAVY], prompt)
        labels = {"pipeline": PIPELINE, "stage": "answer"}
        assert registry.get_sample_value("paretoserve_router_fallbacks_total", labels) == 6
        assert routed_rows(registry, HEAVY, "fallback") == 6 and routed_rows(registry, LIGHT, "light") == 0
