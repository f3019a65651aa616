"""Operator logic against the recording FakeGateway: rendering, actuation, status, metrics parsing."""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from paretoserve.operator import handlers, pipeline_steps
from paretoserve.operator.actuator import actuate, resizes
from paretoserve.operator.children import WorkerSettings, admin_token, render_children
from paretoserve.operator.config import ConfigError, OperatorConfig
from paretoserve.operator.k8s.fake import FakeGateway
from paretoserve.operator.naming import ANNOTATION_CPU, Owner
from paretoserve.operator.status import due, read_status, set_conditions
from paretoserve.planner.control import MetricsSource, Observed
from paretoserve.planner.serialize import plan_from_json, plan_json
from paretoserve.planner.spec import ServingPipeline, parse_pipeline
from paretoserve.workers.observe.queries import MetricsUnavailable

from .test_cli import PIPELINE

OWNER = Owner("tiny", "ns1", "uid-1")

KEY = b"test-key"


def body(status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    doc = json.loads(json.dumps(PIPELINE))
    doc["metadata"] = {"name": "tiny", "namespace": "ns1", "uid": "uid-1", "generation": generation}
    doc["status"] = status or {}
    return doc


def first_plan() -> Any:
    update = pipeline_steps.reconcile(FakeGateway(), OperatorConfig(), body(), parse_pipeline(PIPELINE), now=100.0)
    return plan_from_json(update.status["plan"])


def test_children_cover_every_variant_with_owner_references() -> None:
    plan = first_plan()
    objects = render_children(OWNER, parse_pipeline(PIPELINE).spec, plan, WorkerSettings(), admin_key=KEY)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objects]
    for name in ("tiny-detector-small", "tiny-detector-large", "tiny-classifier-r18"):
        assert ("ConfigMap", name) in kinds and ("Deployment", name) in kinds and ("Service", name) in kinds
    for o in objects:
        ref = o["metadata"]["ownerReferences"][0]
        assert ref["uid"] == "uid-1" and ref["controller"] is True and ref["kind"] == "ServingPipeline"
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    used = {a.variant for sp in plan.stages for a in sp.allocations}
    for name, d in deployments.items():
        variant = name.rsplit("-", 1)[1]
        assert (d["spec"]["replicas"] > 0) == (variant in used)


