"""`paretoserve up` for a token-generating pipeline, the pure pieces: what each model is, how a plan sets a
generation model (instances, max sequences; always a reload), the scorer kept loaded, the completions load
(seeded held-out prompts, the client's reading of a stream, failures never counted as served) and the summary's
arithmetic (exact match, TTFT/ITL, SLO attainment, share per model)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from paretoserve.planner.model import Allocation, Plan, SolveStatus, StagePlan
from paretoserve.planner.spec import ServingPipeline, SpecError, parse_pipeline
from paretoserve.workers.llm.mm_routing import FEATURES as MM_FEATURES
from paretoserve.workers.llm.mm_routing import MultimodalDifficulty
from paretoserve.workers.llm.multimodal import VisualProblem
from paretoserve.workers.llm.routing import FEATURES, DifficultyScore
from paretoserve.workers.llm.scorer import MM_SCORER_MODEL, SCORER_MODEL, ScorerServingSpec
from paretoserve.workers.llm.serving import LLMServingSpec
from paretoserve.workers.llm.tasks import make_splits
from paretoserve.workers.runtime.actuator import AppliedRecord, LocalLimits, model_settings
from paretoserve.workers.runtime.completions import (
    CompletionRequests,
    GenerateRequests,
    chunk_text,
    draw_problems,
    generate_event,
    generation_slo,
)
from paretoserve.workers.runtime.loadgen import LoadSettings, RequestRecord, replay_requests
from paretoserve.workers.runtime.local import applied_event
from paretoserve.workers.runtime.replay import Target, replayable, requests_for
from paretoserve.workers.runtime.report import format_summary, generation_summary, summarize
from paretoserve.workers.runtime.served import (
    PARAM_INSTANCES,
    GenerationModel,
    ModelSettings,
    ScorerModel,
    change_kind,
    served_config,
    with_settings,
)
from paretoserve.workers.runtime.serving import ModelUse, model_specs, pipeline_models

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "arith-llm.yaml"
MM_EXAMPLE = EXAMPLE.with_name("mm-llm.yaml")
LIGHT, HEAVY = "arith-small", "arith-large"


def example() -> ServingPipeline:
    return parse_pipeline(yaml.safe_load(EXAMPLE.read_text()))


def llm(name: str, sequences: int = 8, instances: int = 1) -> GenerationModel:
    return GenerationModel(LLMServingSpec(name=name, model=name, weights=f"/w/{name}.npz",
                                          max_sequences=sequences), instances)


# --- what each model is -----------------------------------------------------------------------------------------


def test_a_generation_stage_serves_its_variants_as_generation_models_and_its_scorer() -> None:
    uses = pipeline_models(example())
    assert [(u.model, u.kind) for u in uses] == [(LIGHT, "generation"), (HEAVY, "generation"),
                                                 (SCORER_MODEL, "scorer")]
    assert uses[2].path == "spec.stages[0].cascade.scorerModel" and uses[2].light == LIGHT


@dataclass
class FakeLLMs:
    """What `model_specs` reads of a family's catalog (`CachedModels`)."""

    root: Path
    models: tuple[str, ...] = (LIGHT, HEAVY)
    image_size: int | None = None
    """Set: a multimodal family (its models read an ``IMAGE`` of ``image_size``² values)."""

    def model_dir(self, model: str) -> Path:
        folder = self.root / model
        folder.mkdir(parents=True, exist_ok=True)
        metadata: dict[str, Any] = {"model": model, "max_new_tokens": 5}
        if self.image_size is not None:
            metadata |= {"family": "multimodal", "config": {"image_size": self.image_size}}
        (folder / "metadata.json").write_text(json.dumps(metadata))
        return folder


@dataclass
class FakeScorer:
    weights_file: Path


