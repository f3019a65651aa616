"""No manifest the contract accepts can stall the planner (the security review's F8).

The largest manifests the contract accepts are built here at its caps (16,384 options per pipeline,
2,048 per stage, 64 stages, 16 variants, 32 batch sizes, 128 core counts, 512 profile points, 256 cascade
rows, 32 dependencies), checked against both copies of the contract, and solved under a time limit that
covers the whole solve: building the program, the solver and the diagnosis. The deterministic tests use a
fake clock that advances on every call, so the budget is spent by the work done, not by how busy the
machine is; one test measures wall time too, with a generous margin.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import pytest

from paretoserve.planner.bounds import MAX_OPTIONS_PER_PIPELINE, MAX_OPTIONS_PER_STAGE
from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.evaluate import check_plan
from paretoserve.planner.model import Binding, Deadline, OutOfTime, Plan, Problem, SolveLimits, SolveStatus
from paretoserve.planner.solve import diagnose, solve
from paretoserve.planner.spec import SpecError, parse_pipeline

from .test_crd_schema import schema_error_paths

Manifest = dict[str, Any]


class FakeClock:
    """A clock that advances `step` seconds on every call: time spent is work done."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step
        self.calls = 0

    def __call__(self) -> float:
        self.now += self.step
        self.calls += 1
        return self.now


def _sponge(i: int, cpus: int, gpu: bool = False) -> dict[str, Any]:
    resources: dict[str, Any] = {"cpu": 1.0, "memoryGib": 2.0}
    if gpu:
        resources["gpus"] = {"nvidia.com/gpu": 1}
    return {"name": f"v{i}", "tritonModel": f"m{i}", "accuracy": round(0.5 + 0.03 * i, 3), "resources": resources,
            "profile": {"sponge": {"gamma": 20.0 * (1 + i / 4), "delta": 0.5, "epsilon": 30.0 * (1 + i / 8),
                                   "eta": 5.0 + i, "cpus": [1 + k / 2 for k in range(cpus)]}}}


def _points(i: int, count: int) -> dict[str, Any]:
    points = [{"batch": 1 + k % 4, "cpu": 1 + k // 4 / 8,
               "latencyMs": round((10 + 3 * i) * (1 + k % 4) / (1 + k / 64), 3)} for k in range(count)]
    return {"name": f"v{i}", "tritonModel": f"m{i}", "accuracy": round(0.5 + 0.03 * i, 3),
            "profile": {"points": points}}


