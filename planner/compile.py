"""Compile a validated ServingPipeline plus an observation into the planner's numeric `Problem`.

The manifest says what may be chosen; the observation says what the world looks like now (the load to
plan for, queueing delays, the tightest per-request deadline, what runs today). Every caller — the CLI,
the simulator, the local runtime and the operator — builds its problem here, so they plan identically.

Observations come from metrics a client can influence (a deadline header feeds the tightest remaining
budget), so they are checked here: a load that is not a finite number in [0, MAX_LOAD_RPS] is refused
with a `SpecError` naming `load`; a remaining budget that is not a number counts as no observation and
one outside [0, SLO] is clamped into it; queueing delays that are not finite and >= 0 count as 0 and are
capped at MAX_OBSERVED_DELAY_MS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from paretoserve.planner import model as m
from paretoserve.planner.bounds import MAX_LATENCY_MS
from paretoserve.planner.profiles import variant_options
from paretoserve.planner.queueing import queueing_utilization, servers
from paretoserve.planner.spec import Cascade, QueueingModel, ServingPipeline, SpecError, Stage

MAX_LOAD_RPS = 1e9
"""The most pipeline requests/s a plan may be asked for (x loadMultiplier <= 1e6 stays finite)."""
MAX_OBSERVED_DELAY_MS = MAX_LATENCY_MS


@dataclass(frozen=True, slots=True)
class Observation:
    """What the control loop knows when it plans."""

    load_rps: float
    """Pipeline requests per second to plan for (already predicted and with headroom)."""
    queue_delay_ms: Mapping[str, float] = field(default_factory=dict)
    """Observed queueing delay per stage (DiffServe's Little's-law term)."""
    min_remaining_budget_ms: float | None = None
    """Tightest remaining deadline among queued requests (Sponge's q_min)."""
    current: tuple[m.CurrentAllocation, ...] = ()


def _rows(stage: Stage, cascade: Cascade) -> tuple[m.CascadeRow, ...]:
    accuracy = {v.name: stage.accuracy_of(v) for v in stage.variants}
    light, heavy = accuracy[cascade.light], accuracy[cascade.heavy]
    rows = [
        m.CascadeRow(
            threshold=r.threshold,
            heavy_fraction=r.heavy_fraction,
            quality=r.quality if r.quality is not None else light + r.heavy_fraction * (heavy - light),
            prompt_threshold=r.prompt_threshold,
            pre_routed_fraction=r.pre_routed_fraction,
        )
        for r in cascade.rows
    ]
    if cascade.threshold != "auto":
        fixed = float(cascade.threshold)
        nearest = min(rows, key=lambda r: abs(r.threshold - fixed))
        rows = [nearest]
    return tuple(rows)


def compile_stage(stage: Stage, pipeline_load: float, *, utilization: float,
                  queue_delay_ms: float = 0.0) -> m.Stage:
    options: list[m.Option] = []
    for variant in stage.variants:
        options += variant_options(variant, stage, utilization=utilization)
    cascade = None
    if stage.cascade is not None:
        cascade = m.Cascade(stage.cascade.light, stage.cascade.heavy, _rows(stage, stage.cascade),
                            stage.cascade.router.value)
    return m.Stage(
        name=stage.name,
        options=tuple(options),
        load_rps=pipeline_load * stage.load_multiplier,
        depends_on=tuple(stage.depends_on),
        multi_variant=stage.multi_variant,
        cascade=cascade,
        min_replicas=stage.bounds.min_replicas,
        max_replicas=stage.bounds.max_replicas,
        # iteration-level batching never waits for a batch to fill: no batch-formation delay
        max_queue_delay_ms=0.0 if stage.generation is not None else stage.max_queue_delay_ms,
        queue_delay_ms=queue_delay_ms,
    )


def compile_problem(
    pipeline: ServingPipeline,
    observation: Observation,
    *,
    baseline: m.Baseline = m.Baseline.NONE,
    pinned_variants: Mapping[str, Sequence[str]] | None = None,
    pinned_replicas: Mapping[str, int] | None = None,
) -> m.Problem:
    """The problem for this pipeline at this observation; pins express scale-only/switch-only baselines."""
    spec = pipeline.spec
    load = observation.load_rps
    if not (isinstance(load, int | float) and math.isfinite(load) and 0 <= load <= MAX_LOAD_RPS):
        raise SpecError("load", f"must be a finite number of requests/s in [0, {MAX_LOAD_RPS:g}], got {load!r}")
    utilization = spec.adaptation.target_utilization
    stages: list[m.Stage] = []
    for stage in spec.stages:
        compiled = compile_stage(stage, load, utilization=utilization,
                                 queue_delay_ms=_delay(observation.queue_delay_ms.get(stage.name, 0.0)))
        pins = tuple((pinned_variants or {}).get(stage.name, ()))
        replicas = (pinned_replicas or {}).get(stage.name)
        if pins or replicas is not None:
            compiled = replace(compiled, pinned_variants=pins, pinned_replicas=replicas)
        stages.append(compiled)
    if spec.adaptation.queueing_model is QueueingModel.ERLANG_C:
        stages = queue_aware(stages, spec.slo.latency_ms, spec.slo.percentile.value / 100.0, utilization)
    obj = spec.objective
    if obj.normalize_cost and spec.budget.cpu is None and not spec.budget.gpus:
        raise SpecError("spec.objective.normalizeCost", "needs a budget to normalise by")
    objective = m.Objective(
        accuracy=obj.accuracy,
        cost=obj.cost,
        batch=obj.batch,
        reconfiguration=obj.reconfiguration,
        aggregation=m.Aggregation(obj.accuracy_aggregation.value),
        normalize_cost=obj.normalize_cost,
        prices=tuple(sorted(obj.prices.items())),
        goal=m.Goal(obj.goal.value),
        min_accuracy=obj.min_accuracy,
    )
    drain = None
    dynamic = spec.slo.dynamic
    remaining = remaining_budget_ms(observation.min_remaining_budget_ms, spec.slo.latency_ms)
    if dynamic is not None and remaining is not None:
        drain = plannable_drain(remaining - dynamic.safety_fraction * spec.slo.latency_ms, stages)
    return m.Problem(
        name=pipeline.metadata.name,
        stages=tuple(stages),
        slo_ms=spec.slo.latency_ms,
        objective=objective,
        budget=m.Budget(cpu=spec.budget.cpu, gpus=tuple(sorted(spec.budget.gpus.items()))),
        baseline=baseline,
        drain_budget_ms=drain,
        current=observation.current,
    )


def queue_aware(stages: Sequence[m.Stage], slo_ms: float, quantile: float, target: float) -> list[m.Stage]:
    """Each option's capacity cut to the utilisation at which its queue still lets the SLO hold
    (`planner.queueing`), given the fastest path through the other stages."""
    fastest = {s.name: min((o.latency_ms for o in s.options), default=0.0) for s in stages}
    parents = {s.name: tuple(s.depends_on) for s in stages}
    children: dict[str, list[str]] = {s.name: [] for s in stages}
    for s in stages:
        for d in s.depends_on:
            children.setdefault(d, []).append(s.name)
    before = _longest(parents, fastest)
    after = _longest(children, fastest)
    out = []
    for s in stages:
        others = before[s.name] + after[s.name]
        options = []
        for o in s.options:
            throughput = o.capacity_rps / target
            c, service_s = servers(o.batch, o.latency_ms, throughput, o.instances)
            slack_s = (slo_ms - others - o.latency_ms - s.queue_delay_ms) / 1000.0
            usable = queueing_utilization(c, service_s, slack_s, quantile, target)
            if usable > 0.0:  # an option that is late with the first queued request is no option
                options.append(replace(o, capacity_rps=throughput * usable))
        out.append(replace(s, options=tuple(options)))
    return out


def _longest(edges: Mapping[str, Sequence[str]], weight: Mapping[str, float]) -> dict[str, float]:
    """Per node, the heaviest path along `edges` from it, excluding the node itself (the graph is acyclic)."""
    memo: dict[str, float] = {}

    def visit(node: str) -> float:
        if node not in memo:
            memo[node] = max((visit(n) + weight.get(n, 0.0) for n in edges.get(node, ())), default=0.0)
        return memo[node]

    return {node: visit(node) for node in edges}


def plannable_drain(drain_ms: float, stages: Sequence[m.Stage]) -> float | None:
    """Sponge's EDF drain budget, or None when no plan could meet it.

    If some stage has no option that finishes even one batch within the budget, the tightest queued requests
    are lost whatever runs: the router answers them with an explicit 504, and planning for them could only
    report "infeasible" and freeze the plan in force. The tightest deadline is a signal any client can set
    (a deadline header), so a few such requests must not steer the planner: the budget is then ignored."""
    for stage in stages:
        fastest = min((o.latency_ms for o in stage.options), default=math.inf)
        if drain_ms < fastest:
            return None
    return drain_ms


def remaining_budget_ms(value: float | None, slo_ms: float) -> float | None:
    """The tightest remaining deadline as the planner uses it: None for no (or a non-numeric) observation,
    otherwise clamped to [0, SLO] (no request's remaining budget exceeds the SLO it was given)."""
    if value is None or not isinstance(value, int | float) or math.isnan(value):
        return None
    return min(max(float(value), 0.0), slo_ms)


def _delay(value: float) -> float:
    """An observed queueing delay: non-finite or negative readings count as 0, the rest capped."""
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return 0.0
    return min(float(value), MAX_OBSERVED_DELAY_MS)