def test_worker_pods_read_the_configured_model_repository_and_their_knobs_file() -> None:
    """The stock Triton image has no models: the repository is a setting (chart: workers.modelRepository*)."""
    settings = OperatorConfig.from_env({"PARETOSERVE_MODEL_REPOSITORY": "/models/digits",
                                        "PARETOSERVE_MODEL_REPOSITORY_CLAIM": "digits-models"}).workers
    objects = render_children(OWNER, parse_pipeline(PIPELINE).spec, first_plan(), settings, admin_key=KEY)
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    triton, router = pod["containers"]
    assert "--model-repository=/models/digits" in triton["args"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in triton["volumeMounts"]
    claim = {"claimName": "digits-models", "readOnly": True}
    assert {"name": "models", "persistentVolumeClaim": claim} in pod["volumes"]
    assert "--worker-knobs=/etc/paretoserve/worker.json" in router["args"]
    default = render_children(
        OWNER, parse_pipeline(PIPELINE).spec, first_plan(), OperatorConfig.from_env({}).workers,
        admin_key=KEY)
    pod = next(o for o in default if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert "--model-repository=/models" in pod["containers"][0]["args"]
    assert "models" not in [v["name"] for v in pod["volumes"]]


def test_worker_pods_run_the_projects_images_and_drain_before_they_stop() -> None:
    """Defaults are the images `images/build.sh` builds; a terminating pod keeps serving while its endpoint
    removal propagates (the router drains on SIGTERM, Triton's preStop outlasts it), all within the grace period."""
    settings = OperatorConfig.from_env({"PARETOSERVE_DRAIN_SECONDS": "7", "PARETOSERVE_ROUTER_CPU": "150m",
                                        "PARETOSERVE_ROUTER_MEMORY": "96Mi",
                                        "PARETOSERVE_IMAGE_PULL_POLICY": "Never"}).workers
    objects = render_children(OWNER, parse_pipeline(PIPELINE).spec, first_plan(), settings, admin_key=KEY)
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    triton, router = pod["containers"]
    assert triton["image"] == "ghcr.io/paretoserve/worker-cpu:0.1.0"
    assert router["image"] == "ghcr.io/paretoserve/paretoserve:0.1.0"
    assert triton["imagePullPolicy"] == router["imagePullPolicy"] == "Never"
    assert "--drain-seconds=7" in router["args"] and "lifecycle" not in router  # SIGTERM at once starts the drain
    triton_sleep = triton["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert triton_sleep > 7
    assert pod["terminationGracePeriodSeconds"] > triton_sleep
    assert router["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "router"}
    assert router["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "router"}
    assert router["resources"]["limits"] == {"cpu": "150m", "memory": "96Mi"}


@pytest.mark.parametrize(("env", "message"), [
    ({"PARETOSERVE_ROUTER_CPU": "half"}, "PARETOSERVE_ROUTER_CPU: not a Kubernetes quantity"),
    ({"PARETOSERVE_ROUTER_MEMORY": "1e9 bytes"}, "PARETOSERVE_ROUTER_MEMORY: not a Kubernetes quantity"),
    ({"PARETOSERVE_IMAGE_PULL_POLICY": "Sometimes"}, "PARETOSERVE_IMAGE_PULL_POLICY: must be one of"),
    ({"PARETOSERVE_DRAIN_SECONDS": "-1"}, "PARETOSERVE_DRAIN_SECONDS: must be in"),
])
def test_bad_worker_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OperatorConfig.from_env(env)


def test_template_keeps_base_cpu_and_the_plan_goes_to_an_annotation() -> None:
    plan = first_plan()
    doc = json.loads(json.dumps(PIPELINE))
    doc["spec"]["stages"][0]["variants"][1]["resources"] = {"cpu": 1, "gpus": {"nvidia.com/gpu": 1}}
    objects = render_children(OWNER, parse_pipeline(doc).spec, plan, WorkerSettings(), admin_key=KEY)
    large = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("large"))
    triton = large["spec"]["template"]["spec"]["containers"][0]
    assert triton["resources"]["requests"]["cpu"] == "1000m"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"resourceName": "cpu", "restartPolicy": "NotRequired"} in triton["resizePolicy"]
    assert large["metadata"]["annotations"][ANNOTATION_CPU] == "1000m"


LABELS = {"paretoserve.io/pipeline": "tiny", "app.kubernetes.io/managed-by": "paretoserve"}


def controlled_by(uid: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Owner", "name": "x", "uid": uid, "controller": True}]


def pod(name: str, stage: str, variant: str, cpu: str, gw: FakeGateway | None = None) -> dict[str, Any]:
    """A worker pod; with `gw`, owned as the Deployment controller makes it (Deployment -> ReplicaSet -> Pod)."""
    meta: dict[str, Any] = {"name": name, "namespace": "ns1", "labels": {
        **LABELS, "paretoserve.io/stage": stage, "paretoserve.io/variant": variant}}
    if gw is not None:
        deployment = gw.objects[("Deployment", "ns1", f"tiny-{stage}-{variant}")]
        owners = controlled_by(deployment["metadata"]["uid"])
        rs = gw.apply({"kind": "ReplicaSet", "metadata": {"name": f"tiny-{stage}-{variant}-abc", "namespace": "ns1",
                                                          "labels": dict(meta["labels"]), "ownerReferences": owners}})
        meta["ownerReferences"] = controlled_by(rs["metadata"]["uid"])
    resources = {"requests": {"cpu": cpu}, "limits": {"cpu": cpu}}
    return {"kind": "Pod", "metadata": meta, "spec": {"containers": [{"name": "triton", "resources": resources}]},
            "status": {"phase": "Running"}}


def test_actuate_applies_deletes_orphans_and_resizes_pods() -> None:
    plan = first_plan()
    gw = FakeGateway()
    orphan = {"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {
        "name": "tiny-old-gone", "namespace": "ns1", "labels": LABELS, "ownerReferences": controlled_by("uid-1")}}
    gw.apply(orphan)
    actuate(gw, OWNER, parse_pipeline(PIPELINE), plan, WorkerSettings(), admin_key=KEY)  # creates the Deployments
    large = next(a for sp in plan.stages for a in sp.allocations if a.variant == "large")
    gw.apply(pod("p1", "detector", "large", "250m", gw))
    gw.apply(pod("p2", "detector", "large", f"{round(large.cpu * 1000)}m", gw))
    gw.apply(pod("look-alike", "detector", "large", "250m"))  # the labels, but no owner: never touched
    report = actuate(gw, OWNER, parse_pipeline(PIPELINE), plan, WorkerSettings(), admin_key=KEY)
    assert report.errors == ()
    assert ("delete", "Deployment", "tiny-old-gone") in gw.actions
    assert report.resized == (f"p1={round(large.cpu * 1000)}m",)  # p2 already had the planned size
    assert ("Deployment", "ns1", "tiny-detector-large") in gw.objects


def test_actuate_collects_errors_instead_of_raising() -> None:
    gw = FakeGateway(fail_on={"apply"})
    report = actuate(gw, OWNER, parse_pipeline(PIPELINE), first_plan(), WorkerSettings(), admin_key=KEY)
    assert report.applied == 0 and len(report.errors) > 0


def test_reconcile_writes_plan_conditions_and_generation() -> None:
    gw = FakeGateway()
    update = pipeline_steps.reconcile(gw, OperatorConfig(), body(generation=3), parse_pipeline(PIPELINE), now=50.0)
    status = update.status
    assert status["observedGeneration"] == 3 and status["solverStatus"] == "optimal"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 3
    assert plan_from_json(status["plan"]).status.has_plan
    # a restart (resume) with the plan in the status re-applies the same objects: nothing new, nothing deleted
    before = dict(gw.objects)
    again = pipeline_steps.reconcile(gw, OperatorConfig(), body(status=status, generation=3), parse_pipeline(PIPELINE),
                            now=60.0)
    assert gw.objects.keys() == before.keys() and not any(a[0] == "delete" for a in gw.actions)
    assert again.status["plan"]["stages"] == status["plan"]["stages"]


class FakeSource:
    """The operator's per-pipeline metrics sources, at a fixed load (None: Prometheus unreachable)."""

    def __init__(self, load: float | None) -> None:
        self.load = load
        self.asked: list[tuple[str, str]] = []

    def __call__(self, namespace: str, pipeline: ServingPipeline) -> MetricsSource:
        self.asked.append((namespace, pipeline.metadata.name))
        return self

    def observe(self, now: float) -> Observed:
        if self.load is None:
            raise MetricsUnavailable("connection refused")
        return Observed(load_history=(self.load,) * 10)


def test_adapt_keeps_the_plan_and_flags_missing_metrics() -> None:
    """No metrics, no new plan; but the applied plan stays true of the pods: one the Deployment created since
    (at the template's CPU) is resized to it, and nothing else changes."""
    gw = FakeGateway()
    first = pipeline_steps.reconcile(gw, OperatorConfig(), body(), parse_pipeline(PIPELINE), now=0.0).status
    large = next(a for s in first["plan"]["stages"] for a in s["allocations"] if a["variant"] == "large")
    gw.apply(pod("new", "detector", "large", "250m", gw))
    gw.actions.clear()
    update = pipeline_steps.adapt(gw, FakeSource(None), OperatorConfig(), body(first), parse_pipeline(PIPELINE),
                         now=20.0)
    assert "plan" not in update.status
    assert [a for a in gw.actions if a[0] != "apply"] == [("resize", "new", f"{round(large['cpu'] * 1000)}m")]
    cond = next(c for c in update.status["conditions"] if c["type"] == "MetricsUnavailable")
    assert cond["status"] == "True" and "connection refused" in cond["message"]


def test_adapt_scales_with_the_observed_load() -> None:
    gw = FakeGateway()
    first = pipeline_steps.reconcile(gw, OperatorConfig(), body(), parse_pipeline(PIPELINE), now=0.0).status
    update = pipeline_steps.adapt(gw, FakeSource(200.0), OperatorConfig(), body(first), parse_pipeline(PIPELINE),
                         now=20.0)
    replicas = sum(a["replicas"] for s in update.status["plan"]["stages"] for a in s["allocations"])
    assert replicas > sum(a["replicas"] for s in first["plan"]["stages"] for a in s["allocations"])
    assert update.status["observedLoadRps"] == 200.0 and update.status["policyState"]["lastTickAt"] == 20.0
    deployed = sum(o["spec"]["replicas"] for (k, _, _), o in gw.objects.items() if k == "Deployment")
    assert deployed == replicas


def test_due_follows_the_spec_check_cadence() -> None:
    pipeline = parse_pipeline(PIPELINE)  # default interval 10 s, load checks every 2 s
    assert not due(read_status(body()), pipeline, now=0.0)  # not reconciled yet: reconcile writes the first status
    assert due(read_status(body({"observedGeneration": 1})), pipeline, now=0.0)
    ticked = body({"observedGeneration": 1, "policyState": {"lastTickAt": 5.0}})
    assert not due(read_status(ticked), pipeline, now=6.5)
    assert due(read_status(ticked), pipeline, now=7.0)
    no_checks = parse_pipeline({**PIPELINE, "spec": {**PIPELINE["spec"], "adaptation": {"checkSeconds": 10}}})
    assert not due(read_status(ticked), no_checks, now=14.0)
    assert due(read_status(ticked), no_checks, now=15.0)
    assert not due(read_status(body({"observedGeneration": 1}, generation=2)), pipeline, now=15.0)  # spec changed


def test_conditions_keep_transition_time_when_status_is_unchanged() -> None:
    first = set_conditions([], {"Ready": (True, "A", "")}, now=10.0, generation=1)
    second = set_conditions(first, {"Ready": (True, "B", "")}, now=20.0, generation=2)
    third = set_conditions(second, {"Ready": (False, "C", "")}, now=30.0, generation=2)
    assert second[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert third[0]["lastTransitionTime"] != first[0]["lastTransitionTime"]


def test_plan_json_round_trip() -> None:
    plan = first_plan()
    assert plan_json(plan_from_json(plan_json(plan))) == plan_json(plan)


def test_resize_skips_pods_being_deleted() -> None:
    p = pod("p1", "detector", "large", "100m")
    p["metadata"]["deletionTimestamp"] = "now"
    assert resizes([p], first_plan()) == []


@pytest.mark.parametrize("handler", [handlers.startup, handlers.cleanup, handlers.track, handlers.reconcile])
def test_handlers_are_thin(handler: Any) -> None:
    source = textwrap.dedent(inspect.getsource(handler))
    func = ast.parse(source).body[0]
    assert isinstance(func, ast.FunctionDef)
    assert func.end_lineno is not None and func.end_lineno - func.lineno + 1 <= 30


def test_gateway_is_the_only_kubernetes_client_user() -> None:
    operator_dir = Path(pipeline_steps.__file__).parent
    users = {p.relative_to(operator_dir).as_posix() for p in operator_dir.rglob("*.py")
             if "from kubernetes" in p.read_text() or "import kubernetes" in p.read_text()}
    assert users == {"k8s/gateway.py"}


def test_adaptation_loop_adapts_due_pipelines_and_writes_status() -> None:
    from paretoserve.operator.adaptation import AdaptationLoop, PipelineRegistry

    gw = FakeGateway()
    registry = PipelineRegistry()
    first = pipeline_steps.reconcile(gw, OperatorConfig(), body(), parse_pipeline(PIPELINE), now=0.0).status
    registry.observe("ADDED", body(first))
    clock = iter([20.0, 21.0, 40.0]).__next__
    loop = AdaptationLoop(registry, gw, FakeSource(200.0), OperatorConfig(), clock=clock)
    assert loop.tick() == 1 and loop.wait_idle()  # due: last tick never happened
    assert gw.statuses[("ns1", "tiny")]["observedLoadRps"] == 200.0
    assert loop.tick() == 0  # 1 s later: not due (interval 10 s)
    assert loop.tick() == 1 and loop.wait_idle()
    registry.observe("DELETED", body())
    assert registry.snapshot() == []


def test_a_step_that_overlaps_a_spec_update_does_not_undo_its_reconciliation() -> None:
    """The loop's step started on generation 1; the spec handler reconciled generation 2 and wrote
    observedGeneration 2 before the step's status write. The step must not write observedGeneration 1 back: the
    pipeline would look unreconciled for good and the loop would never adapt it again (seen in the real-node e2e:
    after a spec patch the status kept the old plan and the loop stopped)."""
    from paretoserve.operator.adaptation import AdaptationLoop, PipelineRegistry
    from paretoserve.operator.status import due, read_status

    gw = FakeGateway()
    registry = PipelineRegistry()
    first = pipeline_steps.reconcile(gw, OperatorConfig(), body(), parse_pipeline(PIPELINE), now=0.0).status
    started = body(first)
    registry.observe("ADDED", started)
    newer = {**started, "metadata": {**started["metadata"], "generation": 2},
             "status": {**started["status"], "observedGeneration": 2}}
    registry.observe("MODIFIED", newer)  # the spec handler's write, before the step's
    loop = AdaptationLoop(registry, gw, FakeSource(200.0), OperatorConfig(), clock=lambda: 20.0)
    loop._adapt_one(started, parse_pipeline(PIPELINE), 20.0)  # the step that began on generation 1
    assert "observedGeneration" not in gw.statuses[("ns1", "tiny")]
    current = registry.snapshot()[0]
    assert current["status"]["observedGeneration"] == 2
    assert due(read_status(current), parse_pipeline(PIPELINE), now=40.0)


def test_only_the_active_kopf_peer_adapts() -> None:
    import dataclasses

    from paretoserve.operator.adaptation import AdaptationLoop, PipelineRegistry
    from paretoserve.operator.peering import is_active_peer

    seen = "2026-11-25T08:00:00+00:00"  # epoch 1795593600
    now = 1795593600.0 + 10
    peers = {"a": {"priority": 200, "lifetime": 60, "lastseen": seen},
             "b": {"priority": 100, "lifetime": 60, "lastseen": seen}}
    assert is_active_peer(peers, "a", 200, now=now)
    assert not is_active_peer(peers, "b", 100, now=now)
    assert is_active_peer(peers, "b", 100, now=now + 120)  # a stopped announcing itself
    assert not is_active_peer({**peers, "c": {"priority": 200, "lastseen": seen}}, "a", 200, now=now)

    gw = FakeGateway()
    gw.objects[("ClusterKopfPeering", "", "p")] = {"status": peers}
    registry = PipelineRegistry()
    registry.observe("ADDED", body({"observedGeneration": 1}))
    config = dataclasses.replace(OperatorConfig(), peering="p", priority=100, identity="b")
    standby = AdaptationLoop(registry, gw, FakeSource(10.0), config, clock=lambda: now)
    assert standby.tick() == 0 and gw.statuses == {}
    leader = AdaptationLoop(registry, gw, FakeSource(10.0), dataclasses.replace(config, priority=200, identity="a"),
                            clock=lambda: now)
    assert leader.tick() == 1 and leader.wait_idle() and gw.statuses[("ns1", "tiny")]["policyState"]["adaptedBy"] == "a"


@pytest.mark.parametrize("example", sorted(p.name for p in (Path(__file__).parents[2] / "manifests" / "examples")
                                           .glob("*.yaml")))
def test_rendered_router_config_is_accepted_by_the_router(example: str) -> None:
    """The contract between operator/children.py and workers/router/config.py."""
    from paretoserve.planner.spec import load_pipeline_text
    from paretoserve.workers.router.config import apply_update, parse_config

    text = (Path(__file__).parents[2] / "manifests" / "examples" / example).read_text()
    pipeline = load_pipeline_text(text)
    plan = pipeline_steps.reconcile(FakeGateway(), OperatorConfig(), {**json.loads(json.dumps(
        {"apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline", "spec": pipeline.spec.model_dump(
            by_alias=True, mode="json")})), "metadata": {"name": "p", "namespace": "n", "uid": "u"}}, pipeline,
        now=0.0).status["plan"]
    objects = render_children(
        Owner("p", "n", "u"), pipeline.spec, plan_from_json(plan), WorkerSettings(),
        admin_key=KEY)
    from paretoserve.workers.plan_rendering import router_update

    for cm in (o for o in objects if o["kind"] == "ConfigMap"):
        config = parse_config(json.loads(cm["data"]["router.json"]))
        apply_update(config, router_update(pipeline.spec, plan_from_json(plan)))


def test_router_pusher_posts_live_settings_to_running_pods() -> None:
    import httpx

    from paretoserve.operator.router_push import RouterPusher

    seen: list[tuple[str, str, Any]] = []
    tokens: list[tuple[int | None, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.url.path, json.loads(request.content)))
        tokens.append((request.url.port, request.headers.get("authorization", "")))
        return httpx.Response(200 if request.url.host == "10.9.0.1" else 500, json={})

    gw = FakeGateway()
    actuate(gw, OWNER, parse_pipeline(PIPELINE), first_plan(), WorkerSettings(), admin_key=KEY)
    for name, ip, owned in (("p1", "10.9.0.1", True), ("p2", "10.9.0.2", True), ("fake", "10.9.0.3", False)):
        p = pod(name, "detector", "large", "1000m", gw if owned else None)
        p["status"]["podIP"] = ip
        gw.apply(p)
    pusher = RouterPusher(transport=httpx.MockTransport(handler))
    report = actuate(gw, OWNER, parse_pipeline(PIPELINE), first_plan(), WorkerSettings(), pusher, admin_key=b"k")
    pusher.close()
    assert report.routers_pushed == 1 and report.router_push_failures == ("10.9.0.2: HTTPStatusError",)
    assert {host for host, _, _ in seen} == {"10.9.0.1", "10.9.0.2"}  # the look-alike pod gets nothing
    assert {port for port, _ in tokens} == {8081}
    assert {token for _, token in tokens} == {f"Bearer {admin_token(b'k', OWNER)}"}
    config = next(body for host, path, body in seen if path == "/admin/config")
    assert config["stages"][0] == {"name": "detector", "latencyMs": 50.0, "variants": {"small": 0.0, "large": 1.0}}
    worker = next(body for host, path, body in seen if path == "/admin/worker")
    assert worker == {"models": {"large": {"instanceCount": 1, "preferredBatchSize": 1,
                                           "maxQueueDelayMicroseconds": 0}}}  # batch 1: no batching wait


def test_a_restart_lets_the_policy_decide_and_persists_its_state() -> None:
    """Reconcile on resume is the one control step: a cheaper plan at the recorded load waits for
    scaleDownStabilization like anywhere else, and the streak survives in the status."""
    gw = FakeGateway()
    busy = pipeline_steps.adapt(gw, FakeSource(200.0), OperatorConfig(), body(
        pipeline_steps.reconcile(gw, OperatorConfig(), body(), parse_pipeline(PIPELINE), now=0.0).status),
        parse_pipeline(PIPELINE), now=20.0).status
    calm = {**busy, "observedLoadRps": 1.0}
    resumed = pipeline_steps.reconcile(gw, OperatorConfig(), body(calm), parse_pipeline(PIPELINE), now=30.0).status
    assert resumed["plan"]["stages"] == busy["plan"]["stages"]  # deferred, not overwritten by the candidate
    assert resumed["policyState"]["lowerStreak"] == 1
    again = pipeline_steps.reconcile(gw, OperatorConfig(), body(resumed), parse_pipeline(PIPELINE), now=40.0).status
    assert again["policyState"]["lowerStreak"] == 2


def test_a_spec_change_replans_at_once_but_keeps_the_plan_when_the_new_spec_is_infeasible() -> None:
    gw = FakeGateway()
    first = pipeline_steps.reconcile(gw, OperatorConfig(), body(), parse_pipeline(PIPELINE), now=0.0).status
    tight = json.loads(json.dumps(PIPELINE))
    tight["spec"]["slo"]["latencyMs"] = 1  # nothing meets it
    changed = {**body(first, generation=2), "spec": tight["spec"]}
    update = pipeline_steps.reconcile(gw, OperatorConfig(), changed, parse_pipeline(tight), now=10.0).status
    assert update["solverStatus"] == "infeasible" and update["plan"]["stages"] == first["plan"]["stages"]
    assert update["observedGeneration"] == 2
    assert {a["variant"] for s in first["plan"]["stages"] for a in s["allocations"]} == {"large", "r18"}
    smaller = json.loads(json.dumps(PIPELINE))
    smaller["spec"]["stages"][0]["variants"] = smaller["spec"]["stages"][0]["variants"][:1]  # 'large' removed
    changed = {**body(first, generation=3), "spec": smaller["spec"]}
    update = pipeline_steps.reconcile(gw, OperatorConfig(), changed, parse_pipeline(smaller), now=20.0).status
    assert {a["variant"] for s in update["plan"]["stages"] for a in s["allocations"]} == {"small", "r18"}
    assert update["policyState"]["lowerStreak"] == 0  # cheaper, yet applied at once: the spec changed


def test_adapt_reads_the_pipelines_own_source() -> None:
    gw, sources = FakeGateway(), FakeSource(5.0)
    first = pipeline_steps.reconcile(gw, OperatorConfig(), body(), parse_pipeline(PIPELINE), now=0.0).status
    pipeline_steps.adapt(gw, sources, OperatorConfig(), body(first), parse_pipeline(PIPELINE), now=20.0)
    assert sources.asked == [("ns1", "tiny")]


def test_an_unreadable_status_is_read_as_no_plan_and_a_fresh_policy_state() -> None:
    status = read_status(body({"plan": {"stages": [{"bogus": 1}]}, "policyState": {"lowerStreak": "x"},
                               "observedLoadRps": "nan?", "conditions": "no"}))
    assert status.applied is None and status.policy_state.lower_streak == 0
    assert status.observed_load_rps == 0.0 and status.conditions == []


def test_a_load_check_that_holds_the_plan_touches_nothing() -> None:
    from paretoserve.operator.adaptation import AdaptationLoop, PipelineRegistry

    gw = FakeGateway()
    registry = PipelineRegistry()
    first = pipeline_steps.reconcile(gw, OperatorConfig(), body(), parse_pipeline(PIPELINE), now=0.0).status
    registry.observe("ADDED", body(first))
    clock = iter([20.0, 22.5, 23.0, 25.0]).__next__
    loop = AdaptationLoop(registry, gw, FakeSource(10.0), OperatorConfig(), clock=clock)
    assert loop.tick() == 1 and loop.wait_idle()  # a round at 20 s: status written
    written = dict(gw.statuses[("ns1", "tiny")])
    gw.actions.clear()
    assert loop.tick() == 1 and loop.wait_idle()  # 22.5 s: a load check; 10 rps still fits
    assert gw.actions == [] and gw.statuses[("ns1", "tiny")] == written
    assert loop.tick() == 0  # 23 s: the check at 22.5 s counts, though nothing was written
    assert loop.tick() == 1 and loop.wait_idle()


RESIZABLE = {
    "apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline", "metadata": {"name": "tiny"},
    "spec": {
        "slo": {"latencyMs": 400}, "objective": {"accuracy": 1.0, "cost": 0.01}, "budget": {"cpu": 8},
        "adaptation": {"intervalSeconds": 10, "scaleDownStabilization": 1,
                       "predictor": {"kind": "lastValue", "headroom": 0}},
        "stages": [{"name": "detector", "bounds": {"maxReplicas": 2}, "variants": [
            {"name": "det", "tritonModel": "det", "accuracy": 0.8, "resources": {"cpu": 1}, "loadTimeSeconds": 60,
             "profile": {"points": [{"batch": 1, "cpu": 1, "latencyMs": 50},
                                    {"batch": 1, "cpu": 2, "latencyMs": 30}]}}]}],
    },
}


def test_the_operator_releases_cores_in_place_without_charging_a_model_load() -> None:
    """The operator resizes running pods (`pods/resize`), so a release that only lowers cores per pod starts no
    new pool: it goes through after scaleDownStabilization rounds although the variant takes 60 s to load (counted
    as a new pool, its 60 core-seconds would outweigh the 30 it saves over one round and block it)."""
    gw, pipeline = FakeGateway(), parse_pipeline(RESIZABLE)
    doc = {**json.loads(json.dumps(RESIZABLE)), "metadata": {"name": "tiny", "namespace": "ns1", "uid": "uid-1",
                                                             "generation": 1}}
    first = pipeline_steps.reconcile(gw, OperatorConfig(), {**doc, "status": {}}, pipeline, now=0.0).status
    busy = pipeline_steps.adapt(gw, FakeSource(60.0), OperatorConfig(), {**doc, "status": first}, pipeline,
                                now=20.0).status
    (high,) = busy["plan"]["stages"][0]["allocations"]
    assert (high["cpu"], high["replicas"]) == (2.0, 2), high
    calm = pipeline_steps.adapt(gw, FakeSource(5.0), OperatorConfig(), {**doc, "status": busy}, pipeline,
                                now=40.0).status
    (low,) = calm["plan"]["stages"][0]["allocations"]
    assert (low["variant"], low["cpu"], low["replicas"]) == ("det", 1.0, 1), calm["plan"]


@pytest.mark.parametrize(("env", "expected"),
                         [({}, True), ({"PARETOSERVE_TRITON_STRICT_MODEL_CONFIG": "false"}, False)])
def test_triton_serves_model_configs_as_written_unless_told_otherwise(env: dict[str, str], expected: bool) -> None:
    settings = OperatorConfig.from_env(env).workers
    objects = render_children(OWNER, parse_pipeline(PIPELINE).spec, first_plan(), settings, admin_key=KEY)
    triton = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert ("--disable-auto-complete-config" in triton["args"]) is expected


@pytest.mark.parametrize(("env", "expected"), [({}, False), ({"PARETOSERVE_ROUTER_FASTPATH": "true"}, True),
                                               ({"PARETOSERVE_ROUTER_FASTPATH": "false"}, False)])
def test_the_routers_fast_path_is_rendered_only_when_asked_for(env: dict[str, str], expected: bool) -> None:
    settings = OperatorConfig.from_env(env).workers
    objects = render_children(OWNER, parse_pipeline(PIPELINE).spec, first_plan(), settings, admin_key=KEY)
    router = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][1]
    assert ("--fastpath=auto" in router["args"]) is expected
    with pytest.raises(ConfigError, match="PARETOSERVE_ROUTER_FASTPATH"):
        OperatorConfig.from_env({"PARETOSERVE_ROUTER_FASTPATH": "sometimes"})
