"""The multimodal family's query-aware split applied per request, against the REAL Triton serving mm-low, mm-high
and their scorer mm-scorer (the session's ``mm_triton_url``).

The router's config is what the operator renders for ``manifests/examples/mm-llm.yaml`` (a ``router: prompt``
cascade with ``scorerModel: mm-scorer``); requests name the pipeline and carry the image in the generate body
(``{"PROMPT": "+37=", "IMAGE": [64 floats]}``). Covers: the served scorer is the fit the manifest's rows were
measured with (its scores reproduce every row's share sent to mm-high on the 1,350 test problems, Triton's FP32
``SCORE`` equals the offline score, the cached weights equal a fit computed afresh) and a bad ``IMAGE`` fails only
its own request with a 400 naming ``IMAGE``; each request scored at or above the threshold is answered by mm-high
and every other by mm-low, token for token as each engine's offline greedy answer, on ``generate`` and
``generate_stream``; threshold 0 sends every request to mm-high and 1 none, and a threshold pushed through the
admin API applies to the next request; a scorer that is unreachable or that Triton does not serve sends every
request to mm-high (200, counted as fallbacks); a bad ``IMAGE`` through the router (wrong length, type, nesting,
out of FP32's range, missing) is the router's own 400 naming ``IMAGE`` before any model or scorer runs, and a
completion (text only) to this pipeline is a 400 naming the missing ``IMAGE``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from paretoserve.planner.spec import ServingPipelineSpec, load_pipeline_text
from paretoserve.workers.llm.cache import CachedMMScorer, ensure_mm_scorer
from paretoserve.workers.llm.mm_engine import MultimodalEngine
from paretoserve.workers.llm.mm_routing import SCORER_TRAIN_PROBLEMS, MultimodalDifficulty, fit_mm_scorer
from paretoserve.workers.llm.multimodal import MultimodalCatalog, VisualProblem, make_multimodal_splits
from paretoserve.workers.llm.scorer import MM_SCORER_MODEL
from paretoserve.workers.llm.tokenizer import decode, encode_prompt
from paretoserve.workers.plan_rendering import router_config
from paretoserve.workers.router.config import RouterConfig, parse_config
from tests.integration.test_router_prompt_cascade import _closed_port, between, push, routed

pytestmark = [pytest.mark.triton, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "mm-llm.yaml"
PIPELINE = "mm-llm"
LOW, HIGH = "mm-low", "mm-high"
PROBLEMS = 40
MAX_NEW = 4


class Request:
    """One multimodal request: the question and the image's 64 pixel values (float32, as JSON floats)."""

    def __init__(self, problem: VisualProblem, pixels: np.ndarray[Any, Any]) -> None:
        self.question = problem.prompt
        self.image = np.asarray(pixels, dtype=np.float32).reshape(-1)

    def body(self, **extra: object) -> dict[str, object]:
        return {"PROMPT": self.question, "IMAGE": self.image.tolist(), **extra}


@pytest.fixture(scope="module")
def spec() -> ServingPipelineSpec:
    return load_pipeline_text(EXAMPLE.read_text()).spec


@pytest.fixture(scope="module")
def score(mm_scorer: CachedMMScorer) -> MultimodalDifficulty:
    return mm_scorer.score()


@pytest.fixture(scope="module")
def engines(multimodal_catalog: MultimodalCatalog) -> dict[str, MultimodalEngine]:
    assert all(multimodal_catalog.metadata[m]["max_new_tokens"] == MAX_NEW for m in (LOW, HIGH))
    return {model: multimodal_catalog.engine(model) for model in (LOW, HIGH)}


@pytest.fixture(scope="module")
def requests() -> list[Request]:
    splits = make_multimodal_splits()
    problems = splits.test[:PROBLEMS]
    return [Request(problem, pixels) for problem, pixels in zip(problems, splits.pixels(problems), strict=True)]


def served(score: MultimodalDifficulty, request: Request) -> float:
    """The score as the router reads it: Triton's FP32 ``SCORE``."""
    return float(np.float32(score(request.image, request.question)))


