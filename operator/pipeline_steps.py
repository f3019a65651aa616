"""The operator's two steps for one pipeline: reconcile (on create, resume, spec change) and adapt (on its
interval). Both are the one control step of `planner.control` with the Kubernetes actuator.

Each reads the pipeline's status once (`status.read_status`: the applied plan, the policy state, the last
observed load), calls `planner.control.step`, and returns the status patch the caller writes once. They
differ only in their metrics source: reconcile plans at the last load the status recorded (it runs before
any metrics exist and on every spec change), adapt reads Prometheus. A changed spec makes the applied plan
invalid, so a feasible new plan replaces it at once; otherwise the policy decides as it does everywhere
(scale up at once, scale down after `scaleDownStabilization` cheaper plans). All applies are server-side
applies of deterministic objects and orphans are deleted by label, so a restarted operator converges
without duplicating or orphaning anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import kopf

from paretoserve.operator.actuator import KubernetesActuator
from paretoserve.operator.config import OperatorConfig
from paretoserve.operator.k8s.gateway import Gateway
from paretoserve.operator.naming import Owner
from paretoserve.operator.router_push import RouterPusher
from paretoserve.operator.status import (
    ActuationReport,
    PipelineStatus,
    metrics_unavailable,
    plain,
    plan_fits,
    read_status,
    set_conditions,
    status_after,
)
from paretoserve.operator.telemetry import record_decision
from paretoserve.planner.control import MetricsSource, Observed, ParetoPolicy, step
from paretoserve.planner.spec import ServingPipeline, SpecError, parse_pipeline
from paretoserve.workers.observe.queries import MetricsUnavailable

SourceFor = Callable[[str, ServingPipeline], MetricsSource]
"""(namespace, pipeline) -> the pipeline's metrics source (Prometheus, in the operator)."""


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    status: dict[str, Any]
    event: str | None = None
    checked_only: bool = False
    """A load check that held the plan: nothing changed, so nothing needs writing (`status` is empty)."""


@dataclass(frozen=True, slots=True)
class LastObservedLoad:
    """Reconcile's metrics source: the load the status last recorded (none before the first adaptation)."""

    load_rps: float

    def observe(self, now: float) -> Observed:
        return Observed(load_history=(self.load_rps,))


def owner_of(body: Mapping[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


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
        fail_permanently(body, patch, str(exc), now=now)


def fail_permanently(body: Mapping[str, Any], patch: kopf.Patch, message: str, *, now: float) -> NoReturn:
    """Mark the pipeline not Ready and Degraded/InvalidSpec, and tell kopf not to retry this generation."""
    status = read_status(body)
    patch.status["conditions"] = set_conditions(status.conditions, {
        "Ready": (False, "InvalidSpec", message), "Degraded": (True, "InvalidSpec", message)},
        now=now, generation=status.generation)
    patch.status["observedGeneration"] = status.generation
    raise kopf.PermanentError(message)


def _run_step(gateway: Gateway, config: OperatorConfig, body: Mapping[str, Any], status: PipelineStatus,
              pipeline: ServingPipeline, source: MetricsSource, *, now: float, pusher: RouterPusher | None,
              replan: bool, from_metrics: bool = False) -> StatusUpdate:
    owner = owner_of(body)
    actuator = _actuator(gateway, config, owner, status, pipeline, pusher)
    policy = ParetoPolicy(pipeline, clock=time.perf_counter, resize_in_place=True)  # pods/resize: no new pod
    result = step(policy, source, actuator, status.policy_state, now=now, replan=replan)
    if not result.planned:
        return StatusUpdate({}, checked_only=True)
    record_decision(owner, result.candidate, applied=result.decision.apply)
    report = actuator.report
    load = result.observed.load_history[-1] if result.observed.load_history else 0.0
    extra = {"MetricsUnavailable": (False, "MetricsRead", f"{len(result.observed.load_history)} samples")}
    patch = status_after(status, result, report, load, now=now, extra=extra if from_metrics else None)
    event = result.decision.reason if result.decision.apply else None
    if report.errors:
        event = f"{event or 'kept the plan'}; errors: {report.errors[0]}"
    return StatusUpdate(patch, event)


def reconcile(gateway: Gateway, config: OperatorConfig, body: Mapping[str, Any], pipeline: ServingPipeline,
              *, now: float, pusher: RouterPusher | None = None) -> StatusUpdate:
    status = read_status(body)
    return _run_step(gateway, config, body, status, pipeline, LastObservedLoad(status.observed_load_rps),
                     now=now, pusher=pusher, replan=status.spec_changed)


def adapt(gateway: Gateway, sources: SourceFor | None, config: OperatorConfig, body: Mapping[str, Any],
          pipeline: ServingPipeline, *, now: float, pusher: RouterPusher | None = None) -> StatusUpdate:
    status = read_status(body)
    try:
        if sources is None:
            raise MetricsUnavailable("no Prometheus URL configured")
        return _run_step(gateway, config, body, status, pipeline, sources(owner_of(body).namespace, pipeline),
                         now=now, pusher=pusher, replan=False, from_metrics=True)
    except MetricsUnavailable as exc:  # raised by the observation, before anything changed
        report = _converge(gateway, config, body, status, pipeline, pusher=pusher, now=now)
        errors = f"kept the plan; errors: {report.errors[0]}" if report is not None and report.errors else None
        return StatusUpdate(metrics_unavailable(status, str(exc), now=now), errors)


def _converge(gateway: Gateway, config: OperatorConfig, body: Mapping[str, Any], status: PipelineStatus,
              pipeline: ServingPipeline, *, pusher: RouterPusher | None, now: float) -> ActuationReport | None:
    """Without metrics there is no new plan, but the applied one must stay true of the pods: a pod the
    Deployment (re)creates starts at the template's CPU and the manifest's threshold until it is resized and
    pushed to. Holding the applied plan does that."""
    actuator = _actuator(gateway, config, owner_of(body), status, pipeline, pusher)
    applied = actuator.applied()
    if applied is None:
        return None
    actuator.hold(applied, now=now)
    return actuator.report


def _actuator(gateway: Gateway, config: OperatorConfig, owner: Owner, status: PipelineStatus,
              pipeline: ServingPipeline, pusher: RouterPusher | None) -> KubernetesActuator:
    """The pipeline's actuator, holding the status's applied plan when it still fits the spec."""
    applied = status.applied if status.applied is not None and plan_fits(status.applied, pipeline) else None
    return KubernetesActuator(gateway, owner, pipeline, config.workers, pusher, applied, admin_key=config.admin_key)
