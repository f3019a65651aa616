"""The one integer program, built with PuLP and solved by HiGHS (CBC as fallback).

This is the only module that imports `pulp`. `build` encodes the rules of `evaluate.py` for a whole
`Problem`; `run_solver` maps solver outcomes onto `SolveStatus` without ever calling a time-out
"infeasible"; `extract` decodes the solution into stage plans through the same builders the brute-force
oracle uses. Stage kinds and the papers they come from:

- single variant per stage, replicas from n·h(b) ≥ λ, batch-formation delay (b−1)/λ (IPA; FA2 and RIM
  as pins; Sponge's cores and EDF drain bound through the options' capacities);
- several variants with a traffic split and a loading-cost penalty against the current plan (InfAdapter);
- a cascade: threshold row z_j of an f(t) / Pareto table, light and heavy pools, heavy replicas sized to
  λ·f(t_j) (DiffServe, HADIS).

The DAG's latency is bounded with start-time variables, t_j ≥ t_i + L_i for each edge and t + L ≤ SLO
for every stage, so no path is ever enumerated. A product of stage accuracies is linearised exactly by a
McCormick chain over the stages' selection binaries.

`build` looks at an injected `Deadline` between stages and every `CHECK_EVERY` options, so the time
budget of a solve covers building the program too (`OutOfTime` names the phase).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pulp

from paretoserve.planner.evaluate import (
    EPS,
    FEASIBILITY_TOL,
    allocation_price,
    batch_delay_ms,
    cost_normalizer,
    effective_capacity,
    load_times,
    max_load_time,
    normalized,
    replicas_for,
    split_batch_delay_ms,
    topological_order,
)
from paretoserve.planner.model import (
    Aggregation,
    Deadline,
    Goal,
    Option,
    OutOfTime,
    Problem,
    SolveLimits,
    SolveStatus,
    Stage,
    StagePlan,
)
from paretoserve.planner.stageplans import (
    CHECK_EVERY,
    PoolFacts,
    allowed_options,
    cascade_plan,
    fixed_changes,
    pareto_pool,
    pareto_rows,
    single_plan,
    split_plan,
)

Terms = list[tuple[Any, float]]


@dataclass
class StageVars:
    """The decision variables of one stage, kept for decoding."""

    stage: Stage
    deadline: Deadline = field(default_factory=Deadline.none)
    load_time: dict[str, float] = field(default_factory=dict)  # per variant
    fixed: list[tuple[Option, Any, int]] = field(default_factory=list)  # option, x, replicas
    heavy: list[tuple[Option, Any, Any]] = field(default_factory=list)  # option, x, n
    rows: list[Any] = field(default_factory=list)  # z_j
    row_index: list[int] = field(default_factory=list)  # cascade row of each z_j
    split: list[tuple[Option, Any, Any, Any]] = field(default_factory=list)  # option, x, n (or a count), load
    latency: Any = None  # an affine expression
    accuracy_selectors: list[tuple[float, Any, float]] = field(default_factory=list)
    """(accuracy, variable, per unit): the stage's accuracy is Σ accuracy · per unit · variable -- a selection
    binary (per unit 1) or a split's load on one variant (per unit 1/λ)."""


@dataclass
class Model:
    lp: Any
    stages: list[StageVars]


class UnsupportedProblem(ValueError):
    """A combination the program cannot express exactly; reported as status ERROR."""


def _expr(terms: Terms, constant: float = 0.0) -> Any:
    """An affine expression; repeated variables are summed (PuLP's constructor would overwrite)."""
    summed: dict[Any, float] = {}
    for var, coef in terms:
        summed[var] = summed.get(var, 0.0) + coef
    return pulp.LpAffineExpression([(v, c) for v, c in summed.items() if c != 0.0], constant=constant)