def test_model_specs_resolve_each_kind_and_name_the_field_of_what_resolves_to_nothing(tmp_path: Path) -> None:
    text, images = FakeLLMs(tmp_path), FakeLLMs(tmp_path, ("mm-low", "mm-high"), image_size=8)
    (tmp_path / "text.json").write_text(json.dumps(DifficultyScore((0.0,) * len(FEATURES)).to_json()))
    (tmp_path / "mm.json").write_text(json.dumps(
        MultimodalDifficulty((0.0,) * len(MM_FEATURES)).to_json()))
    asked: list[tuple[str, str]] = []

    def family(model: str) -> Any:
        for catalog in (text, images):
            if model in catalog.models:
                return catalog
        raise LookupError("arith-large, arith-small, mm-high, mm-low")

    def fitted(model: str, light: str) -> Any:
        asked.append((model, light))
        if model not in (SCORER_MODEL, MM_SCORER_MODEL):
            raise LookupError(model)
        return FakeScorer(tmp_path / ("text.json" if model == SCORER_MODEL else "mm.json"))

    uses = pipeline_models(example())
    specs = model_specs(uses, None, max_batch=32, llms=family, scorer=fitted)
    assert specs[HEAVY] == GenerationModel(LLMServingSpec(HEAVY, HEAVY, str((tmp_path / HEAVY / "weights.npz")
                                                                            .resolve()), max_new_tokens=5))
    assert specs[SCORER_MODEL] == ScorerModel(ScorerServingSpec(SCORER_MODEL), tmp_path / "text.json")
    assert asked == [(SCORER_MODEL, LIGHT)]  # the scorer fitted on the cascade's light model
    # the multimodal family: its models take their IMAGE, its scorer reads the image too
    mm = pipeline_models(parse_pipeline(yaml.safe_load(MM_EXAMPLE.read_text())))
    specs = model_specs(mm, None, max_batch=32, llms=family, scorer=fitted)
    assert isinstance(high := specs["mm-high"], GenerationModel) and high.spec.image_values == 64
    assert specs[MM_SCORER_MODEL] == ScorerModel(ScorerServingSpec(MM_SCORER_MODEL, image_values=64),
                                                 tmp_path / "mm.json")
    assert asked[-1] == (MM_SCORER_MODEL, "mm-low")
    unknown = [ModelUse("arith-huge", "spec.stages[0].variants[1].tritonModel", "generation")]
    with pytest.raises(SpecError, match=r"variants\[1\]\.tritonModel: 'arith-huge' is not a token-generating model "
                                        r"trained here \(have: arith-large, arith-small, mm-high, mm-low\)"):
        model_specs(unknown, None, max_batch=32, llms=family)
    foreign = [ModelUse("my-scorer", "spec.stages[0].cascade.scorerModel", "scorer", LIGHT)]
    with pytest.raises(SpecError, match=r"cascade\.scorerModel: 'my-scorer' is not a prompt scorer"):
        model_specs(foreign, None, max_batch=32, scorer=fitted)
    with pytest.raises(SpecError, match=r"'tiny_linear' is neither a cached digits variant"):
        model_specs([ModelUse("tiny_linear", "spec.stages[0].variants[0].tritonModel")], None, max_batch=32)


# --- how a plan sets them ---------------------------------------------------------------------------------------


def generation_plan(threshold: float, *, heavy: tuple[int, int] = (4, 1), light: tuple[int, int] = (1, 0)) -> Plan:
    def alloc(variant: str, batch: int, replicas: int, role: str) -> Allocation:
        return Allocation(variant, batch, 1.0, 1, replicas, 10.0, 12.0, 0.0, role)

    allocations = (alloc(LIGHT, *light, "light"), alloc(HEAVY, *heavy, "heavy"))
    stage = StagePlan("answer", allocations, 0.0, 12.0, 0.7, threshold=threshold, heavy_fraction=0.6, cascade_row=5)
    return Plan(SolveStatus.OPTIMAL, (stage,), cost=1.0, cpu=float(heavy[1] + light[1]))


def test_a_plan_sets_instances_and_max_sequences_and_keeps_the_idle_model_and_the_scorer_loaded() -> None:
    settings = model_settings(example(), generation_plan(0.0, heavy=(4, 3)), LocalLimits(cores=2,
                                                                                          max_instances_per_model=2))
    assert settings[HEAVY] == ModelSettings(HEAVY, instances=2, max_sequences=4, capped=True)
    assert settings[LIGHT] == ModelSettings(LIGHT, instances=1)  # no replica: stays loaded, keeps its B
    assert settings[SCORER_MODEL] == ModelSettings(SCORER_MODEL, instances=1)
    assert settings[HEAVY].batch == 4 and settings[LIGHT].batch is None
    record = AppliedRecord(5.0, generation_plan(0.705), settings, {})
    assert applied_event(record).batch == {HEAVY: 4}  # what the summary lists as "arith-large batch 1 -> 4"


