"""The one control loop: observe → predict → plan → decide → actuate.

The simulator, the local runtime (`paretoserve up`) and the Kubernetes operator differ only in where
observations come from and how a plan is applied; they all drive `ControlLoop.tick`, so the planning logic
exists once. `plan_step` is the pure core (it needs no metrics source or actuator and is what the kopf
timer calls with data read from Prometheus and the CR status); `ControlLoop` wires it to a `MetricsSource`
and an `Actuator`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.evaluate import covers_load
from paretoserve.planner.model import Baseline, CurrentAllocation, Plan, Problem, SolveLimits
from paretoserve.planner.policy import Decision, PolicyContext, PolicyState, decide
from paretoserve.planner.predict import Forecaster, predict
from paretoserve.planner.solve import solve
from paretoserve.planner.spec import ServingPipeline


@dataclass(frozen=True, slots=True)
class Observed:
    """One observation of the serving system."""

    load_history: tuple[float, ...]
    """Pipeline requests per second, one sample per second, oldest first."""
    queue_delay_ms: dict[str, float] = field(default_factory=dict)
    min_remaining_budget_ms: float | None = None


@dataclass(frozen=True, slots=True)
class StepResult:
    decision: Decision
    state: PolicyState
    candidate: Plan
    predicted_load: float
    problem: Problem


def current_allocations(plan: Plan | None) -> tuple[CurrentAllocation, ...]:
    if plan is None:
        return ()
    return tuple(
        CurrentAllocation(sp.stage, a.variant, a.batch, a.cpu, a.instances, a.replicas)
        for sp in plan.stages for a in sp.allocations
    )


def plan_step(
    pipeline: ServingPipeline,
    observed: Observed,
    applied: Plan | None,
    state: PolicyState,
    *,
    now: float,
    limits: SolveLimits | None = None,
    lstm: Forecaster | None = None,
    baseline: Baseline = Baseline.NONE,
    clock: Callable[[], float] | None = None,
) -> StepResult:
    """Predict the load, solve at it, and decide whether to change what runs. Pure given its inputs."""
    spec = pipeline.spec
    predicted = predict(observed.load_history, spec.adaptation.predictor, lstm=lstm)
    observation = Observation(
        load_rps=predicted,
        queue_delay_ms=observed.queue_delay_ms,
        min_remaining_budget_ms=observed.min_remaining_budget_ms,
        current=current_allocations(applied),
    )
    problem = compile_problem(pipeline, observation, baseline=baseline)
    limits = limits or SolveLimits(time_limit_s=spec.adaptation.solver_time_limit_seconds)
    candidate = solve(problem, limits=limits, clock=clock)
    still_valid = applied is None or covers_load(problem, applied)
    decision, new_state = decide(PolicyContext(
        now=now, candidate=candidate, applied=applied, state=state,
        scale_down_stabilization=spec.adaptation.scale_down_stabilization, applied_still_valid=still_valid,
    ))
    return StepResult(decision, new_state, candidate, predicted, problem)


class MetricsSource(Protocol):
    def observe(self, now: float) -> Observed: ...


class Actuator(Protocol):
    def applied(self) -> Plan | None: ...

    def apply(self, plan: Plan, *, now: float) -> None: ...


@dataclass
class ControlLoop:
    """Drives `plan_step` against a metrics source and an actuator; holds only the policy state."""

    pipeline: ServingPipeline
    source: MetricsSource
    actuator: Actuator
    state: PolicyState = field(default_factory=PolicyState)
    limits: SolveLimits | None = None
    lstm: Forecaster | None = None
    baseline: Baseline = Baseline.NONE
    history: list[StepResult] = field(default_factory=list)
    keep_history: int = 0

    def tick(self, now: float) -> StepResult:
        observed = self.source.observe(now)
        result = plan_step(self.pipeline, observed, self.actuator.applied(), self.state, now=now,
                           limits=self.limits, lstm=self.lstm, baseline=self.baseline)
        if result.decision.apply and result.decision.plan is not None:
            self.actuator.apply(result.decision.plan, now=now)
        self.state = result.state
        if self.keep_history:
            self.history.append(result)
            del self.history[:-self.keep_history]
        return result
