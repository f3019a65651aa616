"""`paretoserve up` serving the token-generating example for real: the REAL Triton (arith-small, arith-large as
decoupled Python-backend models, arith-scorer), the REAL router subprocess and the REAL control loop, in process.

The manifest is ``manifests/examples/arith-llm.yaml`` with a budget of this machine's 2 cores, no prediction
headroom and planning rounds an hour apart, so the loop ticks only when the test ticks it: the test drives time and
the load the loop sees, never asserts timing. Covers:

- the runtime serves the three models of the pipeline (what each is decided from the manifest) and the first plan,
  at no load, sends every prompt to arith-large;
- completions naming the pipeline, streamed by the runtime's own load generator, are each answered by the model
  the router names, token for token as that model's offline greedy answer (`NumpyLM.generate`), and the router's
  pipeline counter, which the loop reads as the load, counts them;
- a load the loop sees (forced: its observation replaced by a steady rate at which the program splits the stage)
  makes it apply a plan with a threshold strictly between 0 and 1 (both models get a replica), each allocation's
  batch becomes its model's ``max_sequences`` and its replicas its instances (reloads), and then the prompts
  scored below the threshold are answered by arith-small, the others by arith-large, again each as that model's
  offline answer;
- a short replay through `run_and_report` (what ``up --replay`` runs) reports no failure, exact match equal to the
  share of right answers, and the share each model served.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.control import Observed, StepResult
from paretoserve.planner.policy import PolicyState
from paretoserve.planner.solve import solve
from paretoserve.planner.spec import ServingPipeline, parse_pipeline
from paretoserve.workers.llm.cache import CachedScorer, LLMCatalog
from paretoserve.workers.llm.engine import NumpyLM
from paretoserve.workers.llm.scorer import SCORER_MODEL
from paretoserve.workers.llm.tasks import Problem, make_splits
from paretoserve.workers.llm.tokenizer import decode, encode_prompt
from paretoserve.workers.runtime.completions import CompletionRequests, generation_slo
from paretoserve.workers.runtime.loadgen import LoadSettings, RequestRecord, run_requests
from paretoserve.workers.runtime.local import LocalRuntime, UpSettings
from paretoserve.workers.runtime.replay import Target, prepare_replay, run_and_report
from paretoserve.workers.runtime.served import GenerationModel, ScorerModel

from .test_runtime_local import write_trace

pytestmark = [pytest.mark.triton, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "arith-llm.yaml"
PIPELINE = "arith-llm"
LIGHT, HEAVY = "arith-small", "arith-large"
PER_SIDE = 12
"""Prompts on each side of the split's threshold (two dozen in all)."""
POOL = 400
"""Held-out prompts whose offline answers are computed up front; the split's prompts are chosen among them."""


def local_pipeline(example: Path = EXAMPLE) -> ServingPipeline:
    """``example`` on this machine's 2 cores, planning only when the test ticks the loop."""
    doc: dict[str, Any] = yaml.safe_load(example.read_text())
    doc["spec"]["budget"]["cpu"] = 2
    doc["spec"]["adaptation"] = {"intervalSeconds": 3600, "checkSeconds": 3600, "scaleDownStabilization": 0,
                                 "predictor": {"kind": "movingMax", "windowSeconds": 5, "headroom": 0.0}}
    return parse_pipeline(doc)


