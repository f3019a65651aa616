"""Multi-task stages: the planner chooses between the separate task models and a fused variant by load and
budget, scoring each by its per-task accuracies, and agrees with brute force."""

from __future__ import annotations

from typing import Any

import pytest

from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.model import SolveStatus
from paretoserve.planner.solve import solve
from paretoserve.planner.spec import parse_pipeline

from .test_planner_oracle import assert_matches_oracle


def _variant(name: str, accuracy: dict[str, float], rps: float) -> dict[str, Any]:
    return {"name": name, "tritonModel": name.replace("-", "_"), "taskAccuracy": accuracy,
            "resources": {"cpu": 1.0, "memoryGib": 0.5},
            "profile": {"points": [{"batch": 1, "cpu": 1.0, "latencyMs": 2.0, "throughputRps": rps}]}}


def _manifest(weights: dict[str, float] | None = None) -> dict[str, Any]:
    weights = weights or {"digit": 1.0, "parity": 1.0}
    return {
        "apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline", "metadata": {"name": "multi"},
        "spec": {
            "slo": {"latencyMs": 50, "percentile": 99},
            "objective": {"accuracy": 1.0, "cost": 0.001},
            "budget": {"cpu": 2.0},
            "adaptation": {"targetUtilization": 1.0},
            "stages": [{
                "name": "tasks",
                "tasks": [{"name": task, "weight": weight} for task, weight in weights.items()],
                "variants": [
                    _variant("separate", {"digit": 0.99, "parity": 0.97}, rps=1000.0),
                    _variant("fused-ab", {"digit": 0.96, "parity": 0.99}, rps=1700.0),
                ],
            }],
        },
    }


def _plan(load: float, weights: dict[str, float] | None = None) -> tuple[Any, Any]:
    problem = compile_problem(parse_pipeline(_manifest(weights)), Observation(load_rps=load))
    return problem, solve(problem)


def test_a_variant_of_a_multi_task_stage_scores_the_weighted_mean_of_its_task_accuracies() -> None:
    stage = parse_pipeline(_manifest({"digit": 1.0, "parity": 3.0})).spec.stages[0]
    assert stage.accuracy_of(stage.variants[0]) == pytest.approx((0.99 + 3 * 0.97) / 4)
    problem = compile_problem(parse_pipeline(_manifest({"digit": 1.0, "parity": 3.0})), Observation(load_rps=10))
    assert {o.variant: o.accuracy for o in problem.stages[0].options} == pytest.approx(
        {"separate": (0.99 + 3 * 0.97) / 4, "fused-ab": (0.96 + 3 * 0.99) / 4})


def test_the_separate_models_while_they_fit_the_budget_then_the_fused_variant() -> None:
    _, low = _plan(1500.0)  # separate: 2 replicas = the 2-core budget; more accurate on average
    assert low.status is SolveStatus.OPTIMAL
    assert [(a.variant, a.replicas) for a in low.stages[0].allocations] == [("separate", 2)]
    assert low.accuracy == pytest.approx(0.98)
    _, high = _plan(2500.0)  # separate would need 3 cores: only the fused variant fits
    assert high.status is SolveStatus.OPTIMAL
    assert [(a.variant, a.replicas) for a in high.stages[0].allocations] == [("fused-ab", 2)]
    assert high.accuracy == pytest.approx(0.975)
    _, too_much = _plan(4000.0)
    assert too_much.status is SolveStatus.INFEASIBLE and too_much.reason is not None


def test_task_weights_move_the_choice() -> None:
    _, plan = _plan(500.0, {"digit": 1.0, "parity": 3.0})  # parity matters most: the fused variant is better
    assert [a.variant for a in plan.stages[0].allocations] == ["fused-ab"]


@pytest.mark.parametrize("load", [10.0, 900.0, 1500.0, 2100.0, 2500.0, 3400.0, 3500.0, 5000.0])
@pytest.mark.parametrize("weights", [None, {"digit": 1.0, "parity": 3.0}, {"digit": 0.0, "parity": 1.0}])
def test_multi_task_plans_match_brute_force(load: float, weights: dict[str, float] | None) -> None:
    problem, _ = _plan(load, weights)
    assert_matches_oracle(problem)