def offline(engine: MultimodalEngine, request: Request) -> str:
    return decode(engine.generate_multimodal([request.image], [encode_prompt(request.question)], MAX_NEW)[0])


def rendered(spec: ServingPipelineSpec, url: str, **overrides: Any) -> RouterConfig:
    """The router config the operator renders for the example before its first plan, upstreams at ``url``."""
    raw = router_config(PIPELINE, spec, {LOW: [url], HIGH: [url], MM_SCORER_MODEL: [url]}, None)
    cascade = raw["stages"][0]["cascade"]
    assert cascade["scorer"] == MM_SCORER_MODEL
    if "scorer" in overrides:
        cascade["scorer"] = overrides["scorer"]
        raw["upstreams"][overrides["scorer"]] = [overrides.get("scorer_url", url)]
    return parse_config(raw)


async def generate(client: httpx.AsyncClient, request: Request) -> tuple[str, str, str]:
    """(the model that answered, how it was chosen, the answer's text) for ``request`` sent to the pipeline."""
    answer = await client.post(f"/v2/models/{PIPELINE}/generate", json=request.body())
    assert answer.status_code == 200, (request.question, answer.text)
    body = answer.json()
    tokens = body.get("TOKEN", [])
    variant = answer.headers["x-paretoserve-variant"]
    assert body["model_name"] == variant
    return variant, answer.headers["x-paretoserve-route"], "".join([tokens] if isinstance(tokens, str) else tokens)


def routed_rows(registry: CollectorRegistry, model: str, route: str) -> float:
    labels = {"pipeline": PIPELINE, "stage": "answer", "model": model, "route": route}
    return registry.get_sample_value("paretoserve_router_requests_total", labels) or 0.0


def scorer_calls(registry: CollectorRegistry) -> float:
    labels = {"pipeline": PIPELINE, "stage": "answer", "model": MM_SCORER_MODEL}
    return registry.get_sample_value("paretoserve_router_request_duration_seconds_count", labels) or 0.0


def scorer_request(images: Sequence[Sequence[float]], questions: Sequence[str]) -> dict[str, Any]:
    """A KServe v2 ``infer`` request of ``len(questions)`` rows for mm-scorer."""
    rows = len(questions)
    width = len(images[0]) if images else 0
    return {"inputs": [
        {"name": "IMAGE", "datatype": "FP32", "shape": [rows, width], "data": [v for image in images for v in image]},
        {"name": "PROMPT", "datatype": "BYTES", "shape": [rows, 1], "data": list(questions)}]}


async def test_the_served_scorer_is_the_fit_the_planned_rows_were_measured_with(
        mm_triton_url: str, spec: ServingPipelineSpec, score: MultimodalDifficulty, requests: list[Request]) -> None:
    cascade = spec.stages[0].cascade
    assert cascade is not None and cascade.scorer_model == MM_SCORER_MODEL
    splits = make_multimodal_splits()
    scores = np.array(score.scores(list(splits.pixels(splits.test)), [p.prompt for p in splits.test]))
    for row in cascade.rows:
        assert row.prompt_threshold is not None
        assert round(float((scores >= row.prompt_threshold).mean()), 4) == row.heavy_fraction, row
    batch = requests[:32]
    async with httpx.AsyncClient(base_url=mm_triton_url, timeout=60.0) as triton:
        answer = await triton.post(f"/v2/models/{MM_SCORER_MODEL}/infer", json=scorer_request(
            [r.image.tolist() for r in batch], [r.question for r in batch]))
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        assert (output["name"], output["datatype"], output["shape"]) == ("SCORE", "FP32", [len(batch), 1])
        assert output["data"] == pytest.approx([served(score, r) for r in batch], rel=1e-6)

        # a bad IMAGE fails only its own request, with a 400 naming IMAGE; the requests around it are answered
        good = requests[:8]
        bad = scorer_request([[1e39] * 64], ["+3="])  # FP32 infinity: non-finite pixels
        answers = await asyncio.gather(
            *(triton.post(f"/v2/models/{MM_SCORER_MODEL}/infer", json=scorer_request([r.image.tolist()], [r.question]))
              for r in good[:4]),
            triton.post(f"/v2/models/{MM_SCORER_MODEL}/infer", json=bad),
            *(triton.post(f"/v2/models/{MM_SCORER_MODEL}/infer", json=scorer_request([r.image.tolist()], [r.question]))
              for r in good[4:]))
        refused = answers.pop(4)
        assert refused.status_code == 400 and "IMAGE holds non-finite values" in refused.json()["error"]
        assert [a.status_code for a in answers] == [200] * len(good)
        assert [a.json()["outputs"][0]["data"][0] for a in answers] == pytest.approx([served(score, r) for r in good],
                                                                                     rel=1e-6)
        short = await triton.post(f"/v2/models/{MM_SCORER_MODEL}/infer", json=scorer_request([[0.5] * 63], ["+3="]))
        assert short.status_code == 400 and "'IMAGE'" in short.json()["error"]


