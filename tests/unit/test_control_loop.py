"""The control loop's pure parts: predictors, the apply/defer policy, and one loop over fakes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.control import Observed, ParetoPolicy, pareto_loop
from paretoserve.planner.evaluate import covers_load, effective_capacity, finalize, replicas_for
from paretoserve.planner.model import Plan, SolveStatus
from paretoserve.planner.policy import PolicyContext, PolicyState, decide
from paretoserve.planner.predict import bin_maxima, ewma, last_value, moving_max, predict
from paretoserve.planner.scaling import as_running
from paretoserve.planner.spec import Predictor, PredictorKind, ServingPipeline, parse_pipeline
from paretoserve.planner.stageplans import single_plan

from .loop_fakes import FakeActuator, FakeSource
from .test_cli import PIPELINE


def test_predictors() -> None:
    history = [1.0, 5.0, 2.0, 3.0]
    assert last_value(history) == 3.0
    assert moving_max(history, 2) == 3.0 and moving_max(history, 4) == 5.0
    assert ewma([4.0, 4.0, 4.0]) == pytest.approx(4.0)
    assert 2.0 < ewma(history) < 5.0
    assert bin_maxima(list(range(10)), bin_seconds=5, bins=2) == [4.0, 9.0]
    assert predict(history, Predictor(kind=PredictorKind.MOVING_MAX, window_seconds=4, headroom=0.1)) == 5.5
    # LSTM without a model falls back to the moving maximum rather than guessing
    assert predict(history, Predictor(kind=PredictorKind.LSTM, window_seconds=4, headroom=0.0)) == 5.0


def test_policy_state_round_trips_through_status() -> None:
    state = PolicyState(lower_streak=2, last_change_at=12.5, decisions=7, last_planned_at=14.0)
    assert PolicyState.from_dict(state.to_dict()) == state
    assert PolicyState.from_dict(None) == PolicyState()


def replicas(actuator: FakeActuator) -> int:
    assert actuator.plan is not None
    return actuator.plan.stages[0].allocations[0].replicas


def test_loop_scales_up_at_once_and_down_after_stabilization() -> None:
    doc = {**PIPELINE, "spec": {**PIPELINE["spec"], "adaptation": {  # type: ignore[dict-item]
        "scaleDownStabilization": 3, "predictor": {"kind": "lastValue", "headroom": 0}}}}
    source, actuator = FakeSource(load=30.0), FakeActuator()
    loop = pareto_loop(parse_pipeline(doc), source, actuator)
    first = loop.tick(0.0)
    assert first.decision.apply and replicas(actuator) == 2  # 30 rps on the 20-rps 'large' variant
    source.load = 70.0
    loop.tick(10.0)
    assert replicas(actuator) == 3 and actuator.applied_at == [0.0, 10.0]  # batch 2: 25 rps per replica
    source.load = 30.0
    for t in (20.0, 30.0):
        result = loop.tick(t)
        assert not result.decision.apply and "deferred" in result.decision.reason
        assert replicas(actuator) == 3
    assert loop.state.lower_streak == 2
    assert loop.tick(40.0).decision.apply and replicas(actuator) == 2
    assert loop.state.lower_streak == 0


def test_loop_keeps_the_last_plan_when_the_planner_fails() -> None:
    source, actuator = FakeSource(load=30.0), FakeActuator()
    loop = pareto_loop(parse_pipeline(PIPELINE), source, actuator)
    loop.tick(0.0)
    kept = actuator.plan
    source.load = 10_000.0  # beyond maxReplicas: infeasible
    result = loop.tick(10.0)
    assert result.candidate.status is SolveStatus.INFEASIBLE
    assert not result.decision.apply and actuator.plan is kept


def instances_tie() -> ServingPipeline:
    """One model whose one- and two-instance pools cost the same (1 core, 50 rps) and both meet the 400 ms
    SLO: 100 ms with one instance, 300 ms with two. Two optima of the program."""
    points = [{"batch": 1, "cpu": 1, "instances": 1, "latencyMs": 100, "throughputRps": 50},
              {"batch": 1, "cpu": 1, "instances": 2, "latencyMs": 300, "throughputRps": 50}]
    return parse_pipeline({
        "apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline", "metadata": {"name": "tie"},
        "spec": {"slo": {"latencyMs": 400}, "objective": {"accuracy": 1, "cost": 0.01}, "budget": {"cpu": 8},
                 "adaptation": {"intervalSeconds": 10, "targetUtilization": 1.0,
                                "predictor": {"kind": "lastValue", "headroom": 0}},
                 "stages": [{"name": "m", "variants": [
                     {"name": "m", "tritonModel": "m", "accuracy": 0.9, "profile": {"points": points}}]}]}})


def running_with(pipeline: ServingPipeline, instances: int, load: float) -> Plan:
    """The plan with the pool of `instances` Triton instances per replica at `load`."""
    problem = compile_problem(pipeline, Observation(load_rps=load))
    stage = problem.stages[0]
    option = next(o for o in stage.options if o.instances == instances)
    replicas = replicas_for(load, effective_capacity(option, problem))
    assert replicas is not None
    return finalize(problem, [single_plan(stage, option, max(1, replicas))], solver="test")


@pytest.mark.parametrize(("planned_for", "load"), [(120.0, 120.0), (0.0, 40.0)],
                         ids=["at-this-load", "before-any-request"])
@pytest.mark.parametrize("instances", [1, 2])
def test_an_equal_plan_does_not_replace_the_running_one(instances: int, planned_for: float, load: float) -> None:
    """Whichever optimum runs, a round at the same load keeps it: applying the other optimum of equal cost and
    objective only churns (on `up`'s digits replay the loop flipped cnn_large between 1 and 2 instances every
    5-6 s before this rule). The solver returns one of the two; the running plan is the either one, also when
    it was planned for no load (`up`'s first plan, before any request: its pools carry no share to scale)."""
    pipeline = instances_tie()
    applied = running_with(pipeline, instances, planned_for)
    result = ParetoPolicy(pipeline).decide_now(Observed(load_history=(load,) * 20), applied, PolicyState(), now=10.0)
    assert not result.decision.apply and result.decision.plan is applied
    assert result.decision.reason in {"unchanged", "kept the running plan: the new one costs no less and is no better"}
    assert result.state.lower_streak == 0


def test_a_running_plan_that_the_queue_pushes_past_the_slo_is_replaced_at_equal_cost() -> None:
    """The equal-plan rule re-derives the running plan's latency at the observed queue delay: with 200 ms of
    queueing the two-instance pool (300 ms) breaks the 400 ms SLO although its capacity still covers the
    load, so the one-instance pool of the same cost replaces it."""
    pipeline = instances_tie()
    applied = running_with(pipeline, 2, 120.0)
    observed = Observed(load_history=(120.0,) * 20, queue_delay_ms={"m": 200.0})
    problem = compile_problem(pipeline, Observation(load_rps=120.0, queue_delay_ms={"m": 200.0}))
    assert covers_load(problem, applied) and as_running(problem, applied) is None
    assert as_running(compile_problem(pipeline, Observation(load_rps=120.0)), applied) is not None
    result = ParetoPolicy(pipeline).decide_now(observed, applied, PolicyState(), now=10.0)
    assert result.decision.apply and result.decision.plan is not None
    assert result.decision.plan.stages[0].allocations[0].instances == 1


def test_a_better_plan_of_equal_cost_still_replaces_the_running_one() -> None:
    """The rule keeps only equal plans: a higher objective at the same cost (here the running plan's pool
    is made to look less accurate than the candidate) is applied at once."""
    pipeline = instances_tie()
    applied = running_with(pipeline, 1, 120.0)
    candidate = replace(applied, objective=(applied.objective or 0.0) + 1e-6, stages=())
    ctx = PolicyContext(now=10.0, candidate=candidate, applied=applied, state=PolicyState(),
                        scale_down_stabilization=3, applied_objective=applied.objective)
    better, _ = decide(ctx)
    assert better.apply and better.reason == "scale up or reconfigure"
    same, _ = decide(replace(ctx, candidate=replace(candidate, objective=applied.objective)))
    assert not same.apply and same.plan is applied
    unknown, _ = decide(replace(ctx, candidate=replace(candidate, objective=applied.objective),
                                applied_objective=None))
    assert unknown.apply  # a running plan not known to meet the constraints at this load never blocks a change
