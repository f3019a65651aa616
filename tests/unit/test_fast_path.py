"""Between planning rounds: the load floor, load checks, scale-out, and queue-aware capacity (pure parts)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.control import pareto_loop
from paretoserve.planner.policy import PolicyState
from paretoserve.planner.predict import predict
from paretoserve.planner.queueing import (
    erlang_c,
    late_request_timeout_us,
    queueing_utilization,
    servers,
    timeout_to_load,
    wait_quantile_s,
)
from paretoserve.planner.scaling import scale_out
from paretoserve.planner.solve import solve
from paretoserve.planner.spec import SLO, Predictor, PredictorKind, ServingPipeline, parse_pipeline

from .loop_fakes import FakeActuator, FakeSource
from .test_cli import PIPELINE


def tiny(**adaptation: Any) -> ServingPipeline:
    return parse_pipeline({**PIPELINE, "spec": {**PIPELINE["spec"], "adaptation": {  # type: ignore[dict-item]
        "predictor": {"kind": "lastValue", "headroom": 0}, **adaptation}}})


def one_stage(latency_ms: float, slo_ms: float, **adaptation: Any) -> ServingPipeline:
    return parse_pipeline({
        "apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline", "metadata": {"name": "q"},
        "spec": {"slo": {"latencyMs": slo_ms}, "adaptation": adaptation, "stages": [{"name": "s", "variants": [
            {"name": "v", "tritonModel": "v", "accuracy": 0.7,
             "profile": {"points": [{"batch": 1, "latencyMs": latency_ms, "throughputRps": 10}]}}]}]}})


def test_a_forecast_never_plans_below_the_load_just_seen() -> None:
    history = [10.0] * 60 + [40.0, 35.0]
    lstm = Predictor(kind=PredictorKind.LSTM, window_seconds=30, headroom=0.1)
    falling = predict(history, lstm, lstm=lambda h: 12.0)
    assert falling == pytest.approx(13.2)  # the model alone predicts a fall after the step
    assert predict(history, lstm, lstm=lambda h: 12.0, floor_seconds=10) == pytest.approx(44.0)
    assert predict(history, lstm, lstm=lambda h: 50.0, floor_seconds=10) == pytest.approx(55.0)


def test_erlang_c_and_the_wait_quantile_match_closed_forms() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(3, 3.0) == 1.0  # unstable
    # M/M/1, service 0.1 s, rho 0.5: P(W > t) = 0.5 exp(-5 t) -> the 99th percentile is ln(50) / 5
    assert wait_quantile_s(1, 0.1, 0.5, 0.99) == pytest.approx(math.log(50) / 5)
    assert wait_quantile_s(1, 0.1, 0.005, 0.99) == 0.0  # P(wait) below 1 %
    assert math.isinf(wait_quantile_s(4, 0.1, 1.0, 0.99))


def test_queueing_utilization_is_the_highest_load_whose_tail_wait_fits() -> None:
    assert queueing_utilization(1, 0.1, 0.0, 0.99, 0.8) == 0.0
    assert queueing_utilization(1, 0.1, 100.0, 0.99, 0.8) == 0.8  # the target binds
    rho = queueing_utilization(1, 0.1, 0.3, 0.99, 1.0)
    assert 0 < rho < 1 and wait_quantile_s(1, 0.1, rho, 0.99) == pytest.approx(0.3, rel=1e-6)
    assert queueing_utilization(8, 0.1, 0.3, 0.99, 1.0) > rho  # more servers share the queue
    assert servers(1, 700.0, 10.0, 1) == (7, pytest.approx(0.7))  # 10 rps at 700 ms overlap 7 requests


def test_erlang_c_capacity_cuts_tight_options_and_drops_late_ones() -> None:
    def capacity(latency_ms: float, model: str) -> list[float]:
        problem = compile_problem(one_stage(latency_ms, 750.0, queueingModel=model), Observation(load_rps=1.0))
        return [o.capacity_rps for o in problem.stages[0].options]

    assert capacity(700.0, "none") == [10.0]
    roomy, tight = capacity(100.0, "erlangC"), capacity(700.0, "erlangC")
    assert 0 < tight[0] < roomy[0] <= 10.0
    assert capacity(750.0, "erlangC") == []  # no time left to wait: the option is late with any queue
    assert capacity(750.0, "none") == [10.0]


def test_a_late_request_timeout_is_what_the_slo_leaves_and_a_small_move_of_it_is_not_worth_a_reload() -> None:
    refuse = SLO.model_validate({"latencyMs": 750, "lateRequests": "refuse"})
    assert late_request_timeout_us(refuse, 657.0) == 93_000  # ResNet-50's p99 under InfAdapter's SLO
    assert late_request_timeout_us(refuse, 750.0) == 0 and late_request_timeout_us(refuse, 800.0) == 0
    assert late_request_timeout_us(SLO.model_validate({"latencyMs": 750}), 100.0) == 0  # serve: no timeout
    assert timeout_to_load(93_000, 100_000) == 93_000  # within 10 %: the loaded one stays, no reload
    assert timeout_to_load(93_000, 100_000, reloads=True) == 100_000  # the model reloads anyway
    assert timeout_to_load(93_000, 350_000) == 350_000  # a resize that frees a quarter of a second
    assert timeout_to_load(0, 93_000) == 93_000 and timeout_to_load(93_000, 0) == 0  # refusing on / off


def test_scale_out_grows_the_running_pools_at_the_same_split() -> None:
    pipeline = tiny()
    at10 = solve(compile_problem(pipeline, Observation(load_rps=10.0)))
    grown = scale_out(compile_problem(pipeline, Observation(load_rps=45.0)), at10)
    assert grown is not None and grown.solver == "scale-out"
    for before, after in zip(at10.stages, grown.stages, strict=True):
        assert [(a.variant, a.batch, a.cpu, a.instances) for a in before.allocations] == \
               [(a.variant, a.batch, a.cpu, a.instances) for a in after.allocations]
        assert sum(a.load_rps for a in after.allocations) == pytest.approx(45.0)
        assert all(a.replicas >= b.replicas for a, b in zip(after.allocations, before.allocations, strict=True))
    assert sum(a.replicas for a in grown.stages[0].allocations) > sum(a.replicas for a in at10.stages[0].allocations)
    capped = parse_pipeline({**PIPELINE, "spec": {**PIPELINE["spec"], "budget": {"cpu": 3}}})  # type: ignore[dict-item]
    assert scale_out(compile_problem(capped, Observation(load_rps=400.0)), at10) is None
    # the grown plan's latency is this problem's: a queue that leaves no time for its pools is no fast path
    assert grown.latency_ms is not None
    slack = pipeline.spec.slo.latency_ms - grown.latency_ms
    queued = {s.name: slack + 1.0 for s in pipeline.spec.stages}
    assert scale_out(compile_problem(pipeline, Observation(load_rps=45.0, queue_delay_ms=queued)), at10) is None
    queued = {s.name: slack / 2 for s in pipeline.spec.stages}
    late = scale_out(compile_problem(pipeline, Observation(load_rps=45.0, queue_delay_ms=queued)), at10)
    assert late is not None and late.latency_ms is not None and late.latency_ms > grown.latency_ms


def test_between_rounds_the_loop_holds_scales_out_or_waits_for_the_interval() -> None:
    source, actuator = FakeSource(load=10.0), FakeActuator()
    loop = pareto_loop(tiny(intervalSeconds=10, checkSeconds=2), source, actuator)
    assert loop.tick(0.0).decision.apply
    held = loop.tick(2.0)
    assert not held.decision.apply and not held.planned and "covers the load" in held.decision.reason
    assert loop.state.decisions == 1  # a check is no decision
    source.load = 60.0
    burst = loop.tick(4.0)
    assert burst.decision.apply and burst.candidate.solver == "scale-out"
    assert "outgrew the running plan" in burst.decision.reason
    assert actuator.applied_at == [0.0, 4.0] and loop.state.last_planned_at == 4.0
    assert not loop.tick(6.0).decision.apply  # the grown plan covers 60 rps
    assert loop.tick(14.0).planned  # the interval since the last decision: a full round


def test_a_load_check_beyond_what_a_starting_change_carries_runs_the_full_decision() -> None:
    doc = {**PIPELINE, "spec": {**PIPELINE["spec"], "budget": {"cpu": 4}, "adaptation": {  # type: ignore[dict-item]
        "intervalSeconds": 30, "checkSeconds": 2, "predictor": {"kind": "lastValue", "headroom": 0}}}}
    doc["spec"]["stages"][0]["variants"][1]["loadTimeSeconds"] = 8  # type: ignore[index]
    source, actuator = FakeSource(load=10.0), FakeActuator()
    loop = pareto_loop(parse_pipeline(doc), source, actuator)
    loop.tick(0.0)
    loop.state = PolicyState(last_change_at=0.0, last_planned_at=0.0, decisions=1)
    source.load = 1000.0  # more than the budget can carry: scale-out is no option, waiting helps nothing
    beyond = loop.tick(2.0)  # (the hold for a starting change that will carry the load: test_surge.py)
    assert beyond.planned and not beyond.decision.apply and "kept the current plan" in beyond.decision.reason
    assert actuator.applied_at == [0.0]