def test_the_cached_scorer_is_the_fit_computed_afresh(multimodal_catalog: MultimodalCatalog,
                                                      mm_scorer: CachedMMScorer) -> None:
    again = ensure_mm_scorer()
    assert not again.trained and again.directory == mm_scorer.directory
    light = str(mm_scorer.metadata["light"])
    splits = make_multimodal_splits()
    train = splits.train[:SCORER_TRAIN_PROBLEMS]
    fresh = fit_mm_scorer(multimodal_catalog.engine(light), list(splits.pixels(train)), [p.prompt for p in train],
                          [p.answer for p in train], int(multimodal_catalog.metadata[light]["max_new_tokens"]))
    assert fresh == again.score()  # deterministic: every worker image serves the weights the rows were measured with


async def test_each_request_is_answered_by_the_model_its_score_chooses(
        mm_triton_url: str, spec: ServingPipelineSpec, score: MultimodalDifficulty,
        engines: dict[str, MultimodalEngine], requests: list[Request]) -> None:
    threshold = between([served(score, r) for r in requests], 0.6)
    expected = [HIGH if served(score, r) >= threshold else LOW for r in requests]
    assert set(expected) == {LOW, HIGH}
    answers = {model: [offline(engine, r) for r in requests] for model, engine in engines.items()}
    assert any(a != b for a, b in zip(answers[LOW], answers[HIGH], strict=True))  # the text tells the models apart
    async with routed(rendered(spec, mm_triton_url)) as (client, admin, registry):
        await push(admin, threshold)
        for i, request in enumerate(requests):
            variant, route, text = await generate(client, request)
            assert variant == expected[i], (request.question, served(score, request))
            assert route == ("prerouted" if variant == HIGH else "light")
            assert text == answers[variant][i], request.question
        high = expected.count(HIGH)
        assert routed_rows(registry, HIGH, "prerouted") == high
        assert routed_rows(registry, LOW, "light") == len(requests) - high
        assert scorer_calls(registry) == len(requests)
        for model in (LOW, HIGH):  # the stream routes the same way and relays the model's tokens
            i = expected.index(model)
            async with client.stream("POST", f"/v2/models/{PIPELINE}/generate_stream",
                                     json=requests[i].body()) as stream:
                assert stream.status_code == 200
                events = [orjson.loads(line[6:]) async for line in stream.aiter_lines() if line.startswith("data: ")]
            assert stream.headers["x-paretoserve-variant"] == model
            assert "".join(e["TOKEN"] for e in events if "TOKEN" in e) == answers[model][i]
            assert {e["model_name"] for e in events} == {model}


async def test_threshold_zero_sends_every_request_to_high_one_none_and_a_push_applies_at_once(
        mm_triton_url: str, spec: ServingPipelineSpec, score: MultimodalDifficulty, requests: list[Request]) -> None:
    assert max(served(score, r) for r in requests) < 1.0
    async with routed(rendered(spec, mm_triton_url)) as (client, admin, registry):
        # before a plan the operator renders the best row: all of the example's quality, threshold 0
        assert [(await generate(client, r))[0] for r in requests] == [HIGH] * len(requests)
        assert scorer_calls(registry) == 0  # every score is >= 0: nobody asked
        await push(admin, 1.0)
        assert [(await generate(client, r))[0] for r in requests] == [LOW] * len(requests)
        row = spec.stages[0].cascade.rows[5] if spec.stages[0].cascade is not None else None
        assert row is not None and row.prompt_threshold is not None  # the manifest's 60 % row
        threshold = between([served(score, r) for r in requests], row.prompt_threshold)
        await push(admin, threshold)
        assert [(await generate(client, r))[0] for r in requests] == [
            HIGH if served(score, r) >= threshold else LOW for r in requests]
        await push(admin, 0.0)
        assert [(await generate(client, r))[0] for r in requests[:5]] == [HIGH] * 5