def build(problem: Problem, *, relax_budget: bool = False, relax_slo: bool = False, relax_accuracy: bool = False,
          latency_cap_ms: float | None = None, deadline: Deadline | None = None) -> Model:
    """Encode the problem. The relaxations drop one constraint family to diagnose infeasibility.

    Under `Goal.LATENCY` the program minimises the end-to-end latency T ≥ t_s + L_s (every stage), unless
    `latency_cap_ms` is given: then T ≤ cap and the weighted objective is maximised (the second of the two
    lexicographic solves, see `solve.py`).
    Raises `OutOfTime` (from `deadline.check`) when the time budget runs out while building.
    """
    deadline = deadline or Deadline.none()
    lp = pulp.LpProblem("paretoserve", pulp.LpMaximize)
    obj = problem.objective
    product = obj.aggregation is Aggregation.PRODUCT
    if product and len(problem.stages) > 1 and any(s.multi_variant and s.load_rps > 0 for s in problem.stages):
        raise UnsupportedProblem(
            "accuracy aggregation 'product' needs single-variant stages when the pipeline has several stages")
    objective: Terms = []
    cpu_terms: Terms = []
    gpu_terms: dict[str, Terms] = {}
    reconfig_terms: list[tuple[Any, float]] = []  # (indicator: a binary or a sum of exclusive ones, load time)
    norm = cost_normalizer(problem)
    stage_vars: list[StageVars] = []

    def add_resources(option: Option, amount: Any, replicas: float) -> None:
        """Charge `replicas` replicas of `option`, scaled by variable `amount` (x or n)."""
        objective.append((amount, -obj.cost * allocation_price(problem, option, 1) * replicas / norm))
        cpu_terms.append((amount, option.cpu * replicas))
        for name, per in option.gpus:
            gpu_terms.setdefault(name, []).append((amount, per * replicas))

    for s_index, stage in enumerate(problem.stages):
        deadline.check(f"building stage {stage.name!r} ({len(stage.options)} options)")
        sv = StageVars(stage, deadline, load_times(stage))
        tag = f"s{s_index}"
        if stage.cascade is not None:
            _build_cascade(lp, problem, sv, tag, objective, add_resources, reconfig_terms)
        elif stage.multi_variant:
            _build_split(lp, problem, sv, tag, objective, add_resources, reconfig_terms)
        else:
            _build_single(lp, problem, sv, tag, objective, add_resources, reconfig_terms)
        stage_vars.append(sv)

    # Latency over the DAG with start times.
    end_to_end: Any = None
    if not relax_slo:
        start = {s.name: lp.add_variable(f"t_{i}", lowBound=0) for i, s in enumerate(problem.stages)}
        latency = {sv.stage.name: sv.latency for sv in stage_vars}
        minimise = obj.goal is Goal.LATENCY
        if minimise:
            end_to_end = lp.add_variable("end_to_end", lowBound=0, upBound=problem.slo_ms)
        for stage in topological_order(problem.stages):
            for dep in stage.depends_on:
                lp += start[stage.name] >= start[dep] + latency[dep]
            lp += start[stage.name] + latency[stage.name] <= (end_to_end if minimise else problem.slo_ms)
        if minimise and latency_cap_ms is not None:
            lp += end_to_end <= latency_cap_ms

    if not relax_budget:
        if problem.budget.cpu is not None:
            lp += _expr(cpu_terms) <= problem.budget.cpu
        for name, limit in problem.budget.gpus:
            lp += _expr(gpu_terms.get(name, [])) <= limit

    deadline.check("linking the stages' accuracies")
    floor = None if relax_accuracy else obj.min_accuracy
    if obj.accuracy > 0 or floor is not None:
        accuracy = _accuracy_expression(lp, problem, stage_vars, product)
        objective.extend((var, obj.accuracy * coef) for var, coef in accuracy.items())
        if floor is not None:
            lp += accuracy >= floor - FEASIBILITY_TOL

    max_lt = max_load_time(problem)
    if obj.reconfiguration > 0 and max_lt > EPS and reconfig_terms:
        worst = lp.add_variable("loading_cost", lowBound=0)
        for indicator, load_time in reconfig_terms:
            lp += worst >= load_time * indicator
        objective.append((worst, -obj.reconfiguration / max_lt))

    if end_to_end is not None and latency_cap_ms is None:
        objective = [(end_to_end, -1.0)]  # the first lexicographic solve: the shortest critical path only

    # Scaled so its largest coefficient is 1: HiGHS's tolerances (dual feasibility 1e-7, absolute gap) are
    # absolute, so at weights of 1e-7 an unscaled objective lets "optimal" fall short by as much as it
    # holds, and at 1e6 it would make the gap test needlessly strict. The plan's objective is recomputed
    # unscaled from the decoded plan (`evaluate.finalize`).
    summed = _expr(objective)
    scale = max((abs(c) for c in summed.values()), default=0.0)
    lp += _expr([(var, c / scale) for var, c in summed.items()]) if scale > 0 else summed
    deadline.check("finishing the program")
    return Model(lp, stage_vars)


