"""Structural checks of a `Problem` before any solver runs.

A `Problem` built by `compile.py` from a validated manifest passes these checks; one built by hand (the
simulator's baselines, tests, the benchmark) may not. Errors name the stage and field, so a caller can
report them as the plan's ERROR message instead of a stack trace from deep inside the MILP.
"""

from __future__ import annotations

import math

from paretoserve.planner.model import Aggregation, Baseline, Problem


class ProblemError(ValueError):
    """The problem is malformed (not merely infeasible)."""


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def validate(problem: Problem) -> None:
    if not problem.stages:
        raise ProblemError("the problem has no stages")
    if not (_finite(problem.slo_ms) and problem.slo_ms > 0):
        raise ProblemError(f"slo_ms must be a positive number, got {problem.slo_ms!r}")
    if problem.drain_budget_ms is not None and not _finite(problem.drain_budget_ms):
        raise ProblemError(f"drain_budget_ms must be a finite number, got {problem.drain_budget_ms!r}")
    obj = problem.objective
    weights = [obj.accuracy, obj.cost, obj.batch, obj.reconfiguration, *(p for _, p in obj.prices)]
    if not all(_finite(w) and w >= 0 for w in weights):
        raise ProblemError("objective weights and prices must be finite numbers >= 0")
    budget = [*(() if problem.budget.cpu is None else (problem.budget.cpu,)), *(g for _, g in problem.budget.gpus)]
    if not all(_finite(b) and b >= 0 for b in budget):
        raise ProblemError("budgets must be finite numbers >= 0")
    names = [s.name for s in problem.stages]
    if len(set(names)) != len(names):
        raise ProblemError("stage names must be unique")
    known = set(names)
    product = problem.objective.aggregation is Aggregation.PRODUCT
    for s in problem.stages:
        where = f"stage {s.name!r}"
        for dep in s.depends_on:
            if dep not in known:
                raise ProblemError(f"{where}: depends_on names unknown stage {dep!r}")
        if not (_finite(s.load_rps) and s.load_rps >= 0):
            raise ProblemError(f"{where}: load_rps must be >= 0, got {s.load_rps!r}")
        if s.min_replicas < 0 or s.max_replicas < 1 or s.min_replicas > s.max_replicas:
            raise ProblemError(f"{where}: need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if not all(_finite(d) and d >= 0 for d in (s.max_queue_delay_ms, s.queue_delay_ms)):
            raise ProblemError(f"{where}: max_queue_delay_ms and queue_delay_ms must be finite numbers >= 0")
        for o in s.options:
            if o.batch < 1 or o.instances < 1:
                raise ProblemError(f"{where}: option {o.variant} needs batch >= 1 and instances >= 1")
            if not (_finite(o.latency_ms) and o.latency_ms > 0):
                raise ProblemError(f"{where}: option {o.variant} b={o.batch} needs latency_ms > 0")
            if not (_finite(o.capacity_rps) and o.capacity_rps >= 0):
                raise ProblemError(f"{where}: option {o.variant} b={o.batch} needs capacity_rps >= 0")
            amounts = [o.cpu, o.memory_gib, o.load_time_s, *(g for _, g in o.gpus)]
            if not all(_finite(a) and a >= 0 for a in amounts):
                raise ProblemError(f"{where}: option {o.variant} needs finite resources and load time >= 0")
            if not _finite(o.accuracy):
                raise ProblemError(f"{where}: option {o.variant} needs a finite accuracy")
            if product and not 0 <= o.accuracy <= 1:
                raise ProblemError(
                    f"{where}: accuracy of {o.variant} is {o.accuracy}; the product aggregation needs "
                    "scores in [0, 1] (use normalizedSum or rankSum for other scales)"
                )
        if s.cascade is not None:
            variants = {o.variant for o in s.options}
            for role in (s.cascade.light, s.cascade.heavy):
                if role not in variants:
                    raise ProblemError(f"{where}: cascade variant {role!r} has no options")
            if not s.cascade.rows:
                raise ProblemError(f"{where}: the cascade has no rows")
            for r in s.cascade.rows:
                if not _finite(r.quality):
                    raise ProblemError(f"{where}: cascade quality must be finite")
                if not 0 <= r.heavy_fraction <= 1:
                    raise ProblemError(f"{where}: heavy_fraction must lie in [0, 1]")
                if product and not 0 <= r.quality <= 1:
                    raise ProblemError(f"{where}: cascade quality {r.quality} is outside [0, 1] for product")
    from paretoserve.planner.spec import find_cycle

    cycle = find_cycle({s.name: list(s.depends_on) for s in problem.stages})
    if cycle:
        raise ProblemError("depends_on forms a cycle: " + " -> ".join(cycle))
    if problem.baseline is Baseline.SCALE_ONLY and not any(s.pinned_variants for s in problem.stages):
        raise ProblemError("the scale-only baseline needs pinned_variants on the stages")
    if problem.baseline is Baseline.SWITCH_ONLY and not any(s.pinned_replicas for s in problem.stages):
        raise ProblemError("the switch-only baseline needs pinned_replicas on the stages")
