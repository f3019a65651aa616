"""The MILP equals the brute-force optimum, and its plans satisfy every constraint.

Over 900 generated instances in total across the program kinds (IPA-style DAGs with FA2/RIM pins and
Sponge's drain bound, DiffServe/HADIS cascades, InfAdapter traffic splits with a loading-cost penalty).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from paretoserve.planner import milp
from paretoserve.planner.bruteforce import brute_force
from paretoserve.planner.evaluate import check_plan, latency_tie_ms
from paretoserve.planner.model import Goal, Problem, SolveStatus
from paretoserve.planner.solve import solve

from .planner_strategies import cascade_problem, dag_problem, split_problem, workflow_problem

ORACLE = settings(max_examples=300, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def assert_matches_oracle(problem: Problem) -> None:
    oracle = brute_force(problem)
    plan = solve(problem)
    if oracle.status is SolveStatus.INFEASIBLE:
        assert plan.status is SolveStatus.INFEASIBLE, (plan, problem)
        assert plan.reason is not None
        return
    assert plan.status is SolveStatus.OPTIMAL, (plan.status, plan.message, problem)
    if problem.objective.goal is Goal.LATENCY:  # the shortest critical path first, then the weighted objective
        assert plan.latency_ms == pytest.approx(oracle.latency_ms, rel=0, abs=latency_tie_ms(problem.slo_ms))
    # optimal means optimal at every weight scale: within 1e-7 of the largest weight
    weights = problem.objective
    tolerance = 1e-7 * max(weights.accuracy, weights.cost, weights.batch, weights.reconfiguration, 1e-12)
    assert plan.objective == pytest.approx(oracle.objective, rel=0, abs=tolerance), (plan, oracle, problem)
    assert check_plan(problem, plan) == []
    assert check_plan(problem, oracle) == []


@ORACLE
@given(dag_problem())
def test_dag_and_chain_programs_match_brute_force(problem: Problem) -> None:
    assert_matches_oracle(problem)


@ORACLE
@given(cascade_problem())
def test_cascade_programs_match_brute_force(problem: Problem) -> None:
    assert_matches_oracle(problem)


@settings(ORACLE, max_examples=260)
@given(split_problem())
def test_traffic_split_programs_match_brute_force(problem: Problem) -> None:
    assert_matches_oracle(problem)


@settings(ORACLE, max_examples=120)
@given(split_problem())
def test_traffic_splits_too_large_for_pools_match_brute_force(problem: Problem) -> None:
    """Past POOL_LIMIT (option, replica count) pairs a split keeps one integer count per option."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(milp, "POOL_LIMIT", 0)
        assert_matches_oracle(problem)


@settings(ORACLE, max_examples=200)
@given(workflow_problem())
def test_workflow_latency_goal_and_accuracy_floor_match_brute_force(problem: Problem) -> None:
    assert_matches_oracle(problem)
    plan = solve(problem)
    floor = problem.objective.min_accuracy
    if plan.status.has_plan and floor is not None:
        assert plan.accuracy is not None and plan.accuracy >= floor - 1e-6
