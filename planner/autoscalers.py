"""The Kubernetes autoscalers the papers compare against, as pure policies that produce a `Plan`.

HPA and VPA do not optimise anything: HPA multiplies the replica count by observed/target utilisation,
VPA resizes one pod to a percentile of observed usage. Written as pure functions of (problem, running
plan, observation, now, state) they produce the same `Plan` type as the planner, so the simulator, the
tests and the result tables treat them like any other controller. Stage plans are built with
`stageplans.single_plan` and totals with `evaluate.finalize`, so latency and cost are computed one way.

- HPA (kube-controller-manager's algorithm): desired = ceil(current × metric / target), no change while
  |metric/target − 1| ≤ tolerance (0.1), scale-up limited to max(+100 %, +4 pods) per decision, and a
  scale-down stabilisation window (300 s) that keeps the highest recommendation seen in it.
- VPA-like: one variant, a fixed replica count; the recommended size is the fewest cores whose capacity
  covers the p90 of recent load plus a 15 % margin; it acts only when the running size leaves the band
  [cores for the median load, cores for the peak load] (plus the margin), like the VPA updater's
  lower/upper bounds.

`AutoscalerPolicy` makes such a rule a `control.Policy`, so the one control step drives it like any other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.control import Observed, StepResult
from paretoserve.planner.evaluate import finalize
from paretoserve.planner.model import Option, Plan, Problem, SolveStatus, Stage, StagePlan
from paretoserve.planner.policy import Decision, signature
from paretoserve.planner.spec import ServingPipeline
from paretoserve.planner.stageplans import single_plan

S = TypeVar("S")


def template_option(stage: Stage, variant: str | None = None, cpu: float | None = None) -> Option:
    """The option a fixed deployment runs: the variant's most throughput-per-core option (fewest cores on ties)."""
    options = [o for o in stage.options if (variant is None or o.variant == variant) and (cpu is None or o.cpu == cpu)]
    if not options:
        raise ValueError(f"stage {stage.name}: no option for variant {variant!r} at {cpu!r} cores")
    if variant is None:
        top = max(o.accuracy for o in options)
        options = [o for o in options if o.accuracy == top]
    return max(options, key=lambda o: (o.capacity_rps / max(o.cpu, 1e-9), -o.cpu, o.batch))


def _plan(problem: Problem, chosen: Sequence[tuple[Stage, Option, int]], solver: str) -> Plan:
    plans: list[StagePlan] = [single_plan(stage, option, n) for stage, option, n in chosen]
    return finalize(problem, plans, solver=solver, message=f"{solver}: a rule, not an optimisation")


def _check_plain(problem: Problem) -> None:
    for s in problem.stages:
        if s.cascade is not None or s.multi_variant:
            raise ValueError(f"stage {s.name}: HPA/VPA scale one variant; cascades and splits are not supported")


# -- HPA ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HpaSettings:
    target_utilization: float = 0.7
    tolerance: float = 0.1
    stabilization_window_s: float = 300.0
    scale_up_percent: float = 100.0
    scale_up_pods: int = 4
    metric_window_s: int = 15
    """Seconds of load averaged into the utilisation metric (HPA's sync period)."""
    variants: Mapping[str, str] = field(default_factory=dict)
    """Variant per stage (default: the most accurate)."""


@dataclass(frozen=True)
class HpaState:
    recommendations: tuple[tuple[float, tuple[int, ...]], ...] = ()


def hpa_replicas(current: int, utilization: float, target: float, tolerance: float) -> int:
    """Kubernetes' rule: ceil(current × utilisation / target), unchanged within the tolerance."""
    if current <= 0:
        return 0 if utilization <= 0 else 1
    ratio = utilization / target
    if abs(ratio - 1.0) <= tolerance:
        return current
    return max(0, math.ceil(current * ratio - 1e-9))


def hpa_decide(problem: Problem, applied: Plan | None, observed: Observed, now: float, state: HpaState,
               settings: HpaSettings) -> tuple[Plan, HpaState]:
    """One HPA sync: new replica counts for every stage of the running (or template) deployment."""
    _check_plain(problem)
    running = {sp.stage: sp.allocations[0] for sp in applied.stages} if applied is not None else {}
    chosen: list[tuple[Stage, Option, int]] = []
    desired: list[int] = []
    for stage in problem.stages:
        option = template_option(stage, settings.variants.get(stage.name))
        capacity = max(option.capacity_rps, 1e-9)
        if stage.name in running:
            current = running[stage.name].replicas
            utilization = stage.load_rps / (max(current, 1) * capacity)
            want = hpa_replicas(current, utilization, settings.target_utilization, settings.tolerance)
            limit = max(math.floor(current * (1 + settings.scale_up_percent / 100.0)), current + settings.scale_up_pods)
            want = min(want, limit)
        else:  # first decision: size for the observed load directly
            want = math.ceil(stage.load_rps / (capacity * settings.target_utilization) - 1e-9)
        desired.append(max(stage.min_replicas, min(stage.max_replicas, want)))
        chosen.append((stage, option, 0))
    window = tuple((t, r) for t, r in state.recommendations if t > now - settings.stabilization_window_s)
    window += ((now, tuple(desired)),)
    final = []
    for i, (stage, option, _) in enumerate(chosen):
        current = running[stage.name].replicas if stage.name in running else desired[i]
        want = desired[i]
        if want < current:  # scale down only to the highest recommendation in the window
            want = min(current, max(r[i] for _, r in window))
        final.append((stage, option, want))
    return _plan(problem, final, "hpa"), HpaState(window)


