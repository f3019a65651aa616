"""The one control step: observe → predict → plan → decide → actuate, state in and state out.

The simulator, the local runtime (`paretoserve up`) and the Kubernetes operator differ only in where
observations come from (a `MetricsSource`), how a plan is applied (an `Actuator`) and where the policy
state is kept between steps (a field, or the CR status); they all call `step`, so the loop exists once.
What happens between observing and actuating is a `Policy`, pure given its inputs:

- `ParetoPolicy`: predict the load, solve the integer program at it, and let `policy.decide` say whether
  to change what runs (ParetoServe, and every baseline that is ParetoServe on a constrained manifest);
- `paretoserve.planner.selection.SelectingPolicy`: HADIS, the best of several manifests (model pairs);
- `paretoserve.planner.autoscalers.AutoscalerPolicy`: the HPA/VPA rules the papers compare against.

`ControlLoop` is the stateful driver for callers that keep the state in memory (simulator, local runtime);
the operator reads the state from the CR status, calls `step` and writes the new state back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.evaluate import covers_load
from paretoserve.planner.model import Baseline, CurrentAllocation, Plan, Problem, SolveLimits
from paretoserve.planner.policy import Decision, PolicyContext, PolicyState, decide
from paretoserve.planner.predict import Forecaster, predict
from paretoserve.planner.solve import solve
from paretoserve.planner.spec import ServingPipeline

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Observed:
    """One observation of the serving system."""

    load_history: tuple[float, ...]
    """Pipeline requests per second, one sample per second, oldest first."""
    queue_delay_ms: dict[str, float] = field(default_factory=dict)
    min_remaining_budget_ms: float | None = None


@dataclass(frozen=True, slots=True)
class StepResult(Generic[S]):
    decision: Decision
    state: S
    candidate: Plan
    """What the policy proposed at this step (kept or applied, see `decision`)."""
    predicted_load: float
    problem: Problem
    observed: Observed


class MetricsSource(Protocol):
    def observe(self, now: float) -> Observed: ...


class Actuator(Protocol):
    def applied(self) -> Plan | None:
        """The plan in force (None before the first)."""
        ...

    def apply(self, plan: Plan, *, now: float) -> None:
        """The decision changed the plan: make the system run `plan`."""
        ...

    def hold(self, plan: Plan | None, *, now: float) -> None:
        """The decision kept `plan` (None: no plan yet). Actuators whose world can drift from it (Kubernetes:
        new pods at the template's size, deleted objects) converge to it again; the others do nothing."""
        ...


class Policy(Protocol[S]):
    def propose(self, observed: Observed, applied: Plan | None, state: S, *, now: float,
                replan: bool = False) -> StepResult[S]:
        """Predict → plan → decide, pure given its inputs. `replan`: the spec changed, so the applied plan
        no longer counts as valid and a feasible candidate replaces it at once."""
        ...


def step(policy: Policy[S], source: MetricsSource, actuator: Actuator, state: S, *, now: float,
         replan: bool = False) -> StepResult[S]:
    """The one control step. An observation failure propagates before anything is changed."""
    observed = source.observe(now)
    result = policy.propose(observed, actuator.applied(), state, now=now, replan=replan)
    plan = result.decision.plan
    if result.decision.apply and plan is not None:
        actuator.apply(plan, now=now)
    else:
        actuator.hold(plan, now=now)
    return result


def current_allocations(plan: Plan | None) -> tuple[CurrentAllocation, ...]:
    if plan is None:
        return ()
    return tuple(
        CurrentAllocation(sp.stage, a.variant, a.batch, a.cpu, a.instances, a.replicas)
        for sp in plan.stages for a in sp.allocations
    )


@dataclass(frozen=True)
class ParetoPolicy:
    """ParetoServe's policy: predict the load, solve at it, and decide whether to change what runs."""

    pipeline: ServingPipeline
    limits: SolveLimits | None = None
    lstm: Forecaster | None = None
    baseline: Baseline = Baseline.NONE
    clock: Callable[[], float] | None = None
    """Times the solve (the planner reads no clock itself); None leaves `Plan.solve_ms` unset."""

    def propose(self, observed: Observed, applied: Plan | None, state: PolicyState, *, now: float,
                replan: bool = False) -> StepResult[PolicyState]:
        spec = self.pipeline.spec
        predicted = predict(observed.load_history, spec.adaptation.predictor, lstm=self.lstm)
        observation = Observation(
            load_rps=predicted,
            queue_delay_ms=observed.queue_delay_ms,
            min_remaining_budget_ms=observed.min_remaining_budget_ms,
            current=current_allocations(applied),
        )
        problem = compile_problem(self.pipeline, observation, baseline=self.baseline)
        limits = self.limits or SolveLimits(time_limit_s=spec.adaptation.solver_time_limit_seconds)
        candidate = solve(problem, limits=limits, clock=self.clock)
        still_valid = applied is None or (not replan and covers_load(problem, applied))
        decision, new_state = decide(PolicyContext(
            now=now, candidate=candidate, applied=applied, state=state,
            scale_down_stabilization=spec.adaptation.scale_down_stabilization, applied_still_valid=still_valid,
        ))
        return StepResult(decision, new_state, candidate, predicted, problem, observed)


@dataclass
class ControlLoop(Generic[S]):
    """Calls `step` against a metrics source and an actuator, keeping the policy state in memory."""

    policy: Policy[S]
    source: MetricsSource
    actuator: Actuator
    state: S
    history: list[StepResult[S]] = field(default_factory=list)
    keep_history: int = 0

    def tick(self, now: float) -> StepResult[S]:
        result = step(self.policy, self.source, self.actuator, self.state, now=now)
        self.state = result.state
        if self.keep_history:
            self.history.append(result)
            del self.history[:-self.keep_history]
        return result


def pareto_loop(pipeline: ServingPipeline, source: MetricsSource, actuator: Actuator, *,
                limits: SolveLimits | None = None, lstm: Forecaster | None = None,
                baseline: Baseline = Baseline.NONE,
                clock: Callable[[], float] | None = None) -> ControlLoop[PolicyState]:
    """The control loop of ParetoServe's policy, from a fresh policy state."""
    return ControlLoop(ParetoPolicy(pipeline, limits, lstm, baseline, clock), source, actuator, PolicyState())
