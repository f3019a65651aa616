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
  met within seconds, not within an interval), planned for the load the burst is heading for by the time
  new capacity is ready (`predict.surge_load`);
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

from paretoserve.planner.compile import MAX_LOAD_RPS, Observation, compile_problem
from paretoserve.planner.evaluate import covers_load
from paretoserve.planner.model import Baseline, CurrentAllocation, Plan, Problem, SolveLimits
from paretoserve.planner.policy import (
    Decision,
    PolicyContext,
    PolicyState,
    decide,
    release_gain,
    switch_cost,
)
from paretoserve.planner.predict import Forecaster, moving_max, predict, surge_load
from paretoserve.planner.scaling import SOLVER as SCALE_OUT
from paretoserve.planner.scaling import as_running, scale_out
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


def starting_plan_suffices(pipeline: ServingPipeline, check: LoadCheck, *,
                            baseline: Baseline = Baseline.NONE) -> bool:
    """Whether the running plan carries the checked load with its pools at full utilisation rather than at
    `targetUtilization`. Replacing a change that is still starting delays every new pool by a whole load
    time again, so that is worth it only when even the starting pools, once ready, will fall short."""
    utilization = pipeline.spec.adaptation.target_utilization
    problem = compile_problem(pipeline, Observation(
        load_rps=check.load_rps * utilization, queue_delay_ms=check.observed.queue_delay_ms,
        min_remaining_budget_ms=check.observed.min_remaining_budget_ms,
        current=current_allocations(check.applied)), baseline=baseline)
    return covers_load(problem, check.applied)


def lead_seconds(pipeline: ServingPipeline) -> float:
    """How long new capacity may take to be ready: the longest model load time of any variant (a new plan may
    start any of them), plus the load-check period in which a burst goes unseen."""
    spec = pipeline.spec
    slowest = max((v.load_time_seconds for s in spec.stages for v in s.variants), default=0.0)
    return slowest + min(spec.adaptation.check_seconds, spec.adaptation.interval_seconds)


def switch_terms(pipeline: ServingPipeline, problem: Problem, applied: Plan | None, candidate: Plan, *,
                 in_place: bool = False) -> tuple[float, float]:
    """(`policy.switch_cost`, `policy.release_gain`) of moving from `applied` to `candidate`: the new pools'
    resource-seconds while their models load, and what the candidate saves over the stabilisation horizon
    (`scaleDownStabilization` intervals, the least time a plan runs before the next release). `in_place`: the
    actuator resizes a running pool's cores in place."""
    if applied is None or not candidate.status.has_plan:
        return 0.0, math.inf
    load_time = {(st.name, o.variant): o.load_time_s for st in problem.stages for o in st.options}
    adaptation = pipeline.spec.adaptation
    horizon = adaptation.interval_seconds * max(1, adaptation.scale_down_stabilization)
    return (switch_cost(applied, candidate, load_time, in_place=in_place),
            release_gain(applied, candidate, horizon))


def running_objective(problem: Problem, applied: Plan | None) -> float | None:
    """The running plan's objective at `problem`'s loads, as it runs (same pools, replicas and threshold);
    None when it breaks a constraint there (capacity, latency, budget) or has no load to split."""
    if applied is None:
        return None
    running = as_running(problem, applied)
    return None if running is None else running.objective


def fast_path(pipeline: ServingPipeline) -> bool:
    """Whether the loop checks the load between rounds (`checkSeconds` below `intervalSeconds`)."""
    adaptation = pipeline.spec.adaptation
    return adaptation.check_seconds < adaptation.interval_seconds


SURGE_BISECTIONS = 3
"""Solves spent finding the highest load with a plan when the surge load has none (1/8 of the gap)."""


