"""The planner's semantics, written once without a solver.

The integer program in `milp.py` is an encoding of the rules in this module; the brute-force oracle in
`bruteforce.py` enumerates plans and scores them with them; `check_plan` verifies any plan against them
independently of how it was produced. Keeping the rules here (replicas needed for a load, batch-formation
delay, stage and path latency, accuracy aggregation, cost, reconfiguration penalty) is what lets the tests
say "the MILP equals the brute-force optimum" and mean it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from paretoserve.planner.model import (
    Aggregation,
    Allocation,
    Option,
    Plan,
    Problem,
    SolveStatus,
    Stage,
    StagePlan,
)

EPS = 1e-9
FEASIBILITY_TOL = 1e-6


def latency_tie_ms(slo_ms: float) -> float:
    """End-to-end latencies closer than this are equal under `Goal.LATENCY` (the solver's tolerance on T)."""
    return FEASIBILITY_TOL + 1e-9 * slo_ms
MAX_DRAIN_BATCHES = 1e12
"""Past this many batches in the drain budget the EDF bound cannot bind (and floor() would overflow)."""


def effective_capacity(option: Option, problem: Problem) -> float:
    """Requests/s one replica sustains, also bounded by Sponge's EDF drain budget if set.

    Overflow-safe: a drain budget that is huge (or infinite) against the latency does not bind, and one
    that is not a number leaves no capacity (`validate` refuses both before any solver runs).
    """
    cap = option.capacity_rps
    if problem.drain_budget_ms is not None:
        ratio = problem.drain_budget_ms / option.latency_ms
        if math.isnan(ratio):
            return 0.0
        if ratio < MAX_DRAIN_BATCHES:
            batches_in_budget = math.floor(ratio + EPS)
            cap = min(cap, float(option.batch * option.instances * batches_in_budget))
    return max(cap, 0.0)


def replicas_for(load_rps: float, capacity_rps: float) -> int | None:
    """Fewest replicas whose capacity covers the load; None if no number does."""
    if load_rps <= EPS:
        return 0
    if capacity_rps <= EPS:
        return None
    return max(1, math.ceil(load_rps / capacity_rps - EPS))


def fixed_pool_replicas(stage: Stage, option: Option, load_rps: float, problem: Problem) -> int | None:
    """Replicas of a pool with a known load, after the stage's bounds and pins; None if infeasible."""
    return pool_replicas(stage, effective_capacity(option, problem), load_rps)


def pool_replicas(stage: Stage, capacity_rps: float, load_rps: float) -> int | None:
    """`fixed_pool_replicas` for an option whose effective capacity is already known."""
    needed = replicas_for(load_rps, capacity_rps)
    if needed is None:
        return None
    needed = max(needed, stage.min_replicas)
    if stage.pinned_replicas is not None:
        if needed > stage.pinned_replicas:
            return None
        needed = stage.pinned_replicas
    if needed > stage.max_replicas:
        return None
    return needed


def pool_replicas_many(stage: Stage, capacities: npt.NDArray[np.float64],
                       load_rps: float) -> npt.NDArray[np.float64]:
    """`pool_replicas` for many capacities at once: replica counts as floats, NaN where none fits."""
    if load_rps <= EPS:
        needed = np.zeros_like(capacities)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            needed = np.maximum(1.0, np.ceil(load_rps / capacities - EPS))
        needed[capacities <= EPS] = np.nan
    needed = np.maximum(needed, float(stage.min_replicas))  # NaN stays NaN
    if stage.pinned_replicas is not None:
        needed[needed > stage.pinned_replicas] = np.nan
        needed[~np.isnan(needed)] = float(stage.pinned_replicas)
    needed[needed > stage.max_replicas] = np.nan
    return needed


def batch_delay_ms(batch: int, rate_rps: float, max_queue_delay_ms: float) -> float:
    """Time for a batch to fill at `rate_rps`, capped by Triton's max queue delay (IPA's (b−1)/λ)."""
    if batch <= 1:
        return 0.0
    if rate_rps <= EPS:
        return max_queue_delay_ms
    return min((batch - 1) * 1000.0 / rate_rps, max_queue_delay_ms)


def split_batch_delay_ms(batch: int, max_queue_delay_ms: float) -> float:
    """Multi-variant pools see an unknown share of the rate: charge the full max queue delay."""
    return 0.0 if batch <= 1 else max_queue_delay_ms


def accuracy_range(stage: Stage) -> tuple[float, float]:
    values = [o.accuracy for o in stage.options]
    if stage.cascade is not None:
        values += [r.quality for r in stage.cascade.rows]
    if not values:
        return (0.0, 1.0)
    return (min(values), max(values))


def accuracy_levels(stage: Stage) -> list[float]:
    """The stage's distinct accuracies (variants and cascade rows), ascending."""
    values = {o.accuracy for o in stage.options}
    if stage.cascade is not None:
        values |= {r.quality for r in stage.cascade.rows}
    return sorted(values)


def rank_score(levels: Sequence[float], accuracy: float) -> float:
    """``accuracy``'s rank among ``levels`` rescaled to [0, 1] (the i-th of n scores i/(n-1)); a value between
    two levels is interpolated between their ranks, one outside them is clamped."""
    if len(levels) <= 1:
        return 1.0
    i = bisect.bisect_left(levels, accuracy)
    if i >= len(levels):
        return 1.0
    if i == 0 or levels[i] == accuracy:
        return i / (len(levels) - 1)
    low, high = levels[i - 1], levels[i]
    return (i - 1 + (accuracy - low) / (high - low)) / (len(levels) - 1)


def normalized(stage: Stage, accuracy: float, aggregation: Aggregation) -> float:
    """A stage's contribution to a sum aggregation: the raw accuracy, min–max rescaled, or its rank."""
    if aggregation is Aggregation.RANK_SUM:
        return rank_score(accuracy_levels(stage), accuracy)
    if aggregation is not Aggregation.NORMALIZED_SUM:
        return accuracy
    low, high = accuracy_range(stage)
    if high - low <= EPS:
        return 1.0
    return (accuracy - low) / (high - low)


def stage_score(stage: Stage, plan: StagePlan, aggregation: Aggregation) -> float:
    """A stage's term in a sum aggregation. A traffic split's requests each get one variant, so its score is
    the load-weighted mean of its variants' scores: the same as the normalised load-weighted accuracy for an
    affine normalisation, not for ranks (the MILP sums the variants' scores by share, as here)."""
    if aggregation is Aggregation.RANK_SUM and stage.cascade is None and len(plan.allocations) > 1:
        total = sum(a.load_rps for a in plan.allocations)
        accuracy = {o.variant: o.accuracy for o in stage.options}
        if total > EPS:
            levels = accuracy_levels(stage)
            return sum(rank_score(levels, accuracy[a.variant]) * a.load_rps for a in plan.allocations) / total
    return normalized(stage, plan.accuracy, aggregation)


def aggregate(problem: Problem, plans: Mapping[str, StagePlan]) -> float:
    """Pipeline accuracy score from the stages' plans."""
    agg = problem.objective.aggregation
    if agg is Aggregation.PRODUCT:
        result = 1.0
        for s in problem.stages:
            result *= plans[s.name].accuracy
        return result
    values = [stage_score(s, plans[s.name], agg) for s in problem.stages]
    return sum(values) / len(values)


def allocation_price(problem: Problem, alloc: Allocation | Option, replicas: int) -> float:
    obj = problem.objective
    unit = obj.price("cpu") * alloc.cpu + obj.price("memory") * alloc.memory_gib
    unit += sum(obj.price(name) * amount for name, amount in alloc.gpus)
    return unit * replicas


def cost_normalizer(problem: Problem) -> float:
    """Divisor of the cost term: 1, or the budget's total price when normalizeCost is set."""
    if not problem.objective.normalize_cost:
        return 1.0
    total = problem.objective.price("cpu") * (problem.budget.cpu or 0.0)
    total += sum(problem.objective.price(name) * amount for name, amount in problem.budget.gpus)
    return total if total > EPS else 1.0


def max_load_time(problem: Problem) -> float:
    return max((o.load_time_s for s in problem.stages for o in s.options), default=0.0)


def changed(problem: Problem, stage: str, alloc: Allocation) -> bool:
    """InfAdapter's loading-cost indicator: a deployed variant whose allocation differs from now."""
    if alloc.replicas == 0:
        return False
    for cur in problem.current:
        if cur.stage == stage and cur.variant == alloc.variant:
            same_key = (cur.batch, cur.cpu, cur.instances) == (alloc.batch, alloc.cpu, alloc.instances)
            return not (same_key and cur.replicas == alloc.replicas)
    return True


def load_time_of(stage: Stage, variant: str) -> float:
    """Load time of a variant (O(options): for many look-ups use `load_times`)."""
    return max((o.load_time_s for o in stage.options if o.variant == variant), default=0.0)


def load_times(stage: Stage) -> dict[str, float]:
    """Load time of every variant of the stage, in one pass."""
    out: dict[str, float] = {}
    for o in stage.options:
        out[o.variant] = max(out.get(o.variant, 0.0), o.load_time_s)
    return out


def topological_order(stages: Sequence[Stage]) -> list[Stage]:
    by_name = {s.name: s for s in stages}
    order: list[Stage] = []
    seen: set[str] = set()

    def visit(s: Stage) -> None:
        if s.name in seen:
            return
        seen.add(s.name)
        for dep in s.depends_on:
            visit(by_name[dep])
        order.append(s)

    for s in stages:
        visit(s)
    return order


def start_times(stages: Sequence[Stage], latency: Mapping[str, float]) -> dict[str, float]:
    """Earliest start of every stage: the latest finish among its dependencies."""
    start: dict[str, float] = {}
    for s in topological_order(stages):
        start[s.name] = max((start[d] + latency[d] for d in s.depends_on), default=0.0)
    return start


@dataclass(frozen=True, slots=True)
class Score:
    objective: float
    accuracy: float
    cost: float
    cpu: float
    gpus: tuple[tuple[str, float], ...]
    latency_ms: float
    violations: tuple[str, ...]


def score(problem: Problem, stage_plans: Iterable[StagePlan]) -> Score:
    """Objective value and constraint violations of a complete plan."""
    plans = {sp.stage: sp for sp in stage_plans}
    obj = problem.objective
    violations: list[str] = []
    cost = cpu = 0.0
    gpus: dict[str, float] = {}
    batch_sum = 0.0
    reconfig = 0.0
    for stage in problem.stages:
        sp = plans.get(stage.name)
        if sp is None:
            violations.append(f"stage {stage.name}: missing from the plan")
            continue
        for a in sp.allocations:
            cost += allocation_price(problem, a, a.replicas)
            cpu += a.cpu * a.replicas
            for name, amount in a.gpus:
                gpus[name] = gpus.get(name, 0.0) + amount * a.replicas
            batch_sum += a.batch
            if changed(problem, stage.name, a):
                reconfig = max(reconfig, load_time_of(stage, a.variant))
    if len(plans) < len(problem.stages):
        return Score(-math.inf, 0.0, cost, cpu, tuple(sorted(gpus.items())), math.inf, tuple(violations))
    latency = {name: sp.latency_ms for name, sp in plans.items()}
    starts = start_times(problem.stages, latency)
    end_to_end = max(starts[s.name] + latency[s.name] for s in problem.stages)
    if end_to_end > problem.slo_ms + FEASIBILITY_TOL:
        violations.append(f"latency {end_to_end:.3f} ms exceeds the SLO of {problem.slo_ms} ms")
    if problem.budget.cpu is not None and cpu > problem.budget.cpu + FEASIBILITY_TOL:
        violations.append(f"cpu {cpu} exceeds the budget of {problem.budget.cpu}")
    for name, limit in problem.budget.gpus:
        if gpus.get(name, 0.0) > limit + FEASIBILITY_TOL:
            violations.append(f"{name} {gpus[name]} exceeds the budget of {limit}")
    accuracy = aggregate(problem, plans)
    floor = problem.objective.min_accuracy
    if floor is not None and accuracy < floor - FEASIBILITY_TOL:
        violations.append(f"accuracy {accuracy:.6f} is below the floor of {floor}")
    max_lt = max_load_time(problem)
    value = obj.accuracy * accuracy - obj.cost * cost / cost_normalizer(problem) - obj.batch * batch_sum
    if max_lt > EPS:
        value -= obj.reconfiguration * reconfig / max_lt
    return Score(value, accuracy, cost, cpu, tuple(sorted(gpus.items())), end_to_end, tuple(violations))


def check_plan(problem: Problem, plan: Plan) -> list[str]:
    """Every constraint a plan breaks, re-derived from the problem alone (empty list: valid)."""
    problems: list[str] = []
    stages = {s.name: s for s in problem.stages}
    for sp in plan.stages:
        stage = stages.get(sp.stage)
        if stage is None:
            problems.append(f"plan names unknown stage {sp.stage}")
            continue
        problems += _check_stage(problem, stage, sp)
    problems += list(score(problem, plan.stages).violations)
    return problems


def pre_routed_rps(stage: Stage, sp: StagePlan) -> float:
    """Requests of a cascade stage that go straight to the heavy model at the plan's row (HADIS)."""
    if stage.cascade is None or sp.cascade_row is None or not 0 <= sp.cascade_row < len(stage.cascade.rows):
        return 0.0
    return stage.load_rps * stage.cascade.pre_routed_fraction(stage.cascade.rows[sp.cascade_row])


def covers_load(problem: Problem, plan: Plan) -> bool:
    """Whether a plan sized for an earlier load still has the capacity for this problem's loads."""
    plans = {sp.stage: sp for sp in plan.stages}
    for stage in problem.stages:
        sp = plans.get(stage.name)
        if sp is None:
            return False
        options = {o.key: o for o in stage.options}
        capacity = {"main": 0.0, "light": 0.0, "heavy": 0.0}
        for a in sp.allocations:
            option = options.get((a.variant, a.batch, a.cpu, a.instances))
            if option is None:
                return False
            capacity[a.role] = capacity.get(a.role, 0.0) + effective_capacity(option, problem) * a.replicas
        served = capacity["main"] + capacity["light"] + pre_routed_rps(stage, sp)
        if served + FEASIBILITY_TOL < stage.load_rps:
            return False
        if capacity["heavy"] + FEASIBILITY_TOL < stage.load_rps * (sp.heavy_fraction or 0.0):
            return False
    return True


def _check_stage(problem: Problem, stage: Stage, sp: StagePlan) -> list[str]:
    out: list[str] = []
    options = {o.key: o for o in stage.options}
    capacity = 0.0
    served = 0.0
    for a in sp.allocations:
        option = options.get((a.variant, a.batch, a.cpu, a.instances))
        if option is None:
            out.append(f"stage {stage.name}: {a.variant} b={a.batch} cpu={a.cpu} is not an option")
            continue
        if stage.pinned_variants and a.variant not in stage.pinned_variants and stage.cascade is None:
            out.append(f"stage {stage.name}: variant {a.variant} is not pinned")
        cap = effective_capacity(option, problem) * a.replicas
        if a.load_rps > cap + FEASIBILITY_TOL:
            out.append(f"stage {stage.name}: {a.variant} gets {a.load_rps} rps > capacity {cap}")
        if a.role in ("main", "light"):
            capacity += cap
            served += a.load_rps
        if a.replicas > stage.max_replicas:
            out.append(f"stage {stage.name}: {a.replicas} replicas > max {stage.max_replicas}")
    main = [a for a in sp.allocations if a.role in ("main", "light")]
    replicas = sum(a.replicas for a in main)
    if replicas < stage.min_replicas:
        out.append(f"stage {stage.name}: {replicas} replicas < min {stage.min_replicas}")
    if stage.pinned_replicas is not None and replicas != stage.pinned_replicas:
        out.append(f"stage {stage.name}: {replicas} replicas, pinned {stage.pinned_replicas}")
    served += pre_routed_rps(stage, sp)
    if abs(served - stage.load_rps) > FEASIBILITY_TOL * max(1.0, stage.load_rps):
        out.append(f"stage {stage.name}: serves {served} of {stage.load_rps} rps")
    if stage.cascade is not None:
        heavy = [a for a in sp.allocations if a.role == "heavy"]
        need = stage.load_rps * (sp.heavy_fraction or 0.0)
        have = sum(effective_capacity(options[(a.variant, a.batch, a.cpu, a.instances)], problem)
                   * a.replicas for a in heavy if (a.variant, a.batch, a.cpu, a.instances) in options)
        if need > have + FEASIBILITY_TOL:
            out.append(f"stage {stage.name}: heavy capacity {have} < deferred load {need}")
    return out


def finalize(problem: Problem, stage_plans: list[StagePlan], *, solver: str,
             status: SolveStatus = SolveStatus.OPTIMAL, message: str = "") -> Plan:
    """Attach start times and the scored totals to a set of stage plans."""
    latency = {sp.stage: sp.latency_ms for sp in stage_plans}
    starts = start_times(problem.stages, latency)
    by_name = {sp.stage: sp for sp in stage_plans}
    ordered = []
    for stage in problem.stages:
        sp = by_name[stage.name]
        ordered.append(StagePlan(
            sp.stage, sp.allocations, starts[sp.stage], sp.latency_ms, sp.accuracy,
            sp.threshold, sp.heavy_fraction, sp.cascade_row,
        ))
    s = score(problem, ordered)
    return Plan(
        status=status, stages=tuple(ordered), objective=s.objective, accuracy=s.accuracy, cost=s.cost,
        cpu=s.cpu, gpus=s.gpus, latency_ms=s.latency_ms, solver=solver, message=message,
    )