def splitting_load(pipeline: ServingPipeline) -> float:
    """The middle of the loads (of a range, 25 requests/s apart) at which the program splits the stage
    (0 < threshold < 1): the load the test makes the loop see, away from the edges where the running plan could tip
    the choice."""
    splits = []
    for load in np.arange(50.0, 3000.0, 25.0):
        plan = solve(compile_problem(pipeline, Observation(load_rps=float(load))))
        threshold = plan.stages[0].threshold if plan.stages else None
        if threshold is not None and 0.0 < threshold < 1.0:
            splits.append(float(load))
        elif splits:
            break
    assert splits, "no load splits the stage: the example's profile or rows changed"
    return splits[len(splits) // 2]


def prompt_threshold(pipeline: ServingPipeline, threshold: float) -> float:
    """The score the router compares with: the pre-route threshold of the row the plan chose."""
    cascade = pipeline.spec.stages[0].cascade
    assert cascade is not None
    row = min(cascade.rows, key=lambda r: abs(r.threshold - threshold))
    assert row.prompt_threshold is not None
    return row.prompt_threshold


def split_by_the_loop(runtime: LocalRuntime, pipeline: ServingPipeline, load: float,
                      logs: list[str]) -> tuple[StepResult[PolicyState], float, float]:
    """Make the loop see ``load`` (a steady rate at which the program splits the stage) and tick it once: the plan
    it applies, its threshold (strictly between 0 and 1) and the score the router compares with."""
    metrics = runtime.metrics
    assert metrics is not None and runtime.loop_runner is not None
    metrics.observe = lambda now: Observed(load_history=(load,) * 10)  # type: ignore[method-assign]
    result = runtime.loop_runner.tick()
    assert result is not None and result.decision.apply, (result, logs)
    applied = runtime.events[-1]
    threshold = applied.thresholds.get("answer")
    assert applied.error is None and threshold is not None and 0.0 < threshold < 1.0, (applied, logs)
    return result, threshold, prompt_threshold(pipeline, threshold)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def offline(engine: NumpyLM, prompts: list[str], max_tokens: int) -> dict[str, str]:
    """Each prompt's greedy answer, computed offline by the numpy engine."""
    return {p: decode(tokens) for p, tokens in zip(prompts, engine.generate([encode_prompt(p) for p in prompts],
                                                                            max_tokens), strict=True)}


def complete(runtime: LocalRuntime, problems: list[Problem]) -> list[RequestRecord]:
    """Send each problem once as a streamed completion naming the pipeline, 20 ms apart (open loop)."""
    settings = LoadSettings(url=runtime.url, pipeline=PIPELINE, request_timeout_s=60.0)
    return run_requests(settings, [0.02 * i for i in range(len(problems))], CompletionRequests(PIPELINE, problems))


def check_answers(records: list[RequestRecord], answers: dict[str, dict[str, str]]) -> None:
    """Every request served, each by a model the router named, with that model's offline greedy answer."""
    for r in records:
        assert r.error is None, r
        assert r.variant in answers and r.prompt is not None, r
        assert r.predicted == answers[r.variant][r.prompt], r


def wait_until(condition: Any, seconds: float, what: str) -> None:
    """Poll ``condition`` (a bound on a hang, not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def test_up_serves_the_generation_pipeline_and_a_plan_change_moves_the_answers(
        tmp_path: Path, llm_catalog: LLMCatalog, llm_scorer: CachedScorer) -> None:
    pipeline = local_pipeline()
    load = splitting_load(pipeline)
    score = llm_scorer.score()
    pool = list(make_splits().test[:POOL])
    scores = {p.prompt: float(np.float32(score(p.prompt))) for p in pool}  # as the router reads Triton's FP32 SCORE
    max_tokens = {m: int(llm_catalog.metadata[m]["max_new_tokens"]) for m in (LIGHT, HEAVY)}
    answers = {m: offline(llm_catalog.engine(m), [p.prompt for p in pool], max_tokens[m]) for m in (LIGHT, HEAVY)}
    assert any(answers[LIGHT][p.prompt] != answers[HEAVY][p.prompt] for p in pool)  # the text tells them apart

    settings = UpSettings(port=free_port(), work_dir=tmp_path / "work", state_dir=tmp_path / "state")
    logs: list[str] = []
    with LocalRuntime(pipeline, settings, log=logs.append) as runtime:
        kinds = {name: type(spec) for name, spec in runtime.model_specs.items()}
        assert kinds == {LIGHT: GenerationModel, HEAVY: GenerationModel, SCORER_MODEL: ScorerModel}, logs
        assert runtime.events and runtime.events[-1].thresholds == {"answer": 0.0}, logs  # no load: all large

        before = complete(runtime, pool[:2 * PER_SIDE])
        check_answers(before, answers)
        assert {r.variant for r in before} == {HEAVY}
        metrics = runtime.metrics
        assert metrics is not None
        wait_until(lambda: metrics.router.pipeline_requests >= 2 * PER_SIDE, 30,
                   "the loop's metrics to count the pipeline's requests")

        result, threshold, cut = split_by_the_loop(runtime, pipeline, load, logs)
        applied = runtime.events[-1]
        plan = result.decision.plan
        assert plan is not None and runtime.actuator is not None
        running = runtime.actuator.running_specs()
        for allocation in plan.stages[0].allocations:  # the plan's batch is each serving model's max sequences
            spec = running[allocation.variant]
            assert allocation.replicas > 0 and isinstance(spec, GenerationModel), (allocation, spec)
            assert spec.spec.max_sequences == allocation.batch == applied.batch[allocation.variant], (allocation, spec)
            assert spec.instance_count == min(allocation.replicas, settings.cores), (allocation, spec)

        problems = ([p for p in pool if scores[p.prompt] >= cut][:PER_SIDE]
                    + [p for p in pool if scores[p.prompt] < cut][:PER_SIDE])
        assert len(problems) == 2 * PER_SIDE, cut
        after = complete(runtime, problems)
        check_answers(after, answers)
        expected = {p.prompt: HEAVY if scores[p.prompt] >= cut else LIGHT for p in problems}
        assert [r.variant for r in after] == [expected[r.prompt or ""] for r in after]
        assert {r.variant for r in after} == {LIGHT, HEAVY}

        trace = write_trace(tmp_path / "trace.tbz2", [4, 4, 4])
        target = Target(runtime.url, PIPELINE, pipeline.spec.slo.latency_ms, 99,
                        metrics_url=f"{runtime.router_admin_url}/metrics",
                        generation=generation_slo(pipeline, runtime.model_specs))
        summary = run_and_report(target, prepare_replay(trace, "0:3", 1.0), events=lambda: runtime.events,
                                 steps=lambda: runtime.steps, out_dir=tmp_path / "out", progress=False,
                                 request_timeout_s=60.0)
    assert summary["requests"]["sent"] == 12 and summary["requests"]["failed"] == 0, summary["text"]
    generation = summary["generation"]
    assert sum(r["requests"] for r in generation["routed"].values()) == 12
    assert summary["planAtStart"]["thresholds"] == {"answer": threshold}
    lines = [line for line in (tmp_path / "out" / "requests.jsonl").read_text().splitlines() if line]
    records = [RequestRecord(**json.loads(line)) for line in lines]
    assert summary["accuracy"] == round(sum(r.predicted == r.label for r in records) / 12, 4)
    for r in records:  # every answer the replay counted is the serving model's own
        assert r.variant in (LIGHT, HEAVY) and r.prompt is not None
        assert r.predicted == offline(llm_catalog.engine(r.variant), [r.prompt], max_tokens[r.variant])[r.prompt], r
    assert "served by:" in summary["text"] and "exact match" in summary["text"]