def _build_single(lp: Any, problem: Problem, sv: StageVars, tag: str, objective: Terms,
                  add_resources: Any, reconfig_terms: list[tuple[Any, float]]) -> None:
    stage = sv.stage
    latency: Terms = []
    for k, (option, n) in enumerate(pareto_pool(problem, stage, allowed_options(stage), deadline=sv.deadline)):
        if k % CHECK_EVERY == 0:
            sv.deadline.check(f"adding the options of stage {stage.name!r}")
        x = lp.add_variable(f"x_{tag}_{k}", cat=pulp.LpBinary)
        sv.fixed.append((option, x, n))
        add_resources(option, x, n)
        objective.append((x, -problem.objective.batch * option.batch))
        latency.append((x, option.latency_ms + batch_delay_ms(option.batch, stage.load_rps,
                                                              stage.max_queue_delay_ms)))
        sv.accuracy_selectors.append((option.accuracy, x, 1.0))
        if fixed_changes(problem, stage, option, n):
            reconfig_terms.append((x, sv.load_time[option.variant]))
    lp += _expr([(x, 1.0) for _, x, _ in sv.fixed]) == 1
    sv.latency = _expr(latency, stage.queue_delay_ms)


def _build_cascade(lp: Any, problem: Problem, sv: StageVars, tag: str, objective: Terms,
                   add_resources: Any, reconfig_terms: list[tuple[Any, float]]) -> None:
    stage = sv.stage
    cascade = stage.cascade
    assert cascade is not None  # guarded by build()
    light_options = allowed_options(stage, [cascade.light])
    heavy_options = allowed_options(stage, [cascade.heavy])
    sv.row_index = pareto_rows(stage, heavy_options, light_options)
    rows = [cascade.rows[j] for j in sv.row_index]
    sv.rows = [lp.add_variable(f"z_{tag}_{j}", cat=pulp.LpBinary) for j in sv.row_index]
    lp += _expr([(z, 1.0) for z in sv.rows]) == 1
    sv.accuracy_selectors = [(row.quality, z, 1.0) for row, z in zip(rows, sv.rows, strict=True)]

    # The light pool is a fixed-load pool for a given row; rows that pre-route part of the traffic to the
    # heavy model leave it less, so rows are grouped by light load and each group picks one light option.
    groups: dict[float, list[Any]] = {}
    for z, row in zip(sv.rows, rows, strict=True):
        groups.setdefault(stage.load_rps * cascade.light_fraction(row), []).append(z)
    light_latency: Terms = []
    facts = PoolFacts.of(problem, stage, light_options)
    for g, (load, selectors) in enumerate(groups.items()):
        sv.deadline.check(f"adding light pool {g} of {len(groups)} of stage {stage.name!r}")
        chosen: Terms = []
        for k, (option, n) in enumerate(pareto_pool(problem, stage, light_options, load, sv.deadline, facts)):
            if k and k % CHECK_EVERY == 0:
                sv.deadline.check(f"adding light pool {g} of {len(groups)} of stage {stage.name!r}")
            x = lp.add_variable(f"xl_{tag}_{g}_{k}", cat=pulp.LpBinary)
            sv.fixed.append((option, x, n))
            add_resources(option, x, n)
            objective.append((x, -problem.objective.batch * option.batch))
            light_latency.append((x, option.latency_ms + batch_delay_ms(option.batch, load,
                                                                        stage.max_queue_delay_ms)))
            if fixed_changes(problem, stage, option, n):
                reconfig_terms.append((x, sv.load_time[option.variant]))
            chosen.append((x, 1.0))
        lp += _expr(chosen) == _expr([(z, 1.0) for z in selectors])

    heavy_latency = lp.add_variable(f"lh_{tag}", lowBound=0)
    capacity: Terms = []
    # The heavy batch's wait depends on the row: q_b = Σ_j q(b, j)·z_j, one variable per batch size (so each
    # option's latency constraint has three terms, not one per row).
    waits: dict[int, tuple[Any, float]] = {}
    for k, option in enumerate(heavy_options):
        if k % CHECK_EVERY == 0:
            sv.deadline.check(f"adding the heavy options of stage {stage.name!r}")
        cap = effective_capacity(option, problem)
        if cap <= EPS:
            continue
        x = lp.add_variable(f"xh_{tag}_{k}", cat=pulp.LpBinary)
        n = lp.add_variable(f"nh_{tag}_{k}", lowBound=0, upBound=stage.max_replicas, cat=pulp.LpInteger)
        lp += n >= x
        lp += n <= stage.max_replicas * x
        sv.heavy.append((option, x, n))
        add_resources(option, n, 1)
        objective.append((x, -problem.objective.batch * option.batch))
        capacity.append((n, cap))
        if option.batch not in waits:
            delays = [batch_delay_ms(option.batch, stage.load_rps * row.heavy_fraction, stage.max_queue_delay_ms)
                      for row in rows]
            wait = lp.add_variable(f"qh_{tag}_{option.batch}", lowBound=0)
            lp += _expr([(wait, 1.0)] + [(z, -d) for z, d in zip(sv.rows, delays, strict=True)]) == 0
            waits[option.batch] = (wait, max(delays))
        wait, longest = waits[option.batch]
        big_m = option.latency_ms + longest
        lp += heavy_latency >= _expr([(wait, 1.0), (x, big_m)], option.latency_ms - big_m)
        _variable_pool_changes(lp, problem, sv, option, x, n, f"{tag}_{k}", reconfig_terms)
    lp += _expr(capacity) >= _expr([(z, stage.load_rps * row.heavy_fraction)
                                    for z, row in zip(sv.rows, rows, strict=True)])
    heavy_on = lp.add_variable(f"yh_{tag}", lowBound=0, upBound=1)  # = Σ x_h: a heavy option is chosen
    lp += _expr([(heavy_on, 1.0)] + [(x, -1.0) for _, x, _ in sv.heavy]) == 0
    for z, row in zip(sv.rows, rows, strict=True):
        if row.heavy_fraction > 0:
            lp += z <= heavy_on
    if cascade.router == "prompt":  # each request visits one model: the slower path, not the sum
        slower = lp.add_variable(f"lc_{tag}", lowBound=0)
        lp += slower >= _expr(light_latency)
        lp += slower >= heavy_latency
        sv.latency = _expr([(slower, 1.0)], stage.queue_delay_ms)
    else:  # a deferred request runs on the light model, then the heavy one
        sv.latency = _expr(light_latency + [(heavy_latency, 1.0)], stage.queue_delay_ms)


