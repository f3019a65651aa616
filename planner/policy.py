"""When to apply a new plan: `decide(ctx) -> (Decision, PolicyState)`, a pure function.

The MILP answers "what is best at the predicted load"; this policy answers "should we change what runs".
Adding resources happens at once; releasing them waits for `scaleDownStabilization` consecutive cheaper
plans (InfAdapter waits for 4), so a dip in load does not churn pods. A planner failure keeps the last plan.
The state is plain data, persisted in the CR status (`to_dict`/`from_dict`), so an operator restart carries
on where it stopped; the clock comes in through `ctx.now`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from paretoserve.planner.model import Plan


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


@dataclass(frozen=True, slots=True)
class Decision:
    apply: bool
    plan: Plan | None
    """The plan that should run after this decision (the candidate, or the one kept)."""
    reason: str


def signature(plan: Plan) -> tuple[Any, ...]:
    """What an actuator would change: allocations and cascade thresholds, not solver bookkeeping."""
    return tuple(
        (sp.stage, sp.threshold, tuple((a.variant, a.role, a.batch, a.cpu, a.instances, a.replicas)
                                       for a in sp.allocations))
        for sp in plan.stages
    )


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
    if not cheaper:
        return Decision(True, candidate, "scale up or reconfigure"), replace(
            state, lower_streak=0, last_change_at=ctx.now)
    streak = state.lower_streak + 1
    if streak >= max(1, ctx.scale_down_stabilization):
        return Decision(True, candidate, f"scale down after {streak} cheaper plans"), replace(
            state, lower_streak=0, last_change_at=ctx.now)
    return (Decision(False, applied, f"scale down deferred ({streak}/{ctx.scale_down_stabilization})"),
            replace(state, lower_streak=streak))
