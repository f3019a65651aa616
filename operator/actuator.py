"""The Kubernetes actuator of the control loop: from a plan to gateway calls.

`KubernetesActuator` is what `planner.control.step` applies plans through on a cluster. Unlike the
simulator's pools, a cluster drifts from the plan between steps (a Deployment starts pods at the template's
base size, someone deletes a child), so a kept plan is converged again (`hold`) as well as a new one
applied. `actuate` applies the rendered children, deletes children no longer rendered (a variant removed
from the spec), resizes running pods whose CPU differs from the plan (which is how replacement pods get the
planned CPU) and pushes live settings to the router sidecars: CPU raises before the push, so that the processes
a knob change starts in a pod's Triton find the cores, lowerings after it, and only on pods whose push has
finished (`lowered_after_push`). Everything else here is pure: what to delete, what to resize, where to push.

Make before break: while capacity the plan counts on is still starting (`still_starting`: pods not created
yet, or placed but not Ready while they load their models), no pod's CPU is lowered and no Deployment loses
replicas; a later round's convergence (`hold`) finishes the release once the new pods serve. Lowered at
once, a plan that moves InfAdapter's traffic from a 19-core ResNet-18 pool to ResNet-18 on 4 cores plus a new
ResNet-34 pool left neither carrying the load for the 7 s ResNet-34 loads (simulated in-place actuation of the
bursty training windows: 95.6-98.4 % SLO attainment, 98.7-99.7 % with this rule). A pod no node took does
not hold anything back: lowering the others' CPU may be what lets it in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from paretoserve.operator.children import WorkerSettings, admin_token, allocation_for, render_children
from paretoserve.operator.k8s.gateway import CHILD_KINDS, Gateway, GatewayError
from paretoserve.operator.naming import LABEL_MANAGED, LABEL_PIPELINE, LABEL_STAGE, LABEL_VARIANT, MANAGER, Owner
from paretoserve.operator.router_push import RouterPusher
from paretoserve.operator.status import ActuationReport
from paretoserve.planner.model import Plan
from paretoserve.planner.spec import ServingPipeline
from paretoserve.workers.plan_rendering import router_update, worker_body


def selector(owner: Owner) -> str:
    return f"{LABEL_PIPELINE}={owner.name},{LABEL_MANAGED}={MANAGER}"


def owned_by(obj: dict[str, Any], uids: set[str] | str) -> bool:
    """True when a controller ownerReference of `obj` points at one of `uids`. Labels are not ownership:
    anyone who may create objects in the namespace can copy them."""
    wanted = {uids} if isinstance(uids, str) else uids
    return any(ref.get("controller") and ref.get("uid") in wanted
               for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def orphans(existing: Sequence[dict[str, Any]], desired: Sequence[dict[str, Any]],
            owner_uid: str) -> list[tuple[str, str]]:
    """(kind, name) of objects this pipeline owns that the desired set no longer contains."""
    wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
    return sorted({(o["kind"], o["metadata"]["name"]) for o in existing if owned_by(o, owner_uid)} - wanted)


def own_pods(deployments: Sequence[dict[str, Any]], replica_sets: Sequence[dict[str, Any]],
             pods: Sequence[dict[str, Any]], owner_uid: str) -> list[dict[str, Any]]:
    """The pods of this pipeline's own Deployments (pipeline -> Deployment -> ReplicaSet -> Pod by uid): a
    look-alike pod that only copies the labels gets no resize and no push."""
    deployment_uids = {d["metadata"]["uid"] for d in deployments if owned_by(d, owner_uid) and "uid" in d["metadata"]}
    rs_uids = {r["metadata"]["uid"] for r in replica_sets if owned_by(r, deployment_uids) and "uid" in r["metadata"]}
    return [p for p in pods if owned_by(p, rs_uids)]


def _cores(quantity: str | None) -> float | None:
    if quantity is None:
        return None
    text = str(quantity)
    return float(text[:-1]) / 1000.0 if text.endswith("m") else float(text)


def _live(pod: dict[str, Any]) -> bool:
    return not pod.get("metadata", {}).get("deletionTimestamp") \
        and pod.get("status", {}).get("phase") in ("Running", "Pending")


def _ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions") or [])


def still_starting(pods: Sequence[dict[str, Any]], plan: Plan | None) -> bool:
    """Whether capacity `plan` counts on is not serving yet: a variant with fewer live pods than its planned
    replicas (not created yet), or a pod placed on a node but not Ready (starting, loading its models)."""
    if plan is None or not plan.status.has_plan:
        return False
    live: Counter[tuple[str, str]] = Counter()
    for pod in filter(_live, pods):
        labels = pod.get("metadata", {}).get("labels", {})
        live[(labels.get(LABEL_STAGE, ""), labels.get(LABEL_VARIANT, ""))] += 1
        if pod.get("spec", {}).get("nodeName") and not _ready(pod):
            return True
    return any(live[(sp.stage, a.variant)] < a.replicas for sp in plan.stages for a in sp.allocations)


def resizes(pods: Sequence[dict[str, Any]], plan: Plan, *, lower: bool = True) -> list[tuple[str, str]]:
    """(pod, cpu quantity) for every running Triton container whose CPU differs from the plan; without
    `lower`, only those the plan raises (make before break, see the module notes)."""
    out: list[tuple[str, str]] = []
    for pod in filter(_live, pods):
        meta = pod.get("metadata", {})
        labels = meta.get("labels", {})
        alloc = allocation_for(plan, labels.get(LABEL_STAGE, ""), labels.get(LABEL_VARIANT, ""))
        if alloc is None:
            continue
        for container in pod.get("spec", {}).get("containers", []):
            if container.get("name") != "triton":
                continue
            current = _cores(container.get("resources", {}).get("requests", {}).get("cpu"))
            if current is None or (abs(current - alloc.cpu) > 1e-6 and (lower or alloc.cpu > current)):
                out.append((meta["name"], f"{round(alloc.cpu * 1000)}m"))
    return out


def lowered_after_push(pods: Sequence[dict[str, Any]], plan: Plan, raised: Sequence[tuple[str, str]],
                       pending: Collection[str]) -> list[tuple[str, str]]:
    """The CPU lowerings of `resizes`, asked for after the round's push, less the pods whose push still runs
    (`pending`: pod IPs). A knob change starts processes in the pod's Triton (a new instance, a model copy loaded
    beside the serving one), so a pod gives its CPU back only once its sidecar has applied the knobs; a push
    still running then is lowered by a later round's convergence."""
    busy = {pod.get("metadata", {}).get("name") for pod in pods if pod.get("status", {}).get("podIP") in pending}
    done = set(raised)
    return [(name, cpu) for name, cpu in resizes(pods, plan) if (name, cpu) not in done and name not in busy]