def _chain(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for s, stage in enumerate(stages):
        stage.setdefault("name", f"s{s}")
        stage.setdefault("dependsOn", [f"s{s - 1}"] if s else [])
    return stages


def _manifest(name: str, stages: list[dict[str, Any]], *, aggregation: str = "product",
              budget: dict[str, Any] | None = None) -> Manifest:
    return {"apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline", "metadata": {"name": name},
            "spec": {"slo": {"latencyMs": 5000},
                     "objective": {"accuracy": 1, "cost": 0.001, "batch": 1e-6, "accuracyAggregation": aggregation},
                     "budget": budget or {}, "adaptation": {"solverTimeLimitSeconds": 60}, "stages": stages}}


BATCHES_8 = [1, 2, 4, 8, 16, 32, 48, 64]


def largest_manifests() -> dict[str, Manifest]:
    """One manifest per cap, each with exactly MAX_OPTIONS_PER_PIPELINE options."""
    rows = [{"threshold": j / 255, "heavyFraction": round(j / 255, 4), "promptThreshold": j / 255,
             "preRoutedFraction": round(j / 510, 4), "quality": round(0.5 + 0.4 * j / 255, 4)} for j in range(256)]
    dag = [{"name": f"s{s}", "dependsOn": [f"s{(s - 1) // 2}"] if s else [], "batchSizes": [1, 2, 3, 4],
            "variants": [_points(i, 16) for i in range(16)]} for s in range(63)]
    dag.append({"name": "s63", "dependsOn": [f"s{s}" for s in range(31, 63)], "batchSizes": [1, 2, 3, 4],
                "variants": [_points(i, 16) for i in range(16)]})
    return {
        # 8 stages x 16 variants x 8 batch sizes x 16 core counts, under CPU and GPU budgets (7 criteria)
        "chain-budgets": _manifest("chain-budgets", _chain([
            {"batchSizes": BATCHES_8, "variants": [_sponge(i, 16, gpu=i % 2 == 0) for i in range(16)]}
            for _ in range(8)]), budget={"cpu": 2000, "gpus": {"nvidia.com/gpu": 64}}),
        # 64 stages (one waits for 32 others) x 16 variants x 16 profile points
        "dag-64-stages": _manifest("dag-64-stages", dag, aggregation="sum"),
        # 32 batch sizes x 4 core counts x 16 variants per stage
        "batch-sizes-32": _manifest("batch-sizes-32", _chain([
            {"batchSizes": list(range(1, 33)), "variants": [_sponge(i, 4) for i in range(16)]} for _ in range(8)])),
        # 4 variants x 512 profile points per stage
        "points-512": _manifest("points-512", _chain([
            {"batchSizes": [1, 2, 3, 4], "variants": [_points(i, 512) for i in range(4)]} for _ in range(8)]),
            aggregation="sum"),
        # hybrid cascades: 2 variants x 8 batch sizes x 128 core counts, 256 rows, 256 distinct light loads
        "hybrid-cascades": _manifest("hybrid-cascades", _chain([
            {"batchSizes": BATCHES_8, "variants": [_sponge(0, 128), _sponge(1, 128)],
             "cascade": {"light": "v0", "heavy": "v1", "router": "hybrid", "discriminatorModel": "d", "rows": rows}}
            for _ in range(8)]), aggregation="sum"),
        # traffic splits (integer replica variables per option) over 16 variants x 8 x 16
        "traffic-splits": _manifest("traffic-splits", _chain([
            {"batchSizes": BATCHES_8, "multiVariant": True, "variants": [_sponge(i, 16) for i in range(16)]}
            for _ in range(8)]), aggregation="sum"),
    }


LARGEST = largest_manifests()


def _problem(doc: Manifest, load: float = 200.0) -> Problem:
    return compile_problem(parse_pipeline(doc), Observation(load_rps=load))


@pytest.mark.parametrize("name", sorted(LARGEST))
def test_the_largest_manifests_are_accepted_by_both_copies_of_the_contract(name: str) -> None:
    doc = LARGEST[name]
    assert schema_error_paths(doc) == []
    pipeline = parse_pipeline(doc)
    assert sum(s.option_count for s in pipeline.spec.stages) == MAX_OPTIONS_PER_PIPELINE
    assert max(s.option_count for s in pipeline.spec.stages) <= MAX_OPTIONS_PER_STAGE
    problem = _problem(doc)
    assert sum(len(s.options) for s in problem.stages) <= MAX_OPTIONS_PER_PIPELINE


def _add_cores(doc: Manifest) -> None:
    doc["spec"]["stages"][0]["variants"][0]["profile"]["sponge"]["cpus"].append(99.0)


def _add_point(doc: Manifest) -> None:
    doc["spec"]["stages"][0]["variants"][0]["profile"]["points"].append({"batch": 1, "latencyMs": 5.0})


def _add_variant(doc: Manifest) -> None:
    doc["spec"]["stages"][0]["variants"].append({"name": "extra", "tritonModel": "extra", "accuracy": 0.5,
                                                 "profile": {"points": [{"batch": 1, "latencyMs": 5}]}})


@pytest.mark.parametrize(("name", "grow", "path"), [
    ("chain-budgets", _add_cores, "spec.stages[0].variants"),  # a stage at its cap: 8 more options
    ("points-512", _add_variant, "spec.stages[0].variants"),
    ("dag-64-stages", _add_point, "spec.stages"),  # the stage has room, the pipeline has not
])
def test_one_more_option_is_refused_naming_the_field(name: str, grow: Callable[[Manifest], None], path: str) -> None:
    bigger = copy.deepcopy(LARGEST[name])
    grow(bigger)
    assert schema_error_paths(bigger) == []  # the CEL rules (API server) and the parser refuse it
    with pytest.raises(SpecError) as info:
        parse_pipeline(bigger)
    assert info.value.path == path and "options" in info.value.message


ALLOWED = {SolveStatus.OPTIMAL, SolveStatus.FEASIBLE_AT_TIME_LIMIT, SolveStatus.TIME_LIMIT_NO_SOLUTION}


def _check_outcome(problem: Problem, plan: Plan) -> None:
    assert plan.status in ALLOWED, (plan.status, plan.message)
    if plan.status.has_plan:
        assert check_plan(problem, plan) == []
    else:
        assert "time limit ran out while" in plan.message and "options in" in plan.message


@pytest.mark.parametrize("name", sorted(LARGEST))
def test_the_whole_solve_stays_within_its_time_limit_on_a_fake_clock(name: str) -> None:
    """Deterministic: 1 ms per clock reading, a 0.5 s budget. The build looks at the clock between stages and
    every few dozen options, so it stops within one step of the limit, whatever the machine's speed."""
    problem = _problem(LARGEST[name])
    clock = FakeClock(step=1e-3)
    plan = solve(problem, limits=SolveLimits(time_limit_s=0.5), clock=clock)
    _check_outcome(problem, plan)
    # start, the deadline check that fires (or the last one), solve_ms: at most a few steps past the limit
    assert clock.now <= 0.5 + 4 * clock.step, (clock.now, plan.message)
    assert plan.solve_ms is not None and plan.solve_ms <= (0.5 + 4 * clock.step) * 1000


def test_the_budget_is_spent_in_the_build_and_named() -> None:
    problem = _problem(LARGEST["hybrid-cascades"])
    plan = solve(problem, limits=SolveLimits(time_limit_s=0.05), clock=FakeClock(step=1e-3))
    assert plan.status is SolveStatus.TIME_LIMIT_NO_SOLUTION
    assert "building stage" in plan.message or "light pool" in plan.message or "filtering" in plan.message
    assert "16384 options in 8 stages" in plan.message


@pytest.mark.parametrize("name", ["hybrid-cascades", "traffic-splits", "chain-budgets"])
def test_the_whole_solve_stays_within_its_time_limit_in_wall_time(name: str) -> None:
    """Real time on a possibly busy machine: the limit plus a generous margin (HiGHS checks its clock only
    now and then, and a loaded machine stretches everything)."""
    problem = _problem(LARGEST[name])
    limit, margin = 2.0, 6.0
    started = time.perf_counter()
    plan = solve(problem, limits=SolveLimits(time_limit_s=limit), clock=time.perf_counter)
    elapsed = time.perf_counter() - started
    _check_outcome(problem, plan)
    assert elapsed <= limit + margin, (elapsed, plan.status, plan.message)


def test_a_spent_budget_before_the_solver_is_time_limit_no_solution_not_infeasible() -> None:
    problem = _problem(LARGEST["dag-64-stages"])
    plan = solve(problem, limits=SolveLimits(time_limit_s=1e-3), clock=FakeClock(step=1.0))
    assert plan.status is SolveStatus.TIME_LIMIT_NO_SOLUTION
    assert plan.reason is None


def test_diagnosis_cut_short_says_unknown_instead_of_guessing() -> None:
    problem = _problem(_manifest("tight", _chain([{"batchSizes": [1], "variants": [_sponge(0, 2)]}]),
                                 budget={"cpu": 0.5}))
    expired = Deadline(clock=lambda: 10.0, at=5.0)
    reason = diagnose(problem, SolveLimits(), expired)
    assert reason.binding is Binding.UNKNOWN and "time limit" in reason.message
    assert diagnose(problem, SolveLimits()).binding is Binding.BUDGET


def test_the_deadline_raises_only_with_a_clock() -> None:
    Deadline.none().check("anything")
    assert Deadline.none().remaining() is None
    ticking = Deadline.after(1.0, FakeClock(step=0.6))
    ticking.check("first look")
    with pytest.raises(OutOfTime, match="second look"):
        ticking.check("second look")


@pytest.mark.parametrize("limit", [0.0, -1.0, float("nan"), float("inf")])
def test_a_time_limit_that_is_not_a_positive_number_is_an_error(limit: float) -> None:
    problem = _problem(_manifest("small", _chain([{"variants": [_sponge(0, 2)]}])))
    plan = solve(problem, limits=SolveLimits(time_limit_s=limit), clock=time.perf_counter)
    assert plan.status is SolveStatus.ERROR and "time limit" in plan.message


def test_small_problems_are_unchanged_by_the_budget() -> None:
    """The same plan with and without a clock (the deadline only ever cuts work short)."""
    doc = _manifest("small", _chain([{"batchSizes": [1, 2, 4], "variants": [_sponge(i, 3) for i in range(3)]}
                                     for _ in range(3)]))
    problem = _problem(doc, load=40.0)
    timed: Callable[[], float] = time.perf_counter
    with_clock = solve(problem, limits=SolveLimits(time_limit_s=30), clock=timed)
    without = solve(problem, limits=SolveLimits(time_limit_s=30))
    assert with_clock.status is without.status is SolveStatus.OPTIMAL
    assert with_clock.objective == pytest.approx(without.objective)
