"""The one control step: observe → predict → plan → decide → actuate, state in and state out.

The simulator, the local runtime (`paretoserve up`) and the Kubernetes operator differ only in where
observations come from (a `MetricsSource`), how a plan is applied (an `Actuator`) and where the policy
state is kept between steps (a field, or the CR status); they all call `step`, so the loop exists once.
What happens between observing and actuating is a `Policy`, pure given its inputs:

- `ParetoPolicy`: predict the load, solve the integer program at it, and let `policy.decide` say whether
  to change what runs (ParetoServe, and every baseline that is ParetoServe on a constrained manifest);
  between two such decisions (`adaptation.intervalSeconds`) the loop runs every `adaptation.checkSeconds`
  and `check_load` only asks whether the running plan still carries the newest load: if it does nothing
  happens, if it does not the full decision runs at once instead of at the next interval (a burst is
  met within seconds, not within an interval);
- `paretoserve.planner.selection.SelectingPolicy`: HADIS, the best of several manifests (model pairs);
- `paretoserve.planner.autoscalers.AutoscalerPolicy`: the HPA/VPA rules the papers compare against.

`ControlLoop` is the stateful driver for callers that keep the state in memory (simulator, local runtime);
the operator reads the state from the CR status, calls `step` and writes the new state back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, TypeVar

from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.evaluate import covers_load
from paretoserve.planner.model import Baseline, CurrentAllocation, Plan, Problem, SolveLimits
from paretoserve.planner.policy import Decision, PolicyContext, PolicyState, decide
from paretoserve.planner.predict import Forecaster, moving_max, predict
from paretoserve.planner.scaling import SOLVER as SCALE_OUT
from paretoserve.planner.scaling import scale_out
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
    planned: bool = True
    """False for a load check that held the running plan: `candidate` is that plan, `problem` the load check's."""


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
    """The one control step. An observation failure propagates before anything is changed. A load check that
    held the plan (`StepResult.planned` false) does not call the actuator at all: converging the world to the
    plan happens at the rounds."""
    observed = source.observe(now)
    result = policy.propose(observed, actuator.applied(), state, now=now, replan=replan)
    if not result.planned:  # a load check that held the plan touches nothing
        return result
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


def check_interval(pipeline: ServingPipeline) -> float:
    """Seconds between two steps of ParetoServe's loop: the load-check cadence (full decisions come at the
    interval, `decision_due`)."""
    adaptation = pipeline.spec.adaptation
    return min(adaptation.check_seconds, adaptation.interval_seconds)


def decision_due(pipeline: ServingPipeline, applied: Plan | None, state: PolicyState, *, now: float,
                 replan: bool = False) -> bool:
    """A full decision runs at the interval, on a spec change and before the first plan; in between the
    loop only checks the load."""
    last = state.last_planned_at
    return replan or applied is None or last is None \
        or now - last >= pipeline.spec.adaptation.interval_seconds - 1e-6


@dataclass(frozen=True, slots=True)
class LoadCheck:
    """A load check between decisions: the newest load (the peak of the last `checkSeconds`; no headroom:
    the headroom is there to absorb such peaks, and adding it again re-planned on every noisy second), the
    problem at it, and whether the running plan covers it."""

    covered: bool
    load_rps: float
    problem: Problem
    observed: Observed
    applied: Plan
    state: PolicyState

    def hold(self, reason: str) -> StepResult[PolicyState]:
        return StepResult(Decision(False, self.applied, reason), self.state, self.applied, self.load_rps,
                          self.problem, self.observed, planned=False)


def check_load(pipeline: ServingPipeline, observed: Observed, applied: Plan, state: PolicyState, *,
               baseline: Baseline = Baseline.NONE) -> LoadCheck:
    """Whether `applied` carries the peak of the last `checkSeconds` (`LoadCheck`)."""
    adaptation = pipeline.spec.adaptation
    load = moving_max(observed.load_history, math.ceil(adaptation.check_seconds))
    problem = compile_problem(pipeline, Observation(
        load_rps=load, queue_delay_ms=observed.queue_delay_ms,
        min_remaining_budget_ms=observed.min_remaining_budget_ms, current=current_allocations(applied),
    ), baseline=baseline)
    return LoadCheck(covers_load(problem, applied), load, problem, observed, applied, state)