def keep_replicas(desired: Sequence[dict[str, Any]], existing: Sequence[dict[str, Any]],
                  owner_uid: str) -> list[dict[str, Any]]:
    """`desired` with no Deployment of this pipeline scaled below its current replicas (make before break)."""
    current = {o["metadata"]["name"]: int(o.get("spec", {}).get("replicas") or 0) for o in existing
               if o.get("kind") == "Deployment" and owned_by(o, owner_uid)}
    out = []
    for obj in desired:
        replicas = obj.get("spec", {}).get("replicas")
        now = current.get(obj["metadata"]["name"])
        if obj["kind"] == "Deployment" and replicas is not None and now is not None and now > replicas:
            obj = {**obj, "spec": {**obj["spec"], "replicas": now}}
        out.append(obj)
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
            knobs = worker_body(pipeline.spec.slo, stage, variant, allocation_for(plan, stage.name, variant.name))
        targets.append((status["podIP"], knobs))
    return targets


@dataclass
class _Progress:
    applied: int = 0
    errors: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def attempt(self, action: Callable[[], object]) -> bool:
        try:
            action()
            return True
        except GatewayError as exc:
            self.errors.append(str(exc))
            return False

    def listed(self, gateway: Gateway, kind: str, owner: Owner) -> list[dict[str, Any]]:
        """The pipeline's objects of `kind` by label (ownership is checked separately); [] on failure."""
        try:
            return gateway.list(kind, owner.namespace, selector(owner))
        except GatewayError as exc:
            self.errors.append(str(exc))
            return []


