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
"""

from __future__ import annotations

from dataclasses import replace

from paretoserve.planner.evaluate import (
    EPS,
    check_plan,
    effective_capacity,
    finalize,
    pre_routed_rps,
    replicas_for,
)
from paretoserve.planner.model import Allocation, Plan, Problem, StagePlan

SOLVER = "scale-out"


def _grown(problem: Problem, sp: StagePlan) -> StagePlan | None:
    stage = next((s for s in problem.stages if s.name == sp.stage), None)
    if stage is None:
        return None
    served = sum(a.load_rps for a in sp.allocations if a.role in ("main", "light"))
    direct = pre_routed_rps(stage, sp) / stage.load_rps if stage.load_rps > EPS else 0.0
    if served <= EPS or direct >= 1.0:
        return None
    ratio = stage.load_rps / (served / (1.0 - direct))
    options = {o.key: o for o in stage.options}
    allocations: list[Allocation] = []
    for a in sp.allocations:
        option = options.get((a.variant, a.batch, a.cpu, a.instances))
        if option is None:
            return None
        load = a.load_rps * ratio
        need = replicas_for(load, effective_capacity(option, problem))
        if need is None:
            return None
        allocations.append(replace(a, load_rps=load, replicas=max(a.replicas, need)))
    return replace(sp, allocations=tuple(allocations))


def scale_out(problem: Problem, plan: Plan) -> Plan | None:
    """`plan`'s pools with the replicas `problem`'s loads need at the same split (never fewer than now);
    None when a pool is no longer an option or the grown plan breaks a constraint."""
    stages: list[StagePlan] = []
    for sp in plan.stages:
        grown = _grown(problem, sp)
        if grown is None:
            return None
        stages.append(grown)
    if {sp.stage for sp in stages} != {s.name for s in problem.stages}:
        return None
    candidate = finalize(problem, stages, solver=SOLVER)
    return None if check_plan(problem, candidate) else candidate
