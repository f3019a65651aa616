"""The ServingPipeline's status: read once per step, written once per step.

The status is where the operator keeps what must survive a restart: the applied plan, the policy state
(streaks, the last tick, a pending HADIS switch), the last observed load and the conditions. `read_status`
turns it into typed values once, tolerating what an older operator wrote (an unreadable plan means
"replan"); `status_after` renders the patch after a control step; `set_conditions` keeps metav1.Condition
semantics (transition times move only when a status flips). All pure.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from paretoserve.planner.control import StepResult, check_interval
from paretoserve.planner.model import Plan
from paretoserve.planner.policy import PolicyState
from paretoserve.planner.serialize import plan_from_json, plan_json
from paretoserve.planner.spec import ServingPipeline

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "Infeasible", "MetricsUnavailable")
MAX_CPU, MAX_INSTANCES, MAX_BATCH = 1024.0, 64, 4096
"""Bounds a plan read back from the status must respect (the API's own limits on a variant's resources)."""


@dataclass(frozen=True, slots=True)
class ActuationReport:
    """What one actuation did (the Kubernetes actuator fills it; the conditions report it)."""

    applied: int
    deleted: tuple[str, ...]
    resized: tuple[str, ...]
    errors: tuple[str, ...]
    routers_pushed: int = 0
    router_push_failures: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    """Objects of a child's name that this pipeline does not own: left alone, never taken over."""
    router_push_pending: tuple[str, ...] = ()
    """Pods whose push was still running when the push budget ran out (it completes in the background)."""


def plain(value: Any) -> Any:
    """kopf's body views -> plain dicts and lists (what the parser and the renderers expect)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    """What the operator reads back from a pipeline's body, once per step."""

    generation: int
    observed_generation: int | None
    applied: Plan | None
    policy_state: PolicyState
    policy_data: dict[str, Any]
    """The stored policyState as written (it also carries lastTickAt and adaptedBy)."""
    observed_load_rps: float
    conditions: list[dict[str, Any]]

    @property
    def spec_changed(self) -> bool:
        """The spec moved past what the last reconcile saw: the applied plan was made for another spec."""
        return self.observed_generation != self.generation

    @property
    def last_tick_at(self) -> float | None:
        try:
            last = float(self.policy_data["lastTickAt"])
        except (KeyError, TypeError, ValueError):
            return None
        return last if math.isfinite(last) else None


def _applied_plan(data: Any) -> Plan | None:
    if not isinstance(data, dict) or not data.get("stages"):
        return None
    try:
        return plan_from_json(data)
    except (KeyError, TypeError, ValueError):
        return None  # written by an older operator: replan


def _policy_state(data: dict[str, Any]) -> PolicyState:
    try:
        return PolicyState.from_dict(data)
    except (KeyError, TypeError, ValueError):
        return PolicyState()  # unreadable: start the streaks again rather than fail the pipeline


def plan_fits(plan: Plan, pipeline: ServingPipeline) -> bool:
    """Whether a plan read back from the status could have been made for this spec: known stages and
    variants, replicas within the stage's bounds, sane sizes. The status is a cache anyone with
    `servingpipelines/status` access can write, so it is validated like input; a plan that does not fit is
    dropped (the policy replans) rather than applied."""
    stages = {s.name: s for s in pipeline.spec.stages}
    for sp in plan.stages:
        stage = stages.get(sp.stage)
        if stage is None:
            return False
        variants = {v.name for v in stage.variants}
        total = 0
        for a in sp.allocations:
            if a.variant not in variants or not (0 <= a.replicas <= stage.bounds.max_replicas):
                return False
            if not (0 < a.cpu <= MAX_CPU and 1 <= a.instances <= MAX_INSTANCES and 1 <= a.batch <= MAX_BATCH):
                return False
            total += a.replicas
        if total > stage.bounds.max_replicas:
            return False
    return True


def read_status(body: Mapping[str, Any]) -> PipelineStatus:
    status = plain(body.get("status") or {})
    status = status if isinstance(status, dict) else {}
    policy = status.get("policyState")
    policy = policy if isinstance(policy, dict) else {}
    observed = status.get("observedGeneration")
    try:
        load = max(0.0, float(status.get("observedLoadRps") or 0.0))
    except (TypeError, ValueError):
        load = 0.0
    conditions = status.get("conditions")
    return PipelineStatus(
        generation=int(body["metadata"].get("generation", 1)),
        observed_generation=observed if isinstance(observed, int) else None,
        applied=_applied_plan(status.get("plan")),
        policy_state=_policy_state(policy),
        policy_data=policy,
        observed_load_rps=load if load == load else 0.0,
        conditions=conditions if isinstance(conditions, list) else [],
    )