def _apply_owned(gateway: Gateway, owner: Owner, desired: Sequence[dict[str, Any]],
                 existing: Sequence[dict[str, Any]], progress: _Progress) -> None:
    """Server-side apply of each desired object that is ours or does not exist yet; an object of the same
    name that this pipeline does not own is a conflict, reported and left alone (never taken over)."""
    ours = {(o["kind"], o["metadata"]["name"]) for o in existing if owned_by(o, owner.uid)}
    for obj in desired:
        key = (obj["kind"], obj["metadata"]["name"])
        if key not in ours:
            try:
                current = gateway.get(obj["kind"], owner.namespace, key[1])
            except GatewayError as exc:
                progress.errors.append(str(exc))
                continue
            if current is not None and not owned_by(current, owner.uid):
                progress.conflicts.append(f"{key[0]} {owner.namespace}/{key[1]}")
                continue
        if progress.attempt(partial(gateway.apply, obj)):
            progress.applied += 1


def actuate(gateway: Gateway, owner: Owner, pipeline: ServingPipeline, plan: Plan | None,
            settings: WorkerSettings, pusher: RouterPusher | None = None, *, admin_key: bytes) -> ActuationReport:
    """Make the cluster match the plan; errors are collected, not raised, so one bad object does not
    stop the rest (the handler reports them in the Degraded condition)."""
    desired = render_children(owner, pipeline.spec, plan, settings, admin_key=admin_key)
    progress = _Progress()
    listed = {kind: progress.listed(gateway, kind, owner) for kind in CHILD_KINDS}
    existing = [{**o, "kind": kind} for kind, items in listed.items() for o in items]
    pods = own_pods(listed["Deployment"], progress.listed(gateway, "ReplicaSet", owner),
                    progress.listed(gateway, "Pod", owner), owner.uid)
    starting = still_starting(pods, plan)
    if starting:
        desired = keep_replicas(desired, existing, owner.uid)
    _apply_owned(gateway, owner, desired, existing, progress)
    deleted = [f"{kind}/{name}" for kind, name in orphans(existing, desired, owner.uid)
               if progress.attempt(partial(gateway.delete, kind, owner.namespace, name))]
    resized: list[str] = []
    pushed = 0
    push_failures: tuple[str, ...] = ()
    push_pending: tuple[str, ...] = ()
    if plan is not None and plan.status.has_plan:
        def resize(changes: Sequence[tuple[str, str]]) -> list[str]:
            return [f"{pod}={cpu}" for pod, cpu in changes
                    if progress.attempt(partial(gateway.resize_cpu, owner.namespace, pod, "triton", cpu))]

        raised = resizes(pods, plan, lower=False)
        resized = resize(raised)
        if pusher is not None:
            push = pusher.push(push_targets(pods, pipeline, plan), router_update(pipeline.spec, plan),
                               token=admin_token(admin_key, owner))
            pushed, push_failures, push_pending = push.pushed, push.failed, push.pending
        if not starting:
            resized += resize(lowered_after_push(pods, plan, raised, push_pending))
    return ActuationReport(progress.applied, tuple(deleted), tuple(resized), tuple(progress.errors), pushed,
                           push_failures, tuple(progress.conflicts), push_pending)


@dataclass
class KubernetesActuator:
    """`planner.control.Actuator` for one pipeline; `report` holds what the last actuation did."""

    gateway: Gateway
    owner: Owner
    pipeline: ServingPipeline
    settings: WorkerSettings
    pusher: RouterPusher | None = None
    running: Plan | None = None
    admin_key: bytes = field(kw_only=True, repr=False)
    """The operator's key the routers' admin tokens derive from (`children.admin_token`)."""
    """The plan in force, as read from the pipeline's status."""
    report: ActuationReport = field(default_factory=lambda: ActuationReport(0, (), (), ()))

    def applied(self) -> Plan | None:
        return self.running

    def apply(self, plan: Plan, *, now: float) -> None:
        self.hold(plan, now=now)

    def hold(self, plan: Plan | None, *, now: float) -> None:
        self.report = actuate(self.gateway, self.owner, self.pipeline, plan, self.settings, self.pusher,
                             admin_key=self.admin_key)
        self.running = plan
