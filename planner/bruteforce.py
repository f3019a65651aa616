"""Exhaustive search over every plan: the oracle the MILP is tested and benchmarked against.

It enumerates each stage's valid plans (`stageplans.enumerate_stage`) and walks their cross product
depth-first in topological order, cutting a branch only when it already breaks the SLO or a budget
(both only grow deeper down). Exponential by design: use it on small instances, and in
`paretoserve bench planner` to show how much the MILP saves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from paretoserve.planner.evaluate import (
    EPS,
    FEASIBILITY_TOL,
    allocation_price,
    changed,
    cost_normalizer,
    finalize,
    latency_tie_ms,
    load_time_of,
    max_load_time,
    stage_score,
    topological_order,
)
from paretoserve.planner.model import Aggregation, Goal, Plan, Problem, SolveStatus, StagePlan
from paretoserve.planner.stageplans import enumerate_stage


@dataclass(frozen=True, slots=True)
class _Candidate:
    plan: StagePlan
    latency: float
    cost: float
    cpu: float
    gpus: tuple[tuple[str, float], ...]
    accuracy: float
    batch: float
    reconfig: float


def _candidates(problem: Problem) -> list[list[_Candidate]]:
    agg = problem.objective.aggregation
    out: list[list[_Candidate]] = []
    for stage in topological_order(problem.stages):
        cands = []
        for sp in enumerate_stage(problem, stage):
            gpus: dict[str, float] = {}
            for a in sp.allocations:
                for name, amount in a.gpus:
                    gpus[name] = gpus.get(name, 0.0) + amount * a.replicas
            reconfig = max(
                (load_time_of(stage, a.variant) for a in sp.allocations if changed(problem, stage.name, a)),
                default=0.0,
            )
            cands.append(
                _Candidate(
                    plan=sp,
                    latency=sp.latency_ms,
                    cost=sum(allocation_price(problem, a, a.replicas) for a in sp.allocations),
                    cpu=sum(a.cpu * a.replicas for a in sp.allocations),
                    gpus=tuple(gpus.items()),
                    accuracy=stage_score(stage, sp, agg),
                    batch=float(sum(a.batch for a in sp.allocations)),
                    reconfig=reconfig,
                )
            )
        out.append(cands)
    return out


def brute_force(problem: Problem) -> Plan:
    """The optimal plan by enumeration; INFEASIBLE (without a diagnosed reason) if none exists."""
    order = topological_order(problem.stages)
    index = {s.name: i for i, s in enumerate(order)}
    deps = [[index[d] for d in s.depends_on] for s in order]
    per_stage = _candidates(problem)
    obj = problem.objective
    product = obj.aggregation is Aggregation.PRODUCT
    n_stages = len(order)
    norm = cost_normalizer(problem)
    max_lt = max_load_time(problem)
    cpu_budget = problem.budget.cpu if problem.budget.cpu is not None else math.inf
    gpu_budget = dict(problem.budget.gpus)
    slo = problem.slo_ms + FEASIBILITY_TOL
    # ties within rounding, relative to the weights (the schema accepts 1e-7 as well as 1e6)
    tie = 1e-12 * (max(obj.accuracy, obj.cost, obj.batch, obj.reconfiguration) or 1.0)

    floor = -math.inf if obj.min_accuracy is None else obj.min_accuracy - FEASIBILITY_TOL
    by_latency = obj.goal is Goal.LATENCY
    latency_tie = latency_tie_ms(problem.slo_ms)
    best_latency = math.inf
    best_value = -math.inf
    best: list[_Candidate] | None = None
    finish = [0.0] * n_stages
    chosen: list[_Candidate] = []

    def walk(depth: int, cost: float, cpu: float, gpus: dict[str, float], acc: float, batch: float,
             reconfig: float) -> None:
        nonlocal best_value, best, best_latency
        if depth == n_stages:
            accuracy = acc if product else acc / n_stages
            if accuracy < floor:
                return
            value = obj.accuracy * accuracy - obj.cost * cost / norm - obj.batch * batch
            if max_lt > EPS:
                value -= obj.reconfiguration * reconfig / max_lt
            if by_latency:
                end = max(finish)
                if end < best_latency - latency_tie:
                    best_latency, best_value, best = end, value, list(chosen)
                elif end <= best_latency + latency_tie and value > best_value + tie:
                    best_value, best = value, list(chosen)
            elif value > best_value + tie:
                best_value, best = value, list(chosen)
            return
        start = max((finish[d] for d in deps[depth]), default=0.0)
        for cand in per_stage[depth]:
            end = start + cand.latency
            new_cpu = cpu + cand.cpu
            if end > slo or new_cpu > cpu_budget + FEASIBILITY_TOL:
                continue
            new_gpus = dict(gpus)
            over = False
            for name, amount in cand.gpus:
                new_gpus[name] = new_gpus.get(name, 0.0) + amount
                if new_gpus[name] > gpu_budget.get(name, math.inf) + FEASIBILITY_TOL:
                    over = True
            if over:
                continue
            finish[depth] = end
            chosen.append(cand)
            walk(depth + 1, cost + cand.cost, new_cpu, new_gpus,
                 acc * cand.accuracy if product else acc + cand.accuracy,
                 batch + cand.batch, max(reconfig, cand.reconfig))
            chosen.pop()

    walk(0, 0.0, 0.0, {}, 1.0 if product else 0.0, 0.0, 0.0)
    if best is None:
        return Plan(status=SolveStatus.INFEASIBLE, solver="brute-force", message="no feasible plan")
    return finalize(problem, [c.plan for c in best], solver="brute-force")