def _variable_pool_changes(lp: Any, problem: Problem, sv: StageVars, option: Option, x: Any, n: Any,
                           tag: str, reconfig_terms: list[tuple[Any, float]]) -> None:
    """Loading-cost indicator of an option whose replica count is a decision variable."""
    if problem.objective.reconfiguration <= 0:
        return
    stage = sv.stage
    current = [c for c in problem.current if c.stage == stage.name and c.variant == option.variant]
    if not current or (current[0].batch, current[0].cpu, current[0].instances) != (
        option.batch, option.cpu, option.instances
    ):
        reconfig_terms.append((x, sv.load_time[option.variant]))
        return
    prev = current[0].replicas
    moved = lp.add_variable(f"chg_{tag}", cat=pulp.LpBinary)
    big_m = stage.max_replicas + prev
    lp += n - prev <= big_m * moved
    lp += prev - n <= big_m * moved + big_m * (1 - x)
    reconfig_terms.append((moved, sv.load_time[option.variant]))


def split_replica_bound(problem: Problem, stage: Stage, option: Option, capacity: float) -> int:
    """The most replicas of one split option an optimal plan may need -- the big-M of its ``n <= M·x``.

    No more than the budget holds, and no more than carry the stage's whole load: a further replica adds
    no accuracy and costs at least nothing, unless the stage's replica floor or pin, or keeping this
    option's current count (no loading cost), asks for it. The tighter M is what keeps InfAdapter-size
    splits (5 variants × 19 sizes under a 20-core budget) near their LP relaxation.
    """
    most = stage.max_replicas
    if problem.budget.cpu is not None and option.cpu > EPS:
        most = min(most, math.floor(problem.budget.cpu / option.cpu + EPS))
    limits = dict(problem.budget.gpus)
    for name, per in option.gpus:
        if per > EPS and name in limits:
            most = min(most, math.floor(limits[name] / per + EPS))
    needed = replicas_for(stage.load_rps, capacity)
    if needed is not None:
        kept = [c.replicas for c in problem.current if c.stage == stage.name and c.variant == option.variant
                and (c.batch, c.cpu, c.instances) == (option.batch, option.cpu, option.instances)]
        most = min(most, max(needed, 1, stage.min_replicas, stage.pinned_replicas or 0, *kept))
    return max(most, 0)


POOL_LIMIT = 3000
"""Most (option, replica count) pairs a split stage is encoded with as binaries (:func:`_build_split_pools`)."""


