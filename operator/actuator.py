"""The Kubernetes actuator of the control loop: from a plan to gateway calls.

`KubernetesActuator` is what `planner.control.step` applies plans through on a cluster. Unlike the
simulator's pools, a cluster drifts from the plan between steps (a Deployment starts pods at the template's
base size, someone deletes a child), so a kept plan is converged again (`hold`) as well as a new one
applied. `actuate` applies the rendered children, deletes children no longer rendered (a variant removed
from the spec), resizes running pods whose CPU differs from the plan (which is how replacement pods get the
planned CPU) and pushes live settings to the router sidecars. Everything else here is pure: what to delete,
what to resize, where to push.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from paretoserve.operator.children import (
    LABEL_MANAGED,
    LABEL_PIPELINE,
    LABEL_STAGE,
    LABEL_VARIANT,
    MANAGER,
    Owner,
    WorkerSettings,
    allocation_for,
    render_children,
)
from paretoserve.operator.k8s.gateway import CHILD_KINDS, Gateway, GatewayError
from paretoserve.operator.router_push import RouterPusher
from paretoserve.operator.status import ActuationReport
from paretoserve.planner.model import Plan
from paretoserve.planner.spec import ServingPipeline
from paretoserve.workers.plan_rendering import router_update, worker_body


def selector(owner: Owner) -> str:
    return f"{LABEL_PIPELINE}={owner.name},{LABEL_MANAGED}={MANAGER}"


def orphans(existing: Sequence[dict[str, Any]], desired: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(kind, name) of owned objects that the desired set no longer contains."""
    wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
    return sorted({(o["kind"], o["metadata"]["name"]) for o in existing} - wanted)


def _cores(quantity: str | None) -> float | None:
    if quantity is None:
        return None
    text = str(quantity)
    return float(text[:-1]) / 1000.0 if text.endswith("m") else float(text)


def resizes(pods: Sequence[dict[str, Any]], plan: Plan) -> list[tuple[str, str]]:
    """(pod, cpu quantity) for every running Triton container whose CPU differs from the plan."""
    out: list[tuple[str, str]] = []
    for pod in pods:
        meta = pod.get("metadata", {})
        if meta.get("deletionTimestamp") or pod.get("status", {}).get("phase") not in ("Running", "Pending"):
            continue
        labels = meta.get("labels", {})
        alloc = allocation_for(plan, labels.get(LABEL_STAGE, ""), labels.get(LABEL_VARIANT, ""))
        if alloc is None:
            continue
        for container in pod.get("spec", {}).get("containers", []):
            if container.get("name") != "triton":
                continue
            current = _cores(container.get("resources", {}).get("requests", {}).get("cpu"))
            if current is None or abs(current - alloc.cpu) > 1e-6:
                out.append((meta["name"], f"{round(alloc.cpu * 1000)}m"))
    return out


def push_targets(pods: Sequence[dict[str, Any]], pipeline: ServingPipeline,
                 plan: Plan) -> list[tuple[str, dict[str, Any]]]:
    """(pod IP, Triton knobs for the pod's models) of every running worker pod."""
    stages = {s.name: s for s in pipeline.spec.stages}
    targets = []
    for pod in pods:
        status, meta = pod.get("status", {}), pod.get("metadata", {})
        if status.get("phase") != "Running" or not status.get("podIP") or meta.get("deletionTimestamp"):
            continue
        labels = meta.get("labels", {})
        stage = stages.get(labels.get(LABEL_STAGE, ""))
        variant = next((v for v in stage.variants if v.name == labels.get(LABEL_VARIANT)), None) if stage else None
        knobs: dict[str, Any] = {}
        if stage is not None and variant is not None:
            knobs = worker_body(stage, variant, allocation_for(plan, stage.name, variant.name))
        targets.append((status["podIP"], knobs))
    return targets


def actuate(gateway: Gateway, owner: Owner, pipeline: ServingPipeline, plan: Plan | None,
            settings: WorkerSettings, pusher: RouterPusher | None = None) -> ActuationReport:
    """Make the cluster match the plan; errors are collected, not raised, so one bad object does not
    stop the rest (the handler reports them in the Degraded condition)."""
    desired = render_children(owner, pipeline.spec, plan, settings)
    errors: list[str] = []
    applied = 0
    for obj in desired:
        try:
            gateway.apply(obj)
            applied += 1
        except GatewayError as exc:
            errors.append(str(exc))
    existing: list[dict[str, Any]] = []
    for kind in CHILD_KINDS:
        try:
            existing += [{**o, "kind": kind} for o in gateway.list(kind, owner.namespace, selector(owner))]
        except GatewayError as exc:
            errors.append(str(exc))
    deleted = []
    for kind, name in orphans(existing, desired):
        try:
            gateway.delete(kind, owner.namespace, name)
            deleted.append(f"{kind}/{name}")
        except GatewayError as exc:
            errors.append(str(exc))
    resized = []
    if plan is not None and plan.status.has_plan:
        try:
            pods = gateway.list("Pod", owner.namespace, selector(owner))
        except GatewayError as exc:
            errors.append(str(exc))
            pods = []
        for pod, cpu in resizes(pods, plan):
            try:
                gateway.resize_cpu(owner.namespace, pod, "triton", cpu)
                resized.append(f"{pod}={cpu}")
            except GatewayError as exc:
                errors.append(str(exc))
        if pusher is not None:
            update = router_update(pipeline.spec, plan)
            push = pusher.push(push_targets(pods, pipeline, plan), update)
            return ActuationReport(applied, tuple(deleted), tuple(resized), tuple(errors), push.pushed, push.failed)
    return ActuationReport(applied, tuple(deleted), tuple(resized), tuple(errors))


@dataclass
class KubernetesActuator:
    """`planner.control.Actuator` for one pipeline; `report` holds what the last actuation did."""

    gateway: Gateway
    owner: Owner
    pipeline: ServingPipeline
    settings: WorkerSettings
    pusher: RouterPusher | None = None
    running: Plan | None = None
    """The plan in force, as read from the pipeline's status."""
    report: ActuationReport = field(default_factory=lambda: ActuationReport(0, (), (), ()))

    def applied(self) -> Plan | None:
        return self.running

    def apply(self, plan: Plan, *, now: float) -> None:
        self.hold(plan, now=now)

    def hold(self, plan: Plan | None, *, now: float) -> None:
        self.report = actuate(self.gateway, self.owner, self.pipeline, plan, self.settings, self.pusher)
        self.running = plan