def problem_observation(observed: Observed, applied: Plan | None, load_rps: float = 0.0) -> Observation:
    return Observation(load_rps=load_rps, queue_delay_ms=observed.queue_delay_ms,
                       min_remaining_budget_ms=observed.min_remaining_budget_ms,
                       current=current_allocations(applied))


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
    resize_in_place: bool = False
    """The actuator changes a running pool's cores in place (no model load), so a release that only resizes
    pays no switch (`switch_terms`): the operator (`pods/resize`) and `paretoserve up` (a CPU quota) do; False: a
    change of cores starts a new pool, as a Deployment rollout does (the simulator's default `surge` mode)."""

    def propose(self, observed: Observed, applied: Plan | None, state: PolicyState, *, now: float,
                replan: bool = False) -> StepResult[PolicyState]:
        if applied is not None and not decision_due(self.pipeline, applied, state, now=now, replan=replan):
            between = self.between_decisions(observed, applied, state, now=now)
            if between is not None:
                return between
            return self.decide_now(observed, applied, state, now=now, surge=True)
        surge = applied is not None and not replan and fast_path(self.pipeline) \
            and not check_load(self.pipeline, observed, applied, state, baseline=self.baseline).covered
        return self.decide_now(observed, applied, state, now=now, replan=replan, surge=surge)

    def between_decisions(self, observed: Observed, applied: Plan, state: PolicyState, *,
                          now: float) -> StepResult[PolicyState] | None:
        """The fast path: hold while the running plan covers the load; once it does not, grow its pools for
        the surge (`scale_now`), or hold while its last change is still starting and will carry the load once
        ready (`starting_plan_suffices`); None: run the full decision at the surge load."""
        check = check_load(self.pipeline, observed, applied, state, baseline=self.baseline)
        if check.covered:
            return check.hold("load check: the running plan covers the load")
        grown = self.scale_now(observed, applied, state, now=now)
        if grown is not None:
            return grown
        if still_starting(check.problem, applied, state, now=now) \
                and starting_plan_suffices(self.pipeline, check, baseline=self.baseline):
            return check.hold("load check: the load outgrew the running plan's target utilisation, but its last "
                              "change, still starting, carries it at full utilisation; no other change before "
                              "it is ready")
        return None

    def _problem(self, observed: Observed, applied: Plan | None, *, surge: bool = False) -> tuple[float, Problem]:
        spec = self.pipeline.spec
        floor = decision_floor_seconds(self.pipeline)
        predicted = predict(observed.load_history, spec.adaptation.predictor, lstm=self.lstm, floor_seconds=floor)
        if surge:  # the extension never takes a load the program accepts out of its range
            predicted = min(max(predicted, MAX_LOAD_RPS), surge_load(
                observed.load_history, spec.adaptation.predictor, lstm=self.lstm, floor_seconds=floor,
                lead_seconds=lead_seconds(self.pipeline), peak_seconds=math.ceil(spec.adaptation.check_seconds)))
        observation = problem_observation(observed, applied, predicted)
        return predicted, compile_problem(self.pipeline, observation, baseline=self.baseline)

    def scale_now(self, observed: Observed, applied: Plan, state: PolicyState, *,
                  now: float) -> StepResult[PolicyState] | None:
        """The fast path once the load outgrew the running plan: its pools grown for the predicted load
        (`scaling.scale_out`); None when that breaks a constraint (the full decision runs instead)."""
        predicted, problem = self._problem(observed, applied, surge=True)
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
                   replan: bool = False, surge: bool = False) -> StepResult[PolicyState]:
        """The full decision (predict, solve, decide), whether or not it is due. `surge`: the load outgrew the
        running plan, so plan for `predict.surge_load` (the load when new capacity can be ready); where nothing
        carries that, for the most that can be carried (`_most_feasible`)."""
        spec = self.pipeline.spec
        limits = self.limits or SolveLimits(time_limit_s=spec.adaptation.solver_time_limit_seconds)
        predicted, problem = self._problem(observed, applied, surge=surge)
        candidate = solve(problem, limits=limits, clock=self.clock)
        if surge and not candidate.status.has_plan:  # nothing carries the surge: the most that can be carried
            predicted, problem, candidate = self._most_feasible(observed, applied, predicted, limits)
        still_valid = applied is None or (not replan and covers_load(problem, applied))
        cost, gain = switch_terms(self.pipeline, problem, applied, candidate, in_place=self.resize_in_place)
        decision, new_state = decide(PolicyContext(
            now=now, candidate=candidate, applied=applied, state=state,
            scale_down_stabilization=spec.adaptation.scale_down_stabilization, applied_still_valid=still_valid,
            switch_cost=cost, release_gain=gain,
            applied_objective=running_objective(problem, applied) if still_valid else None,
        ))
        return StepResult(decision, new_state, candidate, predicted, problem, observed)

    def _most_feasible(self, observed: Observed, applied: Plan | None, surge: float,
                       limits: SolveLimits) -> tuple[float, Problem, Plan]:
        """Bisect between the forecast and an infeasible surge load (`SURGE_BISECTIONS` solves) for the highest
        load with a plan; the forecast's own solve when even that has none."""
        low_load, low_problem = self._problem(observed, applied)
        best = (low_load, low_problem, solve(low_problem, limits=limits, clock=self.clock))
        if not best[2].status.has_plan:
            return best
        high = surge
        for _ in range(SURGE_BISECTIONS):
            mid = 0.5 * (best[0] + high)
            problem = compile_problem(self.pipeline, problem_observation(observed, applied, mid),
                                      baseline=self.baseline)
            plan = solve(problem, limits=limits, clock=self.clock)
            if plan.status.has_plan:
                best = (mid, problem, plan)
            else:
                high = mid
        return best


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
                clock: Callable[[], float] | None = None, resize_in_place: bool = False) -> ControlLoop[PolicyState]:
    """The control loop of ParetoServe's policy, from a fresh policy state."""
    return ControlLoop(ParetoPolicy(pipeline, limits, lstm, baseline, clock, resize_in_place), source, actuator,
                       PolicyState())