def _build_split(lp: Any, problem: Problem, sv: StageVars, tag: str, objective: Terms,
                 add_resources: Any, reconfig_terms: list[tuple[Any, float]]) -> None:
    """A traffic split: at most one option per variant, its replicas, and the load each variant takes.

    Small enough splits (InfAdapter's 5 variants × 19 sizes under a 20-core budget) choose whole pools --
    one binary per (option, replica count) -- whose LP relaxation is a multiple-choice knapsack, far tighter
    than an integer replica count under a big-M; their loading cost needs no indicator either (a pool either
    is the current one or is not). Larger ones keep one integer count per option.
    """
    stage = sv.stage
    options = []
    for option in allowed_options(stage):
        cap = effective_capacity(option, problem)
        if cap > EPS or stage.load_rps <= 0:
            options.append((option, cap, split_replica_bound(problem, stage, option, cap)))
    pools = sum(most for *_, most in options)
    latency = lp.add_variable(f"ls_{tag}", lowBound=0)
    if pools <= POOL_LIMIT:
        _build_split_pools(lp, problem, sv, tag, objective, add_resources, reconfig_terms, options, latency)
    else:
        _build_split_counts(lp, problem, sv, tag, objective, add_resources, reconfig_terms, options, latency)
    xs = [(x, 1.0) for _, x, _, _ in sv.split]
    if stage.load_rps > 0:
        lp += _expr(xs) >= 1
    else:
        lp += _expr(xs) == 1
    replicas = _expr([(n, 1.0) if not isinstance(n, int) else (x, float(n)) for _, x, n, _ in sv.split])
    lp += replicas >= stage.min_replicas
    lp += replicas <= stage.max_replicas
    if stage.pinned_replicas is not None:
        lp += replicas == stage.pinned_replicas
    sv.latency = _expr([(latency, 1.0)], stage.queue_delay_ms)


@dataclass(frozen=True, slots=True)
class _Pool:
    """Option ``option`` with ``replicas`` replicas, and what the program sees of it (a traffic split's choice)."""

    option: Option
    replicas: int
    capacity: float
    latency_ms: float
    changed: bool
    criteria: tuple[float, ...]
    """Lower is better on each: cores, price, batch, GPUs, latency, replicas, changed (those the program weighs)."""


def _split_pools(problem: Problem, stage: Stage, options: list[tuple[Option, float, int]]) -> list[_Pool]:
    """Every (option, replica count) pair of a split, less those another pool of the same variant matches or
    beats on capacity and on every criterion the program can see (the exact reduction of fixed-load pools,
    for pools): each variant runs at most one pool, so a dominated one can always be swapped for its better.
    With a replica floor above one or a pinned count, fewer replicas are not always better: nothing is dropped.
    """
    obj = problem.objective
    current = {(c.variant, c.batch, c.cpu, c.instances, c.replicas) for c in problem.current if c.stage == stage.name}
    budgeted = dict(problem.budget.gpus)
    # Alone in the pipeline, a stage's latency only has to fit the SLO; nothing weighs it. Replica counts
    # matter only if the stage's maximum could bind.
    alone = len(problem.stages) == 1
    slack_ms = problem.slo_ms - stage.queue_delay_ms + FEASIBILITY_TOL
    counted = sum(max((most for o, _, most in options if o.variant == v), default=0)
                  for v in {o.variant for o, _, _ in options}) > stage.max_replicas
    pools: dict[str, list[_Pool]] = {}
    for option, cap, most in options:
        latency = option.latency_ms + split_batch_delay_ms(option.batch, stage.max_queue_delay_ms)
        seen_latency = (0.0 if latency <= slack_ms else math.inf) if alone else latency
        gpus = dict(option.gpus)
        for n in range(1, most + 1):
            changed = (option.variant, *option.key[1:], n) not in current
            criteria = (option.cpu * n if problem.budget.cpu is not None else 0.0,
                        allocation_price(problem, option, n) if obj.cost > 0 else 0.0,
                        float(option.batch) if obj.batch > 0 else 0.0,
                        *(gpus.get(name, 0.0) * n for name in sorted(budgeted)),
                        seen_latency, float(n) if counted else 0.0,
                        float(changed) if obj.reconfiguration > 0 else 0.0)
            pools.setdefault(option.variant, []).append(_Pool(option, n, cap * n, latency, changed, criteria))
    if stage.min_replicas > 1 or stage.pinned_replicas is not None:
        return [pool for group in pools.values() for pool in group]
    kept: list[_Pool] = []
    for group in pools.values():
        front: list[_Pool] = []
        for pool in sorted(group, key=lambda p: (p.criteria[0], -p.capacity, p.criteria)):
            if not any(q.capacity >= pool.capacity - EPS
                       and all(a <= b + EPS for a, b in zip(q.criteria, pool.criteria, strict=True)) for q in front):
                front.append(pool)
        kept.extend(front)
    return kept