@pytest.mark.parametrize("failure", ["unreachable", "not-served"])
async def test_a_failing_scorer_sends_every_request_to_high(
        mm_triton_url: str, spec: ServingPipelineSpec, engines: dict[str, MultimodalEngine], requests: list[Request],
        failure: str) -> None:
    broken = (rendered(spec, mm_triton_url, scorer=MM_SCORER_MODEL,
                       scorer_url=f"http://127.0.0.1:{_closed_port()}")
              if failure == "unreachable" else rendered(spec, mm_triton_url, scorer="mm-scorer-gone"))
    async with routed(broken) as (client, admin, registry):
        await push(admin, 1.0)  # a working scorer would send every request to mm-low
        for request in requests[:6]:
            variant, route, text = await generate(client, request)
            assert (variant, route) == (HIGH, "fallback")
            assert text == offline(engines[HIGH], request)
        labels = {"pipeline": PIPELINE, "stage": "answer"}
        assert registry.get_sample_value("paretoserve_router_fallbacks_total", labels) == 6
        assert routed_rows(registry, HIGH, "fallback") == 6 and routed_rows(registry, LOW, "light") == 0


BAD_IMAGES: list[tuple[str, object, str]] = [
    ("short", [0.5] * 63, "IMAGE: must hold 64 values"),
    ("long", [0.5] * 65, "IMAGE: must hold 64 values"),
    ("strings", ["0.5"] * 64, "IMAGE: must be a finite FP32 number"),
    ("nested", [[0.5] * 64], "IMAGE: must be a finite FP32 number"),
    ("beyond FP32", [1e39] * 64, "IMAGE: must be a finite FP32 number"),
    ("scalar", 0.5, "IMAGE: must hold 64 values"),
]


@pytest.mark.parametrize("threshold", [0.0, 0.5])  # the model's inputs checked, or the scorer's before it is asked
async def test_a_bad_image_is_a_400_naming_it_and_nothing_runs(
        mm_triton_url: str, spec: ServingPipelineSpec, engines: dict[str, MultimodalEngine], requests: list[Request],
        threshold: float) -> None:
    request = requests[0]
    async with routed(rendered(spec, mm_triton_url)) as (client, admin, registry):
        await push(admin, threshold)
        for path in ("generate", "generate_stream"):
            for name, image, words in BAD_IMAGES:
                answer = await client.post(f"/v2/models/{PIPELINE}/{path}", json=request.body(IMAGE=image))
                assert answer.status_code == 400, (path, name, answer.text)
                assert answer.json()["reason"] == "bad_request" and answer.json()["error"].startswith(words), name
            missing = await client.post(f"/v2/models/{PIPELINE}/{path}", json={"PROMPT": request.question})
            assert missing.status_code == 400 and missing.json()["error"].startswith("IMAGE: missing"), missing.text
        completion = await client.post("/v1/completions", json={"model": PIPELINE, "prompt": request.question})
        assert completion.status_code == 400 and completion.json()["error"].startswith("IMAGE: missing")
        assert "/v1/completions carries a text prompt only" in completion.json()["error"]
        direct = await client.post(f"/v2/models/{HIGH}/generate", json=request.body(IMAGE=[0.5] * 63))
        assert direct.status_code == 400 and direct.json()["error"].startswith("IMAGE: must hold 64 values")
        assert scorer_calls(registry) == 0  # the scorer was never asked about a bad image
        assert sum(routed_rows(registry, m, r) for m in (LOW, HIGH) for r in ("light", "prerouted", "fallback")) == 0
        variant, _, text = await generate(client, request)  # and the pipeline still serves good requests
        assert text == offline(engines[variant], request)
