"""HPA and VPA as pure policies: Kubernetes' replica rule, its limits and windows, VPA's band, the loop."""

from __future__ import annotations

from typing import Any

import pytest

from paretoserve.planner.autoscalers import (
    AutoscalerPolicy,
    HpaSettings,
    HpaState,
    VpaSettings,
    VpaState,
    hpa_decide,
    hpa_replicas,
    template_option,
    vpa_decide,
)
from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.control import ControlLoop, Observed
from paretoserve.planner.model import Plan, Problem
from paretoserve.planner.spec import ServingPipeline, parse_pipeline

from .loop_fakes import FakeActuator, FakeSource


def manifest(stage_extra: dict[str, Any] | None = None) -> ServingPipeline:
    points = [{"batch": 1, "cpu": c, "latencyMs": 100.0, "throughputRps": 10.0 * c} for c in (1, 2, 4, 8)]
    return parse_pipeline({
        "apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline", "metadata": {"name": "a"},
        "spec": {"slo": {"latencyMs": 500}, "stages": [{
            "name": "s", "bounds": {"minReplicas": 1, "maxReplicas": 50},
            "variants": [{"name": "v", "tritonModel": "v", "accuracy": 0.7, "profile": {"points": points}}],
            **(stage_extra or {}),
        }]},
    })


def problem_at(load: float) -> Problem:
    return compile_problem(manifest(), Observation(load_rps=load))


def replicas(plan: Plan) -> int:
    return plan.stages[0].allocations[0].replicas


def observed(*history: float) -> Observed:
    return Observed(load_history=tuple(history))


@pytest.mark.parametrize(("current", "utilization", "expected"), [
    (4, 0.9, 6),  # ceil(4 × 0.9 / 0.7) = ceil(5.14)
    (4, 0.75, 4),  # ratio 1.07: inside the 0.1 tolerance
    (4, 0.65, 4),  # ratio 0.93: inside the tolerance
    (4, 0.3, 2),  # ceil(1.71)
    (0, 0.5, 1),
    (3, 0.0, 0),
])
def test_hpa_replica_rule(current: int, utilization: float, expected: int) -> None:
    assert hpa_replicas(current, utilization, 0.7, 0.1) == expected


def test_hpa_sizes_the_first_deployment_for_the_load() -> None:
    plan, state = hpa_decide(problem_at(56.0), None, observed(56.0), 0.0, HpaState(), HpaSettings())
    # the template is the most efficient option: 10 rps per core at any size, fewest cores -> 1 core, 10 rps
    assert plan.stages[0].allocations[0].cpu == 1.0
    assert replicas(plan) == 8  # ceil(56 / (10 × 0.7))
    assert plan.status.has_plan and plan.solver == "hpa" and len(state.recommendations) == 1


def test_hpa_scale_up_is_rate_limited() -> None:
    settings = HpaSettings()
    first, state = hpa_decide(problem_at(7.0), None, observed(7.0), 0.0, HpaState(), settings)
    assert replicas(first) == 1
    second, _ = hpa_decide(problem_at(500.0), first, observed(500.0), 15.0, state, settings)
    assert replicas(second) == 5  # max(+100 %, +4 pods) from 1


def test_hpa_scale_down_waits_for_the_stabilization_window() -> None:
    settings = HpaSettings(stabilization_window_s=300.0)
    plan, state = hpa_decide(problem_at(70.0), None, observed(70.0), 0.0, HpaState(), settings)
    assert replicas(plan) == 10
    for t in (15.0, 150.0, 290.0):
        plan, state = hpa_decide(problem_at(14.0), plan, observed(14.0), t, state, settings)
        assert replicas(plan) == 10  # the 10-replica recommendation at t = 0 is still in the window
    plan, state = hpa_decide(problem_at(14.0), plan, observed(14.0), 310.0, state, settings)
    assert replicas(plan) == 2


def test_vpa_resizes_only_when_cores_leave_the_band() -> None:
    settings = VpaSettings(replicas=1, window_s=60)
    unit = problem_at(1.0)  # the loop compiles VPA problems at load 1 (only multipliers matter)
    plan, state = vpa_decide(unit, None, observed(*[20.0] * 60), 0.0, VpaState(), settings)
    assert plan.stages[0].allocations[0].cpu == 4.0  # 20 × 1.15 = 23 rps needs 4 cores (40 rps)
    plan, state = vpa_decide(unit, plan, observed(*([20.0] * 30 + [25.0] * 30)), 60.0, state, settings)
    assert plan.stages[0].allocations[0].cpu == 4.0 and state.updates == 0  # still inside the band
    plan, state = vpa_decide(unit, plan, observed(*[5.0] * 60), 120.0, state, settings)
    assert plan.stages[0].allocations[0].cpu == 1.0 and state.updates == 1  # far above what is used
    plan, state = vpa_decide(unit, plan, observed(*[60.0] * 60), 180.0, state, settings)
    assert plan.stages[0].allocations[0].cpu == 8.0 and state.updates == 2


def test_template_option_and_unsupported_stages() -> None:
    stage = problem_at(1.0).stages[0]
    assert template_option(stage).cpu == 1.0
    assert template_option(stage, cpu=4.0).capacity_rps == 40.0
    with pytest.raises(ValueError, match="no option"):
        template_option(stage, variant="missing")
    split = compile_problem(manifest({"multiVariant": True}), Observation(load_rps=1.0))
    with pytest.raises(ValueError, match="one variant"):
        hpa_decide(split, None, observed(1.0), 0.0, HpaState(), HpaSettings())


def test_autoscaler_loop_applies_only_changed_plans() -> None:
    source, actuator = FakeSource(28.0), FakeActuator()
    settings = HpaSettings()

    def policy(problem: Problem, applied: Plan | None, obs: Observed, now: float,
               state: HpaState) -> tuple[Plan, HpaState]:
        return hpa_decide(problem, applied, obs, now, state, settings)

    loop = ControlLoop(AutoscalerPolicy(manifest(), policy), source, actuator, HpaState())
    loop.tick(0.0)
    loop.tick(15.0)
    assert actuator.applied_at == [0.0] and actuator.plan is not None and replicas(actuator.plan) == 4
    source.load = 80.0
    loop.tick(30.0)
    assert actuator.applied_at == [0.0, 30.0] and replicas(actuator.plan) == 8