def _build_split_pools(lp: Any, problem: Problem, sv: StageVars, tag: str, objective: Terms, add_resources: Any,
                       reconfig_terms: list[tuple[Any, float]], options: list[tuple[Option, float, int]],
                       latency: Any) -> None:
    stage = sv.stage
    per_variant: dict[str, tuple[Any, Terms, Terms, Terms]] = {}  # variant -> (load, capacity, selectors, latency)
    changed: dict[str, Terms] = {}  # variant -> its pools that are not the current one
    sv.deadline.check(f"adding the options of stage {stage.name!r}")
    for k, pool in enumerate(_split_pools(problem, stage, options)):
        if k % CHECK_EVERY == 0:
            sv.deadline.check(f"adding the options of stage {stage.name!r}")
        option, n = pool.option, pool.replicas
        if option.variant not in per_variant:
            load = lp.add_variable(f"l_{tag}_{len(per_variant)}", lowBound=0)
            per_variant[option.variant] = (load, [], [], [])
            if stage.load_rps > 0:
                sv.accuracy_selectors.append((option.accuracy, load, 1.0 / stage.load_rps))
        load, capacity, selectors, latencies = per_variant[option.variant]
        y = lp.add_variable(f"y_{tag}_{k}", cat=pulp.LpBinary)
        sv.split.append((option, y, n, load))
        capacity.append((y, pool.capacity))
        selectors.append((y, 1.0))
        add_resources(option, y, n)
        objective.append((y, -problem.objective.batch * option.batch))
        latencies.append((y, pool.latency_ms))
        if pool.changed:
            changed.setdefault(option.variant, []).append((y, 1.0))
        if stage.load_rps <= 0:
            sv.accuracy_selectors.append((option.accuracy, y, 1.0))
    for load, capacity, selectors, latencies in per_variant.values():
        lp += _expr(selectors) <= 1  # one pool per variant: its capacity and latency are sums over its pools
        lp += load <= _expr(capacity)
        lp += latency >= _expr(latencies)
    lp += _expr([(load, 1.0) for load, *_ in per_variant.values()]) == stage.load_rps
    if problem.objective.reconfiguration > 0:
        reconfig_terms.extend((_expr(terms), sv.load_time[variant]) for variant, terms in changed.items())


def _build_split_counts(lp: Any, problem: Problem, sv: StageVars, tag: str, objective: Terms, add_resources: Any,
                        reconfig_terms: list[tuple[Any, float]], options: list[tuple[Option, float, int]],
                        latency: Any) -> None:
    stage = sv.stage
    per_variant: dict[str, Terms] = {}
    for k, (option, cap, most) in enumerate(options):
        if k % CHECK_EVERY == 0:
            sv.deadline.check(f"adding the options of stage {stage.name!r}")
        x = lp.add_variable(f"x_{tag}_{k}", cat=pulp.LpBinary)
        n = lp.add_variable(f"n_{tag}_{k}", lowBound=0, upBound=most, cat=pulp.LpInteger)
        load = lp.add_variable(f"l_{tag}_{k}", lowBound=0)
        lp += n >= x
        lp += n <= most * x
        lp += load <= cap * n
        sv.split.append((option, x, n, load))
        per_variant.setdefault(option.variant, []).append((x, 1.0))
        add_resources(option, n, 1)
        objective.append((x, -problem.objective.batch * option.batch))
        lp += latency >= (option.latency_ms + split_batch_delay_ms(option.batch, stage.max_queue_delay_ms)) * x
        _variable_pool_changes(lp, problem, sv, option, x, n, f"{tag}_{k}", reconfig_terms)
        if stage.load_rps > 0:
            sv.accuracy_selectors.append((option.accuracy, load, 1.0 / stage.load_rps))
        else:
            sv.accuracy_selectors.append((option.accuracy, x, 1.0))
    for terms in per_variant.values():
        lp += _expr(terms) <= 1
    lp += _expr([(load, 1.0) for *_, load in sv.split]) == stage.load_rps


