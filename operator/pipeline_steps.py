"""What the kopf handlers do, one function per handler, over injected gateway and metrics source.

`reconcile` runs on create, resume and spec changes: (re)plan at the last observed load, apply the
children, report. `adapt` runs on the timer when the pipeline's adaptation interval is due: observe
Prometheus, `plan_step` (predict → solve → decide), apply, report. Both return the status patch; the
handlers write it. The applied plan and the policy state are read back from the status, which is what
makes a restarted operator converge without duplicating or orphaning objects (all applies are
server-side applies of deterministic objects; orphans are deleted by label).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import kopf

from paretoserve.operator.actuator import ActuationReport, actuate, iso, plan_status, set_conditions
from paretoserve.operator.children import Owner
from paretoserve.operator.config import OperatorConfig
from paretoserve.operator.k8s.gateway import Gateway
from paretoserve.operator.metrics import MetricsUnavailable, PrometheusSource
from paretoserve.operator.router_push import RouterPusher
from paretoserve.operator.telemetry import record_decision
from paretoserve.planner.control import Observed, StepResult, plan_step
from paretoserve.planner.model import Plan
from paretoserve.planner.policy import Decision, PolicyState
from paretoserve.planner.serialize import plan_from_json
from paretoserve.planner.spec import ServingPipeline, SpecError, parse_pipeline


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    status: dict[str, Any]
    event: str | None = None


def plain(value: Any) -> Any:
    """kopf's body views -> plain dicts and lists (what the parser and the renderers expect)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def owner_of(body: Mapping[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def _status(body: Mapping[str, Any]) -> dict[str, Any]:
    status = plain(body.get("status") or {})
    return status if isinstance(status, dict) else {}


def _generation(body: Mapping[str, Any]) -> int:
    return int(body["metadata"].get("generation", 1))


def parse_or_none(body: Mapping[str, Any]) -> ServingPipeline | None:
    try:
        return parse_pipeline(plain(body))
    except SpecError:
        return None


def parse_or_fail(body: Mapping[str, Any], patch: kopf.Patch, *, now: float) -> ServingPipeline:
    """Parse, or mark the pipeline Degraded and stop retrying (the API server's schema normally
    rejects such objects first; this catches what CEL cannot express, e.g. longer dependsOn cycles)."""
    try:
        return parse_pipeline(plain(body))
    except SpecError as exc:
        conditions = set_conditions(_status(body).get("conditions", []), {
            "Ready": (False, "InvalidSpec", str(exc)), "Degraded": (True, "InvalidSpec", str(exc))},
            now=now, generation=_generation(body))
        patch.status["conditions"] = conditions
        patch.status["observedGeneration"] = _generation(body)
        raise kopf.PermanentError(str(exc)) from exc


def applied_plan(body: Mapping[str, Any]) -> Plan | None:
    data = _status(body).get("plan")
    if not data or not data.get("stages"):
        return None
    try:
        return plan_from_json(data)
    except (KeyError, TypeError, ValueError):
        return None  # written by an older operator: replan


def due(body: Mapping[str, Any], pipeline: ServingPipeline, *, now: float) -> bool:
    """Reconciled at this generation (reconcile writes the first status; adapting before it would race
    it and could drop its conditions) and the spec's interval has passed since the last tick."""
    status = _status(body)
    if status.get("observedGeneration") != _generation(body):
        return False
    last = status.get("policyState", {}).get("lastTickAt")
    return last is None or now - float(last) >= pipeline.spec.adaptation.interval_seconds - 1e-3


def _report_conditions(report: ActuationReport, plan: Plan | None, candidate: Plan) -> dict[str, tuple[bool, str, str]]:
    ok = not report.errors
    ready = plan is not None and plan.status.has_plan and ok
    infeasible = not candidate.status.has_plan
    return {
        "Ready": (ready, "PlanApplied" if ready else ("ApplyFailed" if not ok else "NoPlan"),
                  "plan applied" if ready else "; ".join(report.errors) or candidate.message),
        "Progressing": (bool(report.resized or report.deleted or report.router_push_failures),
                        "Resizing" if report.resized else ("RoutersPending" if report.router_push_failures
                                                           else "Stable"),
                        ", ".join(report.resized + report.deleted + report.router_push_failures)),
        "Degraded": (not ok, "ApplyFailed" if not ok else "AsPlanned", "; ".join(report.errors)),
        "Infeasible": (infeasible, candidate.status.value if infeasible else "Feasible",
                       candidate.message if infeasible else ""),
    }