def due(status: PipelineStatus, pipeline: ServingPipeline, *, now: float, last_check: float | None = None) -> bool:
    """Reconciled at this generation (reconcile writes the first status; adapting before it would race
    it and could drop its conditions) and a load check is due: `checkSeconds` since the last step, written
    (`lastTickAt`) or a held check the loop remembers (`last_check`); the policy itself runs a full decision
    only every `intervalSeconds`."""
    if status.spec_changed:
        return False
    last = max((t for t in (status.last_tick_at, last_check) if t is not None), default=None)
    return last is None or now - last >= check_interval(pipeline) - 1e-3


def iso(now: float) -> str:
    return dt.datetime.fromtimestamp(now, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_conditions(previous: Sequence[dict[str, Any]], updates: dict[str, tuple[bool, str, str]],
                   *, now: float, generation: int) -> list[dict[str, Any]]:
    """metav1.Condition list: `updates` maps type -> (status, reason, message); transitions keep time."""
    by_type = {c["type"]: dict(c) for c in previous if isinstance(c, dict) and c.get("type") in CONDITION_TYPES}
    for kind, (status, reason, message) in updates.items():
        value = "True" if status else "False"
        old = by_type.get(kind)
        changed = old is None or old.get("status") != value
        by_type[kind] = {
            "type": kind, "status": value, "reason": reason, "message": message[:1000],
            "observedGeneration": generation,
            "lastTransitionTime": iso(now) if changed or old is None else old.get("lastTransitionTime", iso(now)),
        }
    return [by_type[k] for k in CONDITION_TYPES if k in by_type]


def _without_nulls(value: Any) -> Any:
    """A merge patch deletes keys set to null, so the stored status would differ from what was sent."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def plan_status(plan: Plan | None) -> dict[str, Any] | None:
    return None if plan is None else _without_nulls(plan_json(plan))


def _report_conditions(report: ActuationReport, plan: Plan | None, candidate: Plan) -> dict[str, tuple[bool, str, str]]:
    ok = not report.errors and not report.conflicts
    pushes_open = report.router_push_failures + report.router_push_pending
    ready = plan is not None and plan.status.has_plan and ok
    infeasible = not candidate.status.has_plan
    return {
        "Ready": (ready, "PlanApplied" if ready else ("ApplyFailed" if not ok else "NoPlan"),
                  "plan applied" if ready else "; ".join(report.conflicts + report.errors) or candidate.message),
        "Progressing": (bool(report.resized or report.deleted or pushes_open),
                        "Resizing" if report.resized else ("RoutersPending" if pushes_open else "Stable"),
                        ", ".join(report.resized + report.deleted + pushes_open)),
        "Degraded": (not ok, "Conflict" if report.conflicts else ("ApplyFailed" if not ok else "AsPlanned"),
                     "; ".join([*(f"{c} exists and is not owned by this pipeline" for c in report.conflicts),
                                *report.errors])),
        "Infeasible": (infeasible, candidate.status.value if infeasible else "Feasible",
                       candidate.message if infeasible else ""),
    }


def status_after(status: PipelineStatus, result: StepResult[PolicyState], report: ActuationReport,
                 observed_load_rps: float, *, now: float,
                 extra: dict[str, tuple[bool, str, str]] | None = None) -> dict[str, Any]:
    """The status patch after a control step: the plan in force, the new policy state, the conditions."""
    plan = result.decision.plan
    updates = {**_report_conditions(report, plan, result.candidate), **(extra or {})}
    return {
        "observedGeneration": status.generation,
        "plan": plan_status(plan),
        "solverStatus": result.candidate.status.value,
        "solveMs": result.candidate.solve_ms,
        "predictedLoadRps": round(result.predicted_load, 3),
        "observedLoadRps": round(observed_load_rps, 3),
        "lastDecisionTime": iso(now),
        "policyState": {**result.state.to_dict(), "lastTickAt": now},
        "desiredCpu": {f"{sp.stage}/{a.variant}": a.cpu for sp in plan.stages for a in sp.allocations}
        if plan else {},
        "conditions": set_conditions(status.conditions, updates, now=now, generation=status.generation),
    }


def metrics_unavailable(status: PipelineStatus, message: str, *, now: float) -> dict[str, Any]:
    """The status patch when Prometheus could not be read: the plan stays, the tick counts as done."""
    return {
        "conditions": set_conditions(status.conditions, {
            "MetricsUnavailable": (True, "PrometheusUnreachable", message)}, now=now, generation=status.generation),
        "policyState": {**status.policy_data, "lastTickAt": now},
    }


def adaptation_failed(status: PipelineStatus, message: str, *, now: float) -> dict[str, Any]:
    """The status patch when a pipeline's adaptation raised: the plan stays, the failure is visible, and the
    tick counts as done (a failing pipeline retries at its interval, not in a hot loop)."""
    return {
        "conditions": set_conditions(status.conditions, {
            "Degraded": (True, "AdaptationFailed", message)}, now=now, generation=status.generation),
        "policyState": {**status.policy_data, "lastTickAt": now},
    }
