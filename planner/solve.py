"""`solve(problem) -> Plan`: validate, pre-check, run the MILP, and explain infeasibility.

Callers get a `Plan` in every case, never an exception: OPTIMAL, FEASIBLE_AT_TIME_LIMIT (a solution the
solver could not prove optimal in time), INFEASIBLE with the binding resource (SLO, budget or capacity,
and the stage when one stage alone is to blame), TIME_LIMIT_NO_SOLUTION, or ERROR with a message.
Infeasibility is diagnosed by cheap per-stage checks first and, failing those, by re-solving with the
budget and then the SLO relaxed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from paretoserve.planner import milp
from paretoserve.planner.baselines import apply_baseline
from paretoserve.planner.evaluate import EPS, finalize, fixed_pool_replicas, start_times
from paretoserve.planner.evaluate import effective_capacity as capacity_of
from paretoserve.planner.model import (
    Binding,
    InfeasibleReason,
    Option,
    Plan,
    Problem,
    SolveLimits,
    SolveStatus,
    Stage,
)
from paretoserve.planner.stageplans import allowed_options
from paretoserve.planner.validate import ProblemError, validate

Clock = Callable[[], float]


def solve(problem: Problem, *, limits: SolveLimits | None = None, clock: Clock | None = None) -> Plan:
    """Plan the problem. `clock` (seconds, e.g. time.perf_counter) is only used to fill `solve_ms`."""
    started = clock() if clock else None
    plan = _solve(problem, limits or SolveLimits())
    if clock is not None and started is not None:
        plan = replace(plan, solve_ms=(clock() - started) * 1000.0)
    return plan


def _solve(problem: Problem, limits: SolveLimits) -> Plan:
    try:
        validate(problem)
        problem = apply_baseline(problem)
    except ProblemError as exc:
        return Plan(status=SolveStatus.ERROR, message=str(exc))
    reason = precheck(problem)
    if reason is not None:
        return Plan(status=SolveStatus.INFEASIBLE, reason=reason, message=reason.message)
    try:
        model = milp.build(problem)
    except milp.UnsupportedProblem as exc:
        return Plan(status=SolveStatus.ERROR, message=str(exc))
    outcome = milp.run_solver(model, limits)
    if outcome.status.has_plan:
        try:
            stage_plans = milp.extract(problem, model)
        except (StopIteration, ValueError) as exc:
            return Plan(status=SolveStatus.ERROR, solver=outcome.solver,
                        message=f"could not decode the solver's solution: {exc!r}")
        return finalize(problem, stage_plans, solver=outcome.solver, status=outcome.status)
    if outcome.status is SolveStatus.INFEASIBLE:
        reason = diagnose(problem, limits)
        return Plan(status=SolveStatus.INFEASIBLE, solver=outcome.solver, reason=reason,
                    message=reason.message)
    if outcome.status is SolveStatus.TIME_LIMIT_NO_SOLUTION:
        return Plan(status=outcome.status, solver=outcome.solver,
                    message=f"no solution found within the {limits.time_limit_s} s time limit")
    return Plan(status=SolveStatus.ERROR, solver=outcome.solver, message=outcome.message or "solver error")


def _stage_latency_floor(problem: Problem, stage: Stage) -> float:
    """The fastest this stage can be, ignoring budgets; inf if no option can carry its load."""
    options = allowed_options(stage, [stage.cascade.light] if stage.cascade else None)
    best = math.inf
    for o in options:
        if fixed_pool_replicas(stage, o, _least_main_load(stage), problem) is None:
            continue
        best = min(best, o.latency_ms)
    if stage.cascade is not None and best < math.inf and all(r.heavy_fraction > 0 for r in stage.cascade.rows):
        heavy = [o.latency_ms for o in allowed_options(stage, [stage.cascade.heavy])]
        best += min(heavy, default=math.inf)
    return best + stage.queue_delay_ms


def precheck(problem: Problem) -> InfeasibleReason | None:
    """Reasons visible without a solver: a stage nothing can serve, or a path slower than the SLO."""
    if problem.drain_budget_ms is not None and problem.drain_budget_ms <= 0:
        return InfeasibleReason(Binding.SLO, "the tightest per-request deadline leaves no time to serve")
    for stage in problem.stages:
        options = allowed_options(stage)
        if not options:
            return InfeasibleReason(Binding.CAPACITY, f"stage {stage.name!r} has no variant to run", stage.name)
        carry = [o for o in options if _can_carry(problem, stage, o)]
        if not carry:
            return InfeasibleReason(
                Binding.CAPACITY,
                f"stage {stage.name!r}: no variant serves {stage.load_rps:g} rps within "
                f"{stage.pinned_replicas or stage.max_replicas} replicas",
                stage.name,
            )
    floors = {s.name: _stage_latency_floor(problem, s) for s in problem.stages}
    starts = start_times(problem.stages, floors)
    for stage in problem.stages:
        if starts[stage.name] + floors[stage.name] > problem.slo_ms + 1e-6:
            return InfeasibleReason(
                Binding.SLO,
                f"the fastest variants take {starts[stage.name] + floors[stage.name]:.1f} ms up to stage "
                f"{stage.name!r}, above the {problem.slo_ms:g} ms SLO",
                stage.name,
            )
    if problem.budget.cpu is not None and problem.budget.cpu <= EPS:
        needs_cpu = [s.name for s in problem.stages if all(o.cpu > 0 for o in allowed_options(s))]
        if needs_cpu and any(s.load_rps > 0 or s.min_replicas > 0 for s in problem.stages):
            return InfeasibleReason(Binding.BUDGET, "the CPU budget is zero", needs_cpu[0])
    return None


def _least_main_load(stage: Stage) -> float:
    """The least load the stage's main (or a cascade's light) pool can be left with: rows that pre-route
    requests straight to the heavy model leave the light model only the rest."""
    if stage.cascade is None:
        return stage.load_rps
    return stage.load_rps * min(stage.cascade.light_fraction(r) for r in stage.cascade.rows)


def _can_carry(problem: Problem, stage: Stage, option: Option) -> bool:
    if stage.cascade is not None and option.variant == stage.cascade.heavy:
        return False
    if stage.multi_variant:
        # A split never beats its best option's capacity times the stage's replica limit.
        limit = stage.pinned_replicas or stage.max_replicas
        return stage.load_rps <= capacity_of(option, problem) * limit + EPS
    return fixed_pool_replicas(stage, option, _least_main_load(stage), problem) is not None


def diagnose(problem: Problem, limits: SolveLimits) -> InfeasibleReason:
    """Name the binding constraint family by re-solving with one family relaxed."""
    if _feasible(problem, limits, relax_budget=True):
        return InfeasibleReason(Binding.BUDGET, "the plan needs more resources than the budget allows")
    if _feasible(problem, limits, relax_slo=True):
        return InfeasibleReason(Binding.SLO, f"no combination of variants meets the {problem.slo_ms:g} ms SLO")
    return InfeasibleReason(Binding.CAPACITY, "no combination of variants and replicas carries the load")


def _feasible(problem: Problem, limits: SolveLimits, **relax: bool) -> bool:
    model = milp.build(problem, **relax)
    return milp.run_solver(model, limits).status.has_plan