def _accuracy_expression(lp: Any, problem: Problem, stage_vars: list[StageVars], product: bool) -> Any:
    """The plan's aggregated accuracy as an affine expression (what `evaluate.aggregate` computes)."""
    agg = problem.objective.aggregation
    if not product:
        terms: Terms = []
        for sv in stage_vars:
            # a split's requests each get one variant: its score is the variants' scores weighted by load
            for acc, var, unit in sv.accuracy_selectors:
                terms.append((var, normalized(sv.stage, acc, agg) * unit / len(stage_vars)))
        return _expr(terms)
    if len(stage_vars) == 1:
        return _expr([(var, acc * unit) for acc, var, unit in stage_vars[0].accuracy_selectors])
    # McCormick chain: P_s = P_{s-1} · A_s, with A_s a selection of one accuracy value. With
    # P_{s-1} in [low, high], w_i = P_{s-1}·y_i is exact at binary y for: w_i <= high·y_i,
    # w_i <= P_{s-1} − low·(1 − y_i), and Σ_i w_i = P_{s-1} (the y_i sum to one), which also keeps the
    # relaxation tight.
    # (several stages under the product have no splits: every selector is a binary, per unit 1)
    first = stage_vars[0].accuracy_selectors
    previous = _expr([(var, acc) for acc, var, _ in first])
    low = min(acc for acc, _, _ in first)
    high = max(acc for acc, _, _ in first)
    for i, sv in enumerate(stage_vars[1:], start=1):
        chained: Terms = []
        parts: Terms = []
        values = _per_value(sv.accuracy_selectors)
        for k, (acc, selector) in enumerate(values):
            w = lp.add_variable(f"w_{i}_{k}", lowBound=0, upBound=high)
            lp += w <= high * selector
            lp += w <= previous - low * (1 - selector)
            chained.append((w, acc))
            parts.append((w, 1.0))
        lp += _expr(parts) == previous
        low *= min(acc for acc, _ in values)
        high *= max(acc for acc, _ in values)
        previous = _expr(chained)
    return previous


def _per_value(selectors: list[tuple[float, Any, float]]) -> list[tuple[float, Any]]:
    """Group selection binaries that share an accuracy value (all options of one variant)."""
    grouped: dict[float, Terms] = {}
    for acc, var, _ in selectors:
        grouped.setdefault(acc, []).append((var, 1.0))
    return [(acc, _expr(terms)) for acc, terms in grouped.items()]


@dataclass(frozen=True, slots=True)
class SolverOutcome:
    status: SolveStatus
    solver: str
    message: str = ""


def run_solver(model: Model, limits: SolveLimits, deadline: Deadline | None = None) -> SolverOutcome:
    """Solve with HiGHS (or CBC) under a time limit and map the outcome honestly.

    With a deadline, HiGHS gets only the time left once the program has been passed to it; a deadline
    that passes before gives TIME_LIMIT_NO_SOLUTION with the phase as message (no fallback to CBC).
    """
    deadline = deadline or Deadline.none()
    names = [limits.solver] + (["cbc"] if limits.solver == "highs" else [])
    last_error = ""
    for name in names:
        try:
            solver = _make_solver(name, limits, deadline)
            model.lp.solve(solver)
        except OutOfTime as exc:
            return SolverOutcome(SolveStatus.TIME_LIMIT_NO_SOLUTION, name, exc.phase)
        except Exception as exc:  # noqa: BLE001 - any solver failure falls back, then reports ERROR
            last_error = f"{name}: {type(exc).__name__}: {exc}"
            continue
        return SolverOutcome(_status(model.lp), name)
    return SolverOutcome(SolveStatus.ERROR, names[-1], last_error)


SOLVER_SHARE = 0.8
"""Share of the time left that HiGHS may use: it overshoots its limit a little on large programs, and
reading the solution back and decoding it take the rest."""