# -- VPA ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VpaSettings:
    variant: Mapping[str, str] = field(default_factory=dict)
    """The one variant per stage (default: the most accurate)."""
    replicas: int = 1
    percentile: float = 90.0
    margin: float = 0.15
    window_s: int = 300


@dataclass(frozen=True)
class VpaState:
    updates: int = 0


def smallest_fitting(options: Sequence[Option], load: float, replicas: int) -> Option:
    """The fewest cores (then the most capacity) whose replicas carry `load`; the biggest option otherwise."""
    fitting = [o for o in options if o.capacity_rps * replicas >= load]
    if fitting:
        return min(fitting, key=lambda o: (o.cpu, -o.capacity_rps))
    return max(options, key=lambda o: (o.capacity_rps, -o.cpu))


def vpa_decide(problem: Problem, applied: Plan | None, observed: Observed, now: float, state: VpaState,
               settings: VpaSettings) -> tuple[Plan, VpaState]:
    """Resize each stage's pods when their cores leave the band the observed usage justifies."""
    _check_plain(problem)
    history = np.asarray(observed.load_history[-settings.window_s:], dtype=np.float64)
    if len(history) == 0:
        history = np.zeros(1)
    grow = 1.0 + settings.margin
    running = {sp.stage: sp.allocations[0] for sp in applied.stages} if applied is not None else {}
    chosen: list[tuple[Stage, Option, int]] = []
    updates = state.updates
    for stage in problem.stages:
        variant = settings.variant.get(stage.name) or template_option(stage).variant
        options = [o for o in stage.options if o.variant == variant]
        if not options:
            raise ValueError(f"stage {stage.name}: no option for variant {variant!r}")
        scale = stage.load_rps if stage.load_rps > 0 else 1.0  # load multiplier of this stage
        n = max(settings.replicas, stage.min_replicas)
        target = smallest_fitting(options, float(np.percentile(history, settings.percentile)) * scale * grow, n)
        lower = smallest_fitting(options, float(np.percentile(history, 50)) * scale * grow, n)
        upper = smallest_fitting(options, float(history.max()) * scale * grow, n)
        current = running.get(stage.name)
        pick = target
        if current is not None:
            now_option = next((o for o in options if (o.batch, o.cpu, o.instances) ==
                               (current.batch, current.cpu, current.instances)), target)
            if lower.cpu <= now_option.cpu <= upper.cpu:
                pick = now_option
        if current is not None and pick.cpu != current.cpu:
            updates += 1
        chosen.append((stage, pick, n))
    return _plan(problem, chosen, "vpa"), VpaState(updates)


# -- as a control-loop policy --------------------------------------------------------------------------

AutoscalerRule = Callable[[Problem, Plan | None, Observed, float, S], tuple[Plan, S]]


def mean_recent(history: Sequence[float], seconds: int) -> float:
    recent = history[-seconds:] if seconds > 0 else history
    return float(sum(recent) / len(recent)) if recent else 0.0


@dataclass(frozen=True)
class AutoscalerPolicy(Generic[S]):
    """An HPA/VPA rule as a `control.Policy`: compile at the recent mean load (VPA: at load 1, multipliers
    only), apply the rule, and change what runs only when the rule's plan differs from the applied one."""

    pipeline: ServingPipeline
    rule: AutoscalerRule[S]
    metric_window_s: int = 15
    unit_load: bool = False

    def propose(self, observed: Observed, applied: Plan | None, state: S, *, now: float,
                replan: bool = False) -> StepResult[S]:
        load = 1.0 if self.unit_load else mean_recent(observed.load_history, self.metric_window_s)
        problem = compile_problem(self.pipeline, Observation(load_rps=load))
        plan, new_state = self.rule(problem, applied, observed, now, state)
        changed = plan.status is SolveStatus.OPTIMAL and (applied is None or signature(plan) != signature(applied))
        decision = Decision(changed, plan if changed else applied, "rule changed the plan" if changed else "unchanged")
        return StepResult(decision, new_state, plan, load, problem, observed)
