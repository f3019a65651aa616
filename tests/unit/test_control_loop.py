"""The control loop's pure parts: predictors, the apply/defer policy, and one loop over fakes."""

from __future__ import annotations

import pytest

from paretoserve.planner.control import pareto_loop
from paretoserve.planner.model import SolveStatus
from paretoserve.planner.policy import PolicyState
from paretoserve.planner.predict import bin_maxima, ewma, last_value, moving_max, predict
from paretoserve.planner.spec import Predictor, PredictorKind, parse_pipeline

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
