"""`solve(problem) -> Plan`: validate, pre-check, run the MILP, and explain infeasibility.

Callers get a `Plan` in every case, never an exception: OPTIMAL, FEASIBLE_AT_TIME_LIMIT (a solution the
solver could not prove optimal in time), INFEASIBLE with the binding resource (SLO, budget or capacity,
and the stage when one stage alone is to blame), TIME_LIMIT_NO_SOLUTION, or ERROR with a message.
Infeasibility is diagnosed by cheap per-stage checks first and, failing those, by re-solving with the
budget and then the SLO relaxed.

With an injected clock, `SolveLimits.time_limit_s` bounds the whole solve: building the program (checked
between stages and every few dozen options), the solver call (given only the time left) and the
diagnosing re-solves. A budget that runs out gives TIME_LIMIT_NO_SOLUTION naming the phase and the option
count (or INFEASIBLE with binding UNKNOWN when only the diagnosis was cut short), never an unbounded run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from paretoserve.planner import milp
from paretoserve.planner.baselines import apply_baseline
from paretoserve.planner.evaluate import EPS, finalize, fixed_pool_replicas, latency_tie_ms, start_times
from paretoserve.planner.evaluate import effective_capacity as capacity_of
from paretoserve.planner.model import (
    Binding,
    Deadline,
    Goal,
    InfeasibleReason,
    Option,
    OutOfTime,
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
    """Plan the problem within `limits.time_limit_s`.

    `clock` (seconds, e.g. time.perf_counter) fills `solve_ms` and makes the time limit cover the whole
    solve; without one only the solver calls are limited (the planner reads no clock of its own).
    """
    limits = limits or SolveLimits()
    if not (isinstance(limits.time_limit_s, int | float) and math.isfinite(limits.time_limit_s)
            and limits.time_limit_s > 0):
        return Plan(status=SolveStatus.ERROR,
                    message=f"the time limit must be a positive number of seconds, got {limits.time_limit_s!r}")
    if clock is None:
        return _solve(problem, limits, Deadline.none())
    started = clock()
    plan = _solve(problem, limits, Deadline(clock, started + limits.time_limit_s))
    return replace(plan, solve_ms=(clock() - started) * 1000.0)


def _out_of_time(problem: Problem, limits: SolveLimits, phase: str, solver: str = "") -> Plan:
    options = sum(len(s.options) for s in problem.stages)
    return Plan(status=SolveStatus.TIME_LIMIT_NO_SOLUTION, solver=solver,
                message=f"no solution: the {limits.time_limit_s:g} s time limit ran out while {phase} "
                        f"({options} options in {len(problem.stages)} stages)")


def _solver_limits(limits: SolveLimits, deadline: Deadline) -> SolveLimits:
    """The solver's share of the budget: what is left of it (raises OutOfTime when nothing is)."""
    left = deadline.remaining()
    if left is None:
        return limits
    if left <= 0:
        raise OutOfTime("passing the program to the solver")
    return replace(limits, time_limit_s=min(limits.time_limit_s, left))


def _solve(problem: Problem, limits: SolveLimits, deadline: Deadline) -> Plan:
    try:
        validate(problem)
        problem = apply_baseline(problem)
    except ProblemError as exc:
        return Plan(status=SolveStatus.ERROR, message=str(exc))
    try:
        deadline.check("validating the problem")
        reason = precheck(problem)
        if reason is not None:
            return Plan(status=SolveStatus.INFEASIBLE, reason=reason, message=reason.message)
        deadline.check("pre-checking the problem")
        model = milp.build(problem, deadline=deadline)
        solver_limits = _solver_limits(limits, deadline)
    except milp.UnsupportedProblem as exc:
        return Plan(status=SolveStatus.ERROR, message=str(exc))
    except OutOfTime as exc:
        return _out_of_time(problem, limits, exc.phase)
    outcome = milp.run_solver(model, solver_limits, deadline)
    if outcome.status.has_plan:
        try:
            stage_plans = milp.extract(problem, model)
        except (StopIteration, ValueError) as exc:
            return Plan(status=SolveStatus.ERROR, solver=outcome.solver,
                        message=f"could not decode the solver's solution: {exc!r}")
        plan = finalize(problem, stage_plans, solver=outcome.solver, status=outcome.status)
        if problem.objective.goal is Goal.LATENCY:
            return _at_shortest_latency(problem, plan, limits, deadline)
        return plan
    if outcome.status is SolveStatus.INFEASIBLE:
        reason = diagnose(problem, limits, deadline)
        return Plan(status=SolveStatus.INFEASIBLE, solver=outcome.solver, reason=reason,
                    message=reason.message)
    if outcome.status is SolveStatus.TIME_LIMIT_NO_SOLUTION:
        return _out_of_time(problem, limits, outcome.message or "solving", outcome.solver)
    return Plan(status=SolveStatus.ERROR, solver=outcome.solver, message=outcome.message or "solver error")


