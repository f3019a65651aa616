"""Make before break in the Kubernetes actuator (operator/actuator.py): while capacity the plan counts on is
still starting, no pod's CPU is lowered and no Deployment loses replicas; raises go through at once."""

from __future__ import annotations

import copy
from typing import Any

from paretoserve.operator.actuator import actuate, keep_replicas, resizes, still_starting
from paretoserve.operator.children import WorkerSettings, render_children
from paretoserve.operator.k8s.fake import FakeGateway
from paretoserve.operator.router_push import PushReport, RouterPusher
from paretoserve.planner.spec import parse_pipeline

from .test_cli import PIPELINE
from .test_operator import KEY, OWNER, controlled_by, first_plan, pod


def serving(p: dict[str, Any]) -> dict[str, Any]:
    """`p` placed on a node and Ready."""
    p["spec"]["nodeName"] = "node-1"
    p["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return p


def millicores(cores: float) -> str:
    return f"{round(cores * 1000)}m"


def planned_pods(gw: FakeGateway | None = None) -> list[dict[str, Any]]:
    """One serving pod per planned replica of `first_plan()`, at the planned CPU."""
    plan = first_plan()
    return [serving(pod(f"{a.variant}-{i}", sp.stage, a.variant, millicores(a.cpu), gw))
            for sp in plan.stages for a in sp.allocations for i in range(a.replicas)]


def test_capacity_starts_until_every_planned_pod_exists_and_is_ready() -> None:
    plan, pods = first_plan(), planned_pods()
    assert not still_starting(pods, plan)
    assert still_starting(pods[1:], plan)  # a replica the ReplicaSet has not created yet
    loading = copy.deepcopy(pods)
    loading[0]["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    assert still_starting(loading, plan)  # placed, loading its models
    unplaced = pod("pending", "detector", "large", "1000m")
    unplaced["status"] = {"phase": "Pending"}
    assert not still_starting(pods + [unplaced], plan)  # no node took it: lowering others may let it in
    leaving = copy.deepcopy(loading)
    leaving[0]["metadata"]["deletionTimestamp"] = "now"
    assert still_starting(leaving, plan)  # a pod on its way out does not count as the planned replica
    assert not still_starting(loading, None)


def test_cpu_is_raised_at_once_and_lowered_only_when_lowering_is_allowed() -> None:
    plan = first_plan()
    (large,) = [a for sp in plan.stages for a in sp.allocations if a.variant == "large"]
    above = pod("above", "detector", "large", millicores(large.cpu + 1.0))
    below = pod("below", "detector", "large", millicores(large.cpu / 2))
    target = millicores(large.cpu)
    assert resizes([above, below], plan) == [("above", target), ("below", target)]
    assert resizes([above, below], plan, lower=False) == [("below", target)]


def test_deployments_keep_their_replicas_while_capacity_starts() -> None:
    desired = render_children(OWNER, parse_pipeline(PIPELINE).spec, first_plan(), WorkerSettings(), admin_key=KEY)
    deployments = [o for o in desired if o["kind"] == "Deployment"]
    name = deployments[0]["metadata"]["name"]
    planned = deployments[0]["spec"]["replicas"]
    existing = [{"kind": "Deployment", "metadata": {"name": name, "ownerReferences": controlled_by("uid-1")},
                 "spec": {"replicas": planned + 2}}]
    kept = {o["metadata"]["name"]: o for o in keep_replicas(desired, existing, "uid-1") if o["kind"] == "Deployment"}
    assert kept[name]["spec"]["replicas"] == planned + 2
    assert deployments[0]["spec"]["replicas"] == planned  # the rendered object itself is not changed
    fewer = [{**existing[0], "spec": {"replicas": max(0, planned - 1)}}]
    assert keep_replicas(desired, fewer, "uid-1") == desired  # growing is never held back
    foreign = [{**existing[0], "metadata": {"name": name, "ownerReferences": controlled_by("someone-else")}}]
    assert keep_replicas(desired, foreign, "uid-1") == desired


def test_actuate_releases_only_once_the_planned_pods_serve() -> None:
    gw, pipeline, plan = FakeGateway(), parse_pipeline(PIPELINE), first_plan()
    actuate(gw, OWNER, pipeline, plan, WorkerSettings(), admin_key=KEY)  # creates the Deployments
    (large,) = [a for sp in plan.stages for a in sp.allocations if a.variant == "large"]
    deployment = gw.objects[("Deployment", "ns1", "tiny-detector-large")]
    deployment["spec"]["replicas"] = large.replicas + 1  # the running plan had one more replica
    gw.apply(serving(pod("big", "detector", "large", millicores(large.cpu + 1.0), gw)))
    report = actuate(gw, OWNER, pipeline, plan, WorkerSettings(), admin_key=KEY)
    assert report.resized == ()  # r18's pod is not there yet: nothing is lowered
    assert gw.objects[("Deployment", "ns1", "tiny-detector-large")]["spec"]["replicas"] == large.replicas + 1
    for p in planned_pods(gw):
        gw.apply(p)
    report = actuate(gw, OWNER, pipeline, plan, WorkerSettings(), admin_key=KEY)
    assert f"big={millicores(large.cpu)}" in report.resized
    assert gw.objects[("Deployment", "ns1", "tiny-detector-large")]["spec"]["replicas"] == large.replicas


class PushRecorder(RouterPusher):
    """The pusher at the gateway boundary: records which resizes the gateway had when the push went out, and
    reports `pending` as still running (a Triton reload past the push budget)."""

    def __init__(self, gw: FakeGateway, pending: tuple[str, ...] = ()) -> None:  # no client, no threads
        self.gw, self.pending, self.seen_at_push = gw, pending, list[Any]()

    def push(self, targets: Any, update: dict[str, Any], *, token: str) -> PushReport:
        self.seen_at_push = [action for action in self.gw.actions if action[0] == "resize"]
        return PushReport(len(list(targets)) - len(self.pending), (), self.pending)


def test_cpu_is_raised_before_the_knob_push_and_lowered_after_it_once_the_pod_has_applied_it() -> None:
    """A knob change starts processes in the pod's Triton (a new instance, a model copy beside the serving one):
    they find the raised cores, and a pod gives cores back only after its sidecar applied the knobs."""
    gw, pipeline, plan = FakeGateway(), parse_pipeline(PIPELINE), first_plan()
    actuate(gw, OWNER, pipeline, plan, WorkerSettings(), admin_key=KEY)  # creates the Deployments
    (large,) = [a for sp in plan.stages for a in sp.allocations if a.variant == "large"]
    for p in planned_pods(gw):
        gw.apply(p)
    target = millicores(large.cpu)
    pods = {"up": millicores(large.cpu / 2), "down": millicores(large.cpu + 1), "busy": millicores(large.cpu + 1)}
    for index, (name, cpu) in enumerate(pods.items()):
        p = serving(pod(name, "detector", "large", cpu, gw))
        p["status"]["podIP"] = f"10.9.0.{index + 1}"
        gw.apply(p)
    gw.actions.clear()
    pusher = PushRecorder(gw, pending=("10.9.0.3",))  # busy's sidecar is still loading
    report = actuate(gw, OWNER, pipeline, plan, WorkerSettings(), pusher, admin_key=KEY)
    assert pusher.seen_at_push == [("resize", "up", target)]  # raised before the push, nothing lowered yet
    assert [a for a in gw.actions if a[0] == "resize"] == [("resize", "up", target), ("resize", "down", target)]
    assert report.router_push_pending == ("10.9.0.3",)
    pusher = PushRecorder(gw)  # the next round: busy's push has finished
    gw.actions.clear()
    actuate(gw, OWNER, pipeline, plan, WorkerSettings(), pusher, admin_key=KEY)
    assert [a for a in gw.actions if a[0] == "resize"] == [("resize", "busy", target)]
