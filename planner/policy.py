"""When to apply a new plan: `decide(ctx) -> (Decision, PolicyState)`, a pure function.

The MILP answers "what is best at the predicted load"; this policy answers "should we change what runs".
Adding resources happens at once; releasing them waits for `scaleDownStabilization` consecutive cheaper
plans (InfAdapter waits for 4), so a dip in load does not churn pods, and happens only when it pays for
itself: a cheaper plan that starts new pools (other variants or cores per replica) runs them beside the old
ones while their models load, so it is applied only if the resources it saves over the stabilisation
horizon exceed those it spends during the switch (`switch_cost`, `release_gain`; a change of cores is no
new pool where the actuator resizes in place). The exception is a load check's scale-out (`scaling`, more
replicas of the running pools for a peak seen between rounds): when the next round's plan is cheaper and starts
no new pools, the peak did not last, and the extra replicas go at once (IPA's video pipeline on a calm training
window scaled YOLOv5s out for one noisy second and kept the replica 30 s, 2.05 cores against HPA's 2.00 at the
same accuracy and attainment). A plan that costs no less and is no better than the running one at the same
load (an equal optimum) is not applied. A planner failure keeps the last plan.
The state is plain data, persisted in the CR status (`to_dict`/`from_dict`), so an operator restart carries
on where it stopped; the clock comes in through `ctx.now`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from paretoserve.planner.model import Plan
from paretoserve.planner.scaling import SOLVER as SCALE_OUT


@dataclass(frozen=True, slots=True)
class PolicyState:
    lower_streak: int = 0
    """Consecutive decisions whose plan was cheaper than the applied one."""
    last_change_at: float | None = None
    decisions: int = 0
    last_planned_at: float | None = None
    """When the last full decision (predict, solve, decide) ran; load checks in between only re-plan when
    the running plan no longer covers the load (`control.check_load`)."""
    pending_switch: tuple[int, int] | None = None
    """Selecting policies (HADIS): (alternative, consecutive steps it has been the best) of a pending move
    from the running alternative to a better one (`selection.choose`)."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"lowerStreak": self.lower_streak, "lastChangeAt": self.last_change_at,
                                "decisions": self.decisions}
        if self.last_planned_at is not None:
            data["lastPlannedAt"] = self.last_planned_at
        if self.pending_switch is not None:
            data["pendingSwitch"] = {"alternative": self.pending_switch[0], "streak": self.pending_switch[1]}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PolicyState:
        if not data:
            return cls()
        last = data.get("lastChangeAt")
        planned = data.get("lastPlannedAt")
        pending = data.get("pendingSwitch")
        return cls(
            lower_streak=int(data.get("lowerStreak", 0)),
            last_change_at=None if last is None else float(last),
            decisions=int(data.get("decisions", 0)),
            last_planned_at=None if planned is None else float(planned),
            pending_switch=(int(pending["alternative"]), int(pending["streak"])) if pending else None,
        )


@dataclass(frozen=True, slots=True)
class PolicyContext:
    now: float
    candidate: Plan
    applied: Plan | None
    state: PolicyState
    scale_down_stabilization: int
    applied_still_valid: bool = True
    """False when the running plan no longer meets the constraints at the new load."""
    switch_cost: float = 0.0
    """Resource-seconds the candidate spends on new pools while their models load (`switch_cost`)."""
    release_gain: float = math.inf
    """Resource-seconds a cheaper candidate saves over the stabilisation horizon (`release_gain`)."""
    applied_objective: float | None = None
    """The running plan's objective at the candidate's problem, where it meets every constraint there as it
    runs (same pools and replicas); None: unknown, or it does not."""


@dataclass(frozen=True, slots=True)
class Decision:
    apply: bool
    plan: Plan | None
    """The plan that should run after this decision (the candidate, or the one kept)."""
    reason: str


OBJECTIVE_TIE = 1e-9
"""Relative objective difference below which two plans are equally good: the program often has several
optima (one or two Triton instances at the same cores and latency within the SLO), and the solver returns
any of them; changing what runs for an equal plan only churns (`decide` keeps the running one)."""