def _at_shortest_latency(problem: Problem, fastest: Plan, limits: SolveLimits, deadline: Deadline) -> Plan:
    """The second lexicographic solve of `Goal.LATENCY`: the best weighted objective among the plans whose
    end-to-end latency is the first solve's (within `latency_tie_ms`). Without an answer in time, the first
    solve's plan stands, reported as not proven optimal."""
    assert fastest.latency_ms is not None
    cap = fastest.latency_ms + latency_tie_ms(problem.slo_ms)
    unproven = replace(fastest, status=SolveStatus.FEASIBLE_AT_TIME_LIMIT,
                       message="the shortest latency was found; the time limit ran out choosing among its plans")
    try:
        model = milp.build(problem, latency_cap_ms=cap, deadline=deadline)
        outcome = milp.run_solver(model, _solver_limits(limits, deadline), deadline)
    except OutOfTime:
        return unproven
    if not outcome.status.has_plan:
        return unproven
    try:
        stage_plans = milp.extract(problem, model)
    except (StopIteration, ValueError):
        return unproven
    proven = fastest.status is SolveStatus.OPTIMAL and outcome.status is SolveStatus.OPTIMAL
    both = SolveStatus.OPTIMAL if proven else SolveStatus.FEASIBLE_AT_TIME_LIMIT
    return finalize(problem, stage_plans, solver=outcome.solver, status=both)


def _stage_latency_floor(problem: Problem, stage: Stage) -> float:
    """The fastest this stage can be, ignoring budgets; inf if no option can carry its load."""
    options = allowed_options(stage, [stage.cascade.light] if stage.cascade else None)
    least = _least_main_load(stage)
    best = math.inf
    for o in options:
        if fixed_pool_replicas(stage, o, least, problem) is None:
            continue
        best = min(best, o.latency_ms)
    if stage.cascade is not None and best < math.inf and all(r.heavy_fraction > 0 for r in stage.cascade.rows):
        fastest_heavy = min((o.latency_ms for o in allowed_options(stage, [stage.cascade.heavy])), default=math.inf)
        # a prompt router sends each request to one model; the others defer some after the light one answered
        best = max(best, fastest_heavy) if stage.cascade.router == "prompt" else best + fastest_heavy
    return best + stage.queue_delay_ms


def precheck(problem: Problem) -> InfeasibleReason | None:
    """Reasons visible without a solver: a stage nothing can serve, or a path slower than the SLO."""
    if problem.drain_budget_ms is not None and problem.drain_budget_ms <= 0:
        return InfeasibleReason(Binding.SLO, "the tightest per-request deadline leaves no time to serve")
    for stage in problem.stages:
        options = allowed_options(stage)
        if not options:
            return InfeasibleReason(Binding.CAPACITY, f"stage {stage.name!r} has no variant to run", stage.name)
        least = _least_main_load(stage)
        if not any(_can_carry(problem, stage, o, least) for o in options):
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


def _can_carry(problem: Problem, stage: Stage, option: Option, least_load: float) -> bool:
    if stage.cascade is not None and option.variant == stage.cascade.heavy:
        return False
    if stage.multi_variant:
        # A split never beats its best option's capacity times the stage's replica limit.
        limit = stage.pinned_replicas or stage.max_replicas
        return stage.load_rps <= capacity_of(option, problem) * limit + EPS
    return fixed_pool_replicas(stage, option, least_load, problem) is not None


UNDIAGNOSED = "infeasible; the time limit ran out before the binding constraint (budget, SLO, capacity) was found"


def diagnose(problem: Problem, limits: SolveLimits, deadline: Deadline | None = None) -> InfeasibleReason:
    """Name the binding constraint family by re-solving with one family relaxed (within the deadline)."""
    deadline = deadline or Deadline.none()
    floor = problem.objective.min_accuracy
    if floor is not None:
        relaxed = _feasible(problem, limits, deadline, relax_accuracy=True)
        if relaxed is None:
            return InfeasibleReason(Binding.UNKNOWN, UNDIAGNOSED)
        if relaxed:
            return InfeasibleReason(Binding.ACCURACY, f"no plan within the SLO and the budget reaches the "
                                                      f"accuracy floor of {floor:g}")
    budget = _feasible(problem, limits, deadline, relax_budget=True)
    if budget:
        return InfeasibleReason(Binding.BUDGET, "the plan needs more resources than the budget allows")
    slo = _feasible(problem, limits, deadline, relax_slo=True) if budget is not None else None
    if slo:
        return InfeasibleReason(Binding.SLO, f"no combination of variants meets the {problem.slo_ms:g} ms SLO")
    if slo is None:
        return InfeasibleReason(Binding.UNKNOWN, UNDIAGNOSED)
    return InfeasibleReason(Binding.CAPACITY, "no combination of variants and replicas carries the load")


def _feasible(problem: Problem, limits: SolveLimits, deadline: Deadline, **relax: bool) -> bool | None:
    """Whether the relaxed problem has a plan; None when the time budget did not allow an answer."""
    try:
        model = milp.build(problem, deadline=deadline, **relax)
        status = milp.run_solver(model, _solver_limits(limits, deadline), deadline).status
    except OutOfTime:
        return None
    if status is SolveStatus.TIME_LIMIT_NO_SOLUTION:
        return None
    return status.has_plan