def test_every_change_of_a_generation_model_is_a_reload_that_names_its_instances() -> None:
    running = llm(HEAVY)
    wider = with_settings(running, ModelSettings(HEAVY, instances=2, max_sequences=4))
    assert wider == llm(HEAVY, sequences=4, instances=2)
    assert with_settings(running, ModelSettings(HEAVY, instances=1)) == running  # None keeps B
    assert change_kind(running, running) == "none"
    assert change_kind(running, llm(HEAVY, instances=2)) == "reload"  # never Triton's in-place removal
    config = served_config(llm(HEAVY, sequences=4, instances=3))
    assert config["instance_group"][0]["count"] == 3
    assert config["parameters"][PARAM_INSTANCES] == {"string_value": "3"}
    assert config["parameters"]["max_sequences"] == {"string_value": "4"}
    assert config["model_transaction_policy"] == {"decoupled": True}
    scorer = ScorerModel(ScorerServingSpec(), Path("/s.json"))
    two = with_settings(scorer, ModelSettings(SCORER_MODEL, instances=2))
    assert change_kind(scorer, two) == "instances" and served_config(two)["instance_group"][0]["count"] == 2


# --- the load ---------------------------------------------------------------------------------------------------


def test_prompts_are_drawn_seeded_from_the_held_out_split_each_once_before_any_twice() -> None:
    test = make_splits().test
    drawn = draw_problems(len(test) + 5, seed=3)
    assert drawn == draw_problems(len(test) + 5, seed=3) and drawn != draw_problems(len(test) + 5, seed=4)
    assert sorted(p.prompt for p in drawn[:len(test)]) == sorted(p.prompt for p in test)
    assert draw_problems(0, seed=1) == []
    with pytest.raises(ValueError, match="count"):
        draw_problems(-1, seed=1)


def test_a_chunk_is_a_token_an_error_or_unreadable() -> None:
    assert chunk_text('{"choices": [{"text": "7", "index": 0}]}') == ("7", None)
    assert chunk_text('{"choices": [{"text": "", "finish_reason": "stop"}]}') == ("", None)
    assert chunk_text('{"error": {"message": "boom"}}') == (None, "stream_error")
    for bad in ("not json", "[1]", '{"choices": []}', '{"choices": [{"text": 3}]}'):
        assert chunk_text(bad) == (None, "bad_chunk")


def sse(*texts: str, done: bool = True, error: bool = False) -> bytes:
    chunks = [b"data: " + json.dumps({"choices": [{"text": t, "index": 0}]}).encode() + b"\n\n" for t in texts]
    if error:
        chunks.append(b'data: {"error": {"message": "the model failed"}}\n\n')
    if done:
        chunks.append(b'data: {"choices": [{"text": "", "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n')
    return b"".join(chunks)