def _status_after(body: Mapping[str, Any], step: StepResult, report: ActuationReport, *, now: float,
                  extra: dict[str, tuple[bool, str, str]]) -> dict[str, Any]:
    plan = step.decision.plan
    updates = {**_report_conditions(report, plan, step.candidate), **extra}
    state = {**step.state.to_dict(), "lastTickAt": now}
    return {
        "observedGeneration": _generation(body),
        "plan": plan_status(plan),
        "solverStatus": step.candidate.status.value,
        "solveMs": step.candidate.solve_ms,
        "predictedLoadRps": round(step.predicted_load, 3),
        "lastDecisionTime": iso(now),
        "policyState": state,
        "desiredCpu": {f"{sp.stage}/{a.variant}": a.cpu for sp in plan.stages for a in sp.allocations}
        if plan else {},
        "conditions": set_conditions(_status(body).get("conditions", []), updates, now=now,
                                     generation=_generation(body)),
    }


def reconcile(gateway: Gateway, config: OperatorConfig, body: Mapping[str, Any], pipeline: ServingPipeline,
              *, now: float, pusher: RouterPusher | None = None) -> StatusUpdate:
    status = _status(body)
    applied = applied_plan(body)
    spec_changed = status.get("observedGeneration") != _generation(body)
    load = float(status.get("observedLoadRps") or 0.0)
    step = plan_step(pipeline, Observed(load_history=(load,)), None, PolicyState.from_dict(
        status.get("policyState")), now=now, clock=time.perf_counter)
    if applied is None or (spec_changed and step.candidate.status.has_plan):
        applied = step.candidate if step.candidate.status.has_plan else None
    step = replace(step, decision=Decision(True, applied, "reconcile"))
    report = actuate(gateway, owner_of(body), pipeline, applied, config.workers, pusher)
    record_decision(owner_of(body), step.candidate, applied=True)
    result = _status_after(body, step, report, now=now, extra={})
    result["observedLoadRps"] = load
    return StatusUpdate(result, f"applied {report.applied} objects" + (f", errors: {report.errors[0]}"
                                                                       if report.errors else ""))


def adapt(gateway: Gateway, source: PrometheusSource | None, config: OperatorConfig, body: Mapping[str, Any],
          pipeline: ServingPipeline, *, now: float, pusher: RouterPusher | None = None) -> StatusUpdate:
    owner = owner_of(body)
    status = _status(body)
    policy_state = {**status.get("policyState", {}), "lastTickAt": now}
    try:
        if source is None:
            raise MetricsUnavailable("no Prometheus URL configured")
        observed = source.observe(owner.namespace, owner.name,
                                  window_s=pipeline.spec.adaptation.predictor.window_seconds, now=now)
    except MetricsUnavailable as exc:
        conditions = set_conditions(status.get("conditions", []), {
            "MetricsUnavailable": (True, "PrometheusUnreachable", str(exc))}, now=now, generation=_generation(body))
        return StatusUpdate({"conditions": conditions, "policyState": policy_state})
    applied = applied_plan(body)
    step = plan_step(pipeline, observed, applied, PolicyState.from_dict(status.get("policyState")), now=now,
                     clock=time.perf_counter)
    report = actuate(gateway, owner, pipeline, step.decision.plan, config.workers, pusher)
    record_decision(owner, step.candidate, applied=step.decision.apply)
    result = _status_after(body, step, report, now=now, extra={
        "MetricsUnavailable": (False, "MetricsRead", f"{len(observed.load_history)} samples")})
    result["observedLoadRps"] = round(observed.load_history[-1], 3)
    event = step.decision.reason if step.decision.apply else None
    return StatusUpdate(result, event)