def still_starting(problem: Problem, applied: Plan, state: PolicyState, *, now: float) -> bool:
    """Whether the last change (a full round: it may have started new pools) may still be loading models,
    within the longest load time of the variants the running plan uses. Re-planning then would start other
    pools and delay the traffic split again; after a scale-out there is nothing to wait for."""
    if state.last_change_at is None or applied.solver == SCALE_OUT:
        return False  # a scale-out started no new pools: nothing to wait for
    used = {(sp.stage, a.variant) for sp in applied.stages for a in sp.allocations}
    slowest = max((o.load_time_s for st in problem.stages for o in st.options if (st.name, o.variant) in used),
                  default=0.0)
    return now - state.last_change_at < slowest


def decision_floor_seconds(pipeline: ServingPipeline) -> int:
    """A decision never plans below the load seen since the previous one (`predict.predict`)."""
    return math.ceil(pipeline.spec.adaptation.interval_seconds)


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
        if applied is not None and not decision_due(self.pipeline, applied, state, now=now, replan=replan):
            between = self.between_decisions(observed, applied, state, now=now)
            if between is not None:
                return between
        return self.decide_now(observed, applied, state, now=now, replan=replan)

    def between_decisions(self, observed: Observed, applied: Plan, state: PolicyState, *,
                          now: float) -> StepResult[PolicyState] | None:
        """The fast path: hold while the running plan covers the load; once it does not, grow its pools
        (`scale_now`), or hold while its last change is still starting; None: run the full decision."""
        check = check_load(self.pipeline, observed, applied, state, baseline=self.baseline)
        if check.covered:
            return check.hold("load check: the running plan covers the load")
        grown = self.scale_now(observed, applied, state, now=now)
        if grown is not None:
            return grown
        if still_starting(check.problem, applied, state, now=now):
            return check.hold("load check: the load outgrew the running plan, whose last change is still "
                              "starting; no other change before it is ready")
        return None

    def _problem(self, observed: Observed, applied: Plan | None) -> tuple[float, Problem]:
        spec = self.pipeline.spec
        predicted = predict(observed.load_history, spec.adaptation.predictor, lstm=self.lstm,
                            floor_seconds=decision_floor_seconds(self.pipeline))
        observation = Observation(
            load_rps=predicted,
            queue_delay_ms=observed.queue_delay_ms,
            min_remaining_budget_ms=observed.min_remaining_budget_ms,
            current=current_allocations(applied),
        )
        return predicted, compile_problem(self.pipeline, observation, baseline=self.baseline)

    def scale_now(self, observed: Observed, applied: Plan, state: PolicyState, *,
                  now: float) -> StepResult[PolicyState] | None:
        """The fast path once the load outgrew the running plan: its pools grown for the predicted load
        (`scaling.scale_out`); None when that breaks a constraint (the full decision runs instead)."""
        predicted, problem = self._problem(observed, applied)
        grown = scale_out(problem, applied)
        if grown is None:
            return None
        decision, new_state = decide(PolicyContext(
            now=now, candidate=grown, applied=applied, state=state,
            scale_down_stabilization=self.pipeline.spec.adaptation.scale_down_stabilization,
            applied_still_valid=False,
        ))
        decision = replace(decision, reason="load check: the load outgrew the running plan; scaled out its pools")
        return StepResult(decision, new_state, grown, predicted, problem, observed)

    def decide_now(self, observed: Observed, applied: Plan | None, state: PolicyState, *, now: float,
                   replan: bool = False) -> StepResult[PolicyState]:
        """The full decision (predict, solve, decide), whether or not it is due."""
        spec = self.pipeline.spec
        predicted, problem = self._problem(observed, applied)
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