def run(handler: Callable[[httpx.Request], httpx.Response], prompts: int = 4) -> tuple[list[RequestRecord],
                                                                                      list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append({"path": request.url.path, "body": json.loads(request.content),
                     "deadline": request.headers.get("x-deadline")})
        return handler(request)

    problems = draw_problems(prompts, seed=0)
    settings = LoadSettings(url="http://router/", pipeline="arith-llm", deadline_header="x-deadline", deadline_ms=50)
    records = asyncio.run(replay_requests(settings, [0.0, 0.01, 0.02, 0.03][:prompts],
                                          CompletionRequests("arith-llm", problems),
                                          transport=httpx.MockTransport(recording)))
    return records, seen


def test_completions_name_the_pipeline_stream_and_are_checked_against_the_answer() -> None:
    answers = {p.prompt: p.answer for p in draw_problems(4, seed=0)}

    def handler(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["prompt"]
        right = answers[prompt]
        text = right if prompt != list(answers)[1] else right + "9"  # one wrong answer
        return httpx.Response(200, headers={"x-paretoserve-variant": HEAVY}, content=sse(*text))

    records, seen = run(handler)
    assert all(s["path"] == "/v1/completions" and s["deadline"] == "50" for s in seen)
    assert all(s["body"]["model"] == "arith-llm" and s["body"]["stream"] is True for s in seen)
    assert [r.error for r in records] == [None] * 4
    assert [r.predicted == r.label for r in records] == [True, False, True, True]
    assert all(r.variant == HEAVY and r.prompt in answers for r in records)
    for r in records:
        assert r.ttft_ms is not None and r.latency_ms is not None and 0 <= r.ttft_ms <= r.latency_ms
        assert r.gaps_ms is not None and len(r.gaps_ms) == len(str(r.predicted)) - 1


@pytest.mark.parametrize(("answer", "kind"), [
    (httpx.Response(503, json={"error": "queue full"}), "http_503"),
    (httpx.Response(200, content=sse("4", "2", error=True, done=False)), "stream_error"),
    (httpx.Response(200, content=sse("4", "2", done=False)), "truncated"),
    (httpx.Response(200, content=b"data: {oops}\n\n"), "bad_chunk"),
])
def test_a_failed_stream_is_never_counted_as_served(answer: httpx.Response, kind: str) -> None:
    records, _ = run(lambda request: answer, prompts=1)
    assert records[0].error == kind and records[0].predicted is None
    summary = summarize(records, [], slo_ms=50.0, percentile=99, start=1000.0, end=1001.0,
                        generation={"ttftMs": 25.0, "itlMs": 10.0})
    assert summary["requests"]["ok"] == 0 and summary["generation"]["slo"]["attainment"] == 0.0


def test_a_timeout_mid_stream_is_a_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    records, _ = run(handler, prompts=1)
    assert records[0].error == "timeout"


def gen_sse(*tokens: str, last: bool = True, error: bool = False, as_list: bool = False) -> bytes:
    """A router's ``generate_stream`` answer: one event per token (``TOKEN``), then the model's last event."""
    events = [{"model_name": HIGH_MM, "TOKEN": [t] if as_list else t, "BATCH": 1} for t in tokens]
    if error:
        events.append({"error": "the model failed", "status": 502, "model": HIGH_MM})
    if last:
        events.append({"model_name": HIGH_MM, "GENERATED": len(tokens) + 1, "TTFT_US": 900})
    return b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events)


HIGH_MM = "mm-high"
VISUAL = [VisualProblem("test", i, label=i % 10, operator="+", operand=10 + i) for i in range(3)]
PIXELS = np.arange(3 * 64, dtype=np.float32).reshape(3, 8, 8) / 256


def run_mm(handler: Callable[[httpx.Request], httpx.Response], count: int = 3) -> tuple[list[RequestRecord],
                                                                                      list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append({"path": request.url.path, "body": json.loads(request.content)})
        return handler(request)

    settings = LoadSettings(url="http://router/", pipeline="mm-llm")
    records = asyncio.run(replay_requests(settings, [0.01 * i for i in range(count)],
                                          GenerateRequests("mm-llm", VISUAL[:count], PIXELS[:count]),
                                          transport=httpx.MockTransport(recording)))
    return records, seen


def test_a_generate_event_is_a_token_the_last_event_an_error_or_unreadable() -> None:
    assert generate_event('{"TOKEN": "7", "BATCH": 2}') == ("7", None, False)
    assert generate_event('{"TOKEN": ["7"]}') == ("7", None, False)
    assert generate_event('{"GENERATED": 3, "TTFT_US": 10}') == (None, None, True)
    assert generate_event('{"error": "boom", "status": 502}') == (None, "stream_error", False)
    for bad in ("not json", "[1]", '{"TOKEN": 3}', '{"TOKEN": ["1", "2"]}'):
        assert generate_event(bad) == (None, "bad_chunk", False)


def test_multimodal_requests_carry_the_image_to_the_pipelines_generate_stream() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        answer = next(p.answer for p in VISUAL if p.prompt == body["PROMPT"])
        return httpx.Response(200, headers={"x-paretoserve-variant": HIGH_MM},
                              content=gen_sse(*answer, as_list=body["PROMPT"] == VISUAL[1].prompt))

    records, seen = run_mm(handler)
    assert [s["path"] for s in seen] == ["/v2/models/mm-llm/generate_stream"] * 3
    assert [s["body"]["PROMPT"] for s in seen] == [p.prompt for p in VISUAL]
    assert [s["body"]["IMAGE"] for s in seen] == [[float(v) for v in image.ravel()] for image in PIXELS]
    assert [r.error for r in records] == [None] * 3 and all(r.predicted == r.label for r in records)
    assert all(r.variant == HIGH_MM and r.gaps_ms is not None and len(r.gaps_ms) == len(r.label) - 1 for r in records)
    with pytest.raises(ValueError, match="images"):
        GenerateRequests("mm-llm", VISUAL, PIXELS[:2])


@pytest.mark.parametrize(("content", "kind"), [
    (gen_sse("4", "2", error=True, last=False), "stream_error"),
    (gen_sse("4", "2", last=False), "truncated"),  # no last event: the answer may be cut
    (b"data: {oops}\n\n", "bad_chunk"),
])
def test_a_multimodal_stream_that_does_not_complete_is_never_served(content: bytes, kind: str) -> None:
    records, _ = run_mm(lambda request: httpx.Response(200, content=content), count=1)
    assert records[0].error == kind and records[0].predicted is None


# --- the summary ------------------------------------------------------------------------------------------------


def streamed(offset: float, latency: float, ttft: float, gaps: tuple[float, ...], variant: str, right: bool,
             error: str | None = None) -> RequestRecord:
    return RequestRecord(offset, 1000.0 + offset, latency, error, "42", "42" if right else "41", variant=variant,
                         ttft_ms=ttft, gaps_ms=gaps, prompt="40+2=")


def test_generation_summary_arithmetic() -> None:
    records = [
        streamed(0.1, 20.0, 5.0, (2.0, 4.0), HEAVY, True),      # meets all
        streamed(0.2, 30.0, 30.0, (0.0,), HEAVY, True),         # TTFT 30 > 25
        streamed(0.3, 40.0, 10.0, (12.0, 14.0), LIGHT, False),  # TPOT 13 > 10
        streamed(0.4, 60.0, 10.0, (), LIGHT, True),             # end to end 60 > 50
        RequestRecord(0.5, 1000.5, None, "timeout", "42"),       # a failure misses everything
    ]
    summary = generation_summary(records, slo_ms=50.0, ttft_ms=25.0, itl_ms=10.0)
    assert summary["slo"]["attainment"] == 0.2
    assert summary["slo"]["ttftAttainment"] == 0.6 and summary["slo"]["itlAttainment"] == 0.6
    assert summary["ttftMs"]["p50"] == 10.0 and summary["itlMs"]["max"] == 14.0
    assert summary["tpotMs"]["max"] == 13.0
    assert summary["tokens"] == {"served": 9, "meanPerAnswer": 2.25}
    assert summary["routed"] == {HEAVY: {"requests": 2, "share": 0.5, "exactMatch": 1.0},
                                 LIGHT: {"requests": 2, "share": 0.5, "exactMatch": 0.5}}
    unchecked = generation_summary(records, slo_ms=50.0, ttft_ms=None, itl_ms=None)
    assert unchecked["slo"]["attainment"] == 0.6  # only the end-to-end SLO
    full = summarize(records, [], slo_ms=50.0, percentile=99, start=1000.0, end=1001.0, pipeline="arith-llm",
                     generation={"ttftMs": 25.0, "itlMs": 10.0})
    assert full["accuracy"] == 0.75 and full["generation"] == summary
    text = format_summary(full)
    assert "exact match 75.00%" in text and "accuracy" not in text
    assert "TTFT ms: p50 10.0  p99" in text
    assert "SLO end to end 50 ms and TTFT <= 25 ms and TPOT <= 10 ms: attainment 20.00% (TTFT 60.00%, TPOT 60.00%)" \
        in text
    assert "served by: arith-large 50.00% (exact match 100.00%), arith-small 50.00% (exact match 50.00%)" in text
    assert "generation" not in summarize(records, [], slo_ms=50.0, percentile=99, start=1000.0, end=1001.0)


def test_a_generation_pipeline_is_replayed_with_completions() -> None:
    pipeline = example()
    assert replayable(pipeline, {}) is None
    slo = generation_slo(pipeline, {LIGHT: llm(LIGHT), HEAVY: llm(HEAVY)})
    assert slo is not None and slo["stage"] == "answer" and slo["ttftMs"] is not None and slo["imageValues"] == 0
    target = Target("http://router", "arith-llm", 50.0, 99, generation=slo)
    requests = requests_for(target, 3, seed=1)
    assert isinstance(requests, CompletionRequests)
    assert requests.label(0) == draw_problems(1, seed=1)[0].answer
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["stages"].append({"name": "check", "dependsOn": ["answer"], "variants": [
        {"name": "mlp", "tritonModel": "mlp_small", "accuracy": 0.9,
         "profile": {"points": [{"batch": 1, "latencyMs": 2.0}]}}]})
    refusal = replayable(parse_pipeline(doc), {})
    assert refusal is not None and "pipeline of one stage only" in refusal