def signature(plan: Plan) -> tuple[Any, ...]:
    """What an actuator would change: allocations and cascade thresholds, not solver bookkeeping."""
    return tuple(
        (sp.stage, sp.threshold, tuple((a.variant, a.role, a.batch, a.cpu, a.instances, a.replicas)
                                       for a in sp.allocations))
        for sp in plan.stages
    )


def resources(plan: Plan) -> float:
    """Cores plus GPUs the plan allocates."""
    return sum((a.cpu + sum(g for _, g in a.gpus)) * a.replicas for sp in plan.stages for a in sp.allocations)


def switch_cost(applied: Plan, candidate: Plan, load_time_s: Mapping[tuple[str, str], float], *,
                in_place: bool = False) -> float:
    """Resource-seconds spent on the candidate's new pools (a pool the applied plan does not run) while their
    models load (`load_time_s` by (stage, variant)); the old pools serve meanwhile, so this is paid twice.
    A pool is a variant in a role with its cores and instances per replica (a new batch size reconfigures
    the running model); `in_place`: the actuator changes a running pool's cores in place, so only other
    variants, roles or instance counts are new pools."""
    def key(stage: str, a: Any) -> tuple[Any, ...]:
        return (stage, a.variant, a.role, a.instances) + (() if in_place else (a.cpu,))

    running = {key(sp.stage, a) for sp in applied.stages for a in sp.allocations if a.replicas > 0}
    return sum((a.cpu + sum(g for _, g in a.gpus)) * a.replicas * load_time_s.get((sp.stage, a.variant), 0.0)
               for sp in candidate.stages for a in sp.allocations
               if a.replicas > 0 and key(sp.stage, a) not in running)


def release_gain(applied: Plan, candidate: Plan, horizon_s: float) -> float:
    """Resource-seconds the candidate saves over `horizon_s`."""
    return (resources(applied) - resources(candidate)) * horizon_s


def decide(ctx: PolicyContext) -> tuple[Decision, PolicyState]:
    state = replace(ctx.state, decisions=ctx.state.decisions + 1, last_planned_at=ctx.now)
    candidate, applied = ctx.candidate, ctx.applied
    if not candidate.status.has_plan:
        return Decision(False, applied, f"kept the current plan: planner returned {candidate.status.value}"), state
    if applied is None:
        return Decision(True, candidate, "first plan"), replace(state, lower_streak=0, last_change_at=ctx.now)
    if signature(candidate) == signature(applied):
        return Decision(False, applied, "unchanged"), replace(state, lower_streak=0)
    cheaper = (candidate.cost or 0.0) < (applied.cost or 0.0) - 1e-9
    if not ctx.applied_still_valid:
        return Decision(True, candidate, "the running plan no longer meets the constraints"), replace(
            state, lower_streak=0, last_change_at=ctx.now)
    if not cheaper and ctx.applied_objective is not None and candidate.objective is not None \
            and candidate.objective <= ctx.applied_objective + OBJECTIVE_TIE * max(1.0, abs(ctx.applied_objective)):
        return (Decision(False, applied, "kept the running plan: the new one costs no less and is no better"),
                replace(state, lower_streak=0))
    if not cheaper:
        return Decision(True, candidate, "scale up or reconfigure"), replace(
            state, lower_streak=0, last_change_at=ctx.now)
    streak = state.lower_streak + 1
    if applied.solver == SCALE_OUT and ctx.switch_cost <= 0.0:
        return (Decision(True, candidate, "released the load check's scale-out: the round's plan needs less"),
                replace(state, lower_streak=0, last_change_at=ctx.now))
    needed = max(1, ctx.scale_down_stabilization)
    if streak >= needed and ctx.release_gain < ctx.switch_cost:
        return (Decision(False, applied, f"scale down not worth its switch: saves {ctx.release_gain:.0f}, new pools "
                                         f"cost {ctx.switch_cost:.0f} resource-seconds while loading"),
                replace(state, lower_streak=streak))
    if streak >= needed:
        return Decision(True, candidate, f"scale down after {streak} cheaper plans"), replace(
            state, lower_streak=0, last_change_at=ctx.now)
    return (Decision(False, applied, f"scale down deferred ({streak}/{ctx.scale_down_stabilization})"),
            replace(state, lower_streak=streak))