class _DeadlineHiGHS(pulp.HiGHS):  # type: ignore[misc]
    """PuLP's HiGHS interface with the program passed in bulk (PuLP adds it row by row in Python, outside
    HiGHS's timer: seconds for the largest programs) and HiGHS's time limit cut to what is left of the
    deadline once it has been passed."""

    def __init__(self, deadline: Deadline, **options: Any) -> None:
        super().__init__(**options)
        self.deadline = deadline

    def buildSolverModel(self, lp: Any) -> None:  # noqa: N802 - PuLP's name
        import highspy

        inf = highspy.kHighsInf
        sign = -1.0 if lp.sense == pulp.LpMaximize else 1.0
        columns = lp.variables()
        for i, var in enumerate(columns):
            var.index = i
        bound = [(-inf if v.lowBound is None else v.lowBound, inf if v.upBound is None else v.upBound)
                 for v in columns]
        model = lp.solverModel
        costs = np.array([sign * lp.objective.get(v, 0.0) for v in columns], dtype=np.float64)
        model.addCols(len(columns), costs, np.array([b[0] for b in bound], dtype=np.float64),
                      np.array([b[1] for b in bound], dtype=np.float64), 0, np.zeros(len(columns), dtype=np.int32),
                      np.zeros(0, dtype=np.int32), np.zeros(0))
        integer = [v.index for v in columns if v.cat == pulp.LpInteger] if self.mip else []
        if integer:
            model.changeColsIntegrality(len(integer), np.array(integer, dtype=np.int32),
                                        np.full(len(integer), int(highspy.HighsVarType.kInteger), dtype=np.uint8))
        starts: list[int] = []
        indices: list[int] = []
        values: list[float] = []
        lower: list[float] = []
        upper: list[float] = []
        for i, constraint in enumerate(lp._constraints.values()):
            if i % 4096 == 0:
                self.deadline.check("passing the program to the solver")
            constraint.index = i
            starts.append(len(indices))
            for var, coefficient in constraint.items():
                if coefficient != 0:
                    indices.append(var.index)
                    values.append(coefficient)
            lb, ub = constraint.getLb(), constraint.getUb()
            lower.append(-inf if lb is None else lb)
            upper.append(inf if ub is None else ub)
        model.addRows(len(starts), np.array(lower, dtype=np.float64), np.array(upper, dtype=np.float64),
                      len(indices), np.array(starts, dtype=np.int32), np.array(indices, dtype=np.int32),
                      np.array(values, dtype=np.float64))

    def callSolver(self, lp: Any) -> None:  # noqa: N802 - PuLP's name
        left = self.deadline.remaining()
        if left is not None:
            if left <= 0:
                raise OutOfTime("passing the program to the solver")
            lp.solverModel.setOptionValue("time_limit", float(min(self.timeLimit, SOLVER_SHARE * left)))
        # HiGHS's default (1e-6) lets a binary sit 1e-6 off its value, which with big-M latency rows let a
        # plan choose a batch size whose row it only nearly satisfied, 2e-6 below the optimum at small weights
        lp.solverModel.setOptionValue("mip_feasibility_tolerance", MIP_FEASIBILITY_TOL)
        lp.solverModel.run()


MIP_FEASIBILITY_TOL = 1e-9


def _make_solver(name: str, limits: SolveLimits, deadline: Deadline) -> Any:
    if name == "highs":
        return _DeadlineHiGHS(deadline, msg=False, timeLimit=limits.time_limit_s, threads=limits.threads,
                              gapRel=limits.relative_gap, gapAbs=1e-9)
    if name == "cbc":
        left = deadline.remaining()
        if left is not None and left <= 0:
            raise OutOfTime("starting the CBC solver")
        limit = limits.time_limit_s if left is None else min(limits.time_limit_s, left)
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=limit, gapRel=limits.relative_gap, threads=limits.threads)
    raise ValueError(f"unknown solver {name!r} (use 'highs' or 'cbc')")


def _status(lp: Any) -> SolveStatus:
    if lp.sol_status == pulp.LpSolutionOptimal:
        return SolveStatus.OPTIMAL
    if lp.sol_status == pulp.LpSolutionIntegerFeasible:
        return SolveStatus.FEASIBLE_AT_TIME_LIMIT
    if lp.status == pulp.LpStatusInfeasible or lp.sol_status == pulp.LpSolutionInfeasible:
        return SolveStatus.INFEASIBLE
    if lp.status == pulp.LpStatusNotSolved:
        return SolveStatus.TIME_LIMIT_NO_SOLUTION
    return SolveStatus.ERROR


def _value(var: Any) -> float:
    v = var.value() if hasattr(var, "value") else var
    return 0.0 if v is None else float(v)


def extract(problem: Problem, model: Model) -> list[StagePlan]:
    """Decode the solution into stage plans via the shared builders."""
    plans: list[StagePlan] = []
    for sv in model.stages:
        stage = sv.stage
        if stage.cascade is not None:
            light, n_light = next((o, n) for o, x, n in sv.fixed if _value(x) > 0.5)
            row = sv.row_index[max(range(len(sv.rows)), key=lambda j: _value(sv.rows[j]))]
            heavy = next(((o, round(_value(n))) for o, x, n in sv.heavy if _value(x) > 0.5), None)
            plans.append(cascade_plan(stage, row, light, n_light, heavy[0] if heavy else None,
                                      heavy[1] if heavy else 0))
        elif stage.multi_variant:
            chosen = [(o, n if isinstance(n, int) else round(_value(n)), max(0.0, _value(load)))
                      for o, x, n, load in sv.split if _value(x) > 0.5]
            plans.append(split_plan(stage, [(o, n) for o, n, _ in chosen], [load for *_, load in chosen]))
        else:
            option, n = next((o, n) for o, x, n in sv.fixed if _value(x) > 0.5)
            plans.append(single_plan(stage, option, n))
    return plans

