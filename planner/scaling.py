"""The fast path's plan: the running pools, grown to carry a higher load with the same traffic split.

Between two decisions the loop only checks the load (`control.check_load`). When the load outgrew the
running plan, solving the whole program again would often switch variants or cores per replica: new pools
that load their models for seconds, a traffic split that waits for them, and, while the load keeps rising,
another switch two seconds later that waits again. `scale_out` answers the urgent question instead: the
same pools (variant, batch, cores, instances, cascade threshold), each with the replicas its share of the
new load needs. New replicas of a running pool take load as soon as they are ready and the split does not
change, so capacity arrives as fast as pods start. Choosing the best variants again is the next decision's
job, at the interval. A plan that would break a constraint (budget, replica bounds, pinned counts) is no
fast-path plan: the caller then runs the full decision.

The same rebuild without growing (`as_running`) is the running plan as it stands at a round's load and queue
delay: the policy keeps it when a new plan is no better (`policy.decide`).
"""

from __future__ import annotations

from paretoserve.planner.evaluate import (
    EPS,
    check_plan,
    effective_capacity,
    finalize,
    replicas_for,
)
from paretoserve.planner.model import Allocation, Option, Plan, Problem, Stage, StagePlan
from paretoserve.planner.stageplans import cascade_plan, single_plan, split_plan

SOLVER = "scale-out"


def _loads(stage: Stage, sp: StagePlan) -> list[float] | None:
    """Each of `sp`'s pools' load at `stage`'s load, at the plan's split: a cascade's rows fix the light and
    heavy shares, a traffic split keeps its proportions (None for a split planned for no load)."""
    if stage.cascade is not None and sp.cascade_row is not None:
        if not 0 <= sp.cascade_row < len(stage.cascade.rows):
            return None  # the spec's rows changed: the running split is no option of this problem
        row = stage.cascade.rows[sp.cascade_row]
        light, heavy = stage.load_rps * stage.cascade.light_fraction(row), stage.load_rps * row.heavy_fraction
        return [light if a.role == "light" else heavy for a in sp.allocations]
    if not stage.multi_variant:
        return [stage.load_rps] * len(sp.allocations)
    served = sum(a.load_rps for a in sp.allocations)
    return None if served <= EPS else [a.load_rps * stage.load_rps / served for a in sp.allocations]


def _rebuilt(problem: Problem, sp: StagePlan, *, grow: bool) -> StagePlan | None:
    """`sp`'s pools at `problem`'s load of its stage with the same split, built as the solver builds a stage
    plan (`stageplans`), so its latency has this problem's batching and queue delays. `grow`: each pool gets
    the replicas its share needs (never fewer than now); otherwise the replicas stay as they run."""
    stage = next((s for s in problem.stages if s.name == sp.stage), None)
    loads = None if stage is None else _loads(stage, sp)
    if stage is None or loads is None:
        return None
    options = {o.key: o for o in stage.options}
    pools: list[tuple[Allocation, Option, int]] = []
    for a, load in zip(sp.allocations, loads, strict=True):
        option = options.get((a.variant, a.batch, a.cpu, a.instances))
        if option is None:
            return None
        need = replicas_for(load, effective_capacity(option, problem)) if grow else a.replicas
        if need is None:
            return None
        pools.append((a, option, max(a.replicas, need)))
    if stage.cascade is not None and sp.cascade_row is not None:
        light = next(((o, n) for a, o, n in pools if a.role == "light"), None)
        heavy = next(((o, n) for a, o, n in pools if a.role == "heavy"), None)
        if light is None:
            return None
        return cascade_plan(stage, sp.cascade_row, light[0], light[1], heavy[0] if heavy else None,
                            heavy[1] if heavy else 0)
    if stage.multi_variant:
        return split_plan(stage, [(o, n) for _, o, n in pools], loads)
    if len(pools) != 1:
        return None
    return single_plan(stage, pools[0][1], pools[0][2])


def _at_load(problem: Problem, plan: Plan, *, grow: bool, solver: str) -> Plan | None:
    stages: list[StagePlan] = []
    for sp in plan.stages:
        rebuilt = _rebuilt(problem, sp, grow=grow)
        if rebuilt is None:
            return None
        stages.append(rebuilt)
    if {sp.stage for sp in stages} != {s.name for s in problem.stages}:
        return None
    candidate = finalize(problem, stages, solver=solver)
    return None if check_plan(problem, candidate) else candidate


def scale_out(problem: Problem, plan: Plan) -> Plan | None:
    """`plan`'s pools with the replicas `problem`'s loads need at the same split (never fewer than now);
    None when a pool is no longer an option or the grown plan breaks a constraint."""
    return _at_load(problem, plan, grow=True, solver=SOLVER)


def as_running(problem: Problem, plan: Plan) -> Plan | None:
    """`plan` as it runs (same pools, replicas and threshold) at `problem`'s loads and queue delays; None when
    it breaks a constraint there (capacity, latency, budget) or a pool is no longer an option."""
    return _at_load(problem, plan, grow=False, solver=plan.solver)
