"""Who may control what, and no tenant can stall the others: the operator's side (issue 10).

Rendered objects are checked field by field (PodSecurity "restricted", loopback-only Triton, the admin port
and token, NetworkPolicies); ownership, conflicts, pushes and the adaptation loop's isolation run against
the recording FakeGateway with time and blocking driven explicitly (events, not sleeps).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from paretoserve.operator import pipeline_steps
from paretoserve.operator.actuator import actuate
from paretoserve.operator.adaptation import AdaptationLoop, PipelineRegistry
from paretoserve.operator.children import RESTRICTED, WorkerSettings, admin_token, render_children
from paretoserve.operator.config import ConfigError, OperatorConfig
from paretoserve.operator.k8s.fake import FakeGateway
from paretoserve.operator.naming import Owner
from paretoserve.operator.router_push import RouterPusher
from paretoserve.planner.control import MetricsSource, Observed
from paretoserve.planner.spec import ServingPipeline, parse_pipeline

from .test_cli import PIPELINE
from .test_operator import OWNER, body, first_plan
from .test_planner_limits import LARGEST

PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}

KEY = b"test-key"


def _children(settings: WorkerSettings | None = None) -> list[dict[str, Any]]:
    return render_children(OWNER, parse_pipeline(PIPELINE).spec, first_plan(), settings or WorkerSettings(),
                           admin_key=b"key")


def test_worker_pods_meet_pod_security_restricted_and_mount_no_token() -> None:
    for deployment in (o for o in _children() if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context == RESTRICTED
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}
            assert context["readOnlyRootFilesystem"] is True
            assert {"name": f"{container['name']}-tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_triton_listens_on_loopback_and_only_the_router_is_published() -> None:
    objects = _children()
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    triton, router = deployment["spec"]["template"]["spec"]["containers"]
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=0.0.0.0"} <= set(triton["args"])
    assert [p["containerPort"] for p in triton["ports"]] == [8002]
    assert "--admin-port=8081" in router["args"]
    assert "--admin-token-file=/var/run/paretoserve/admin/token" in router["args"]
    assert "--triton-url=http://127.0.0.1:8000" in router["args"]
    for service in (o for o in objects if o["kind"] == "Service"):
        assert [p["port"] for p in service["spec"]["ports"]] == [8080]  # no admin, no Triton
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]["router.json"]
    assert ":8000" not in config.replace("127.0.0.1:8000", "")  # other stages through their routers


def test_the_admin_token_is_per_pipeline_and_lives_in_a_secret() -> None:
    secret = next(o for o in _children() if o["kind"] == "Secret")
    assert secret["stringData"]["token"] == admin_token(b"key", OWNER)
    assert secret["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    other = Owner(OWNER.name, OWNER.namespace, "another-uid")  # the same name, recreated
    assert admin_token(b"key", other) != admin_token(b"key", OWNER) != admin_token(b"other", OWNER)


def test_the_network_policy_admits_only_declared_peers() -> None:
    settings = WorkerSettings(operator_peers=(PEER,), prometheus_peers=(PEER,))
    policy = next(o for o in _children(settings) if o["kind"] == "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(ports) == {8080, 8081, 8002}
    assert all(peers for peers in ports.values())  # an empty `from` would admit everyone
    assert ports[8081] == [PEER, PEER] and ports[8002] == [PEER]
    bare = next(o for o in _children() if o["kind"] == "NetworkPolicy")
    assert {r["ports"][0]["port"] for r in bare["spec"]["ingress"]} == {8080}  # no peers: admin port closed
    assert not any(o["kind"] == "NetworkPolicy" for o in _children(WorkerSettings(network_policies=False)))


def test_an_object_the_pipeline_does_not_own_is_never_taken_over() -> None:
    gw = FakeGateway()
    foreign = {"kind": "ConfigMap", "apiVersion": "v1",
               "metadata": {"name": "tiny-detector-small", "namespace": "ns1", "labels": {"team": "b"}},
               "data": {"theirs": "1"}}
    gw.apply(foreign)
    report = actuate(gw, OWNER, parse_pipeline(PIPELINE), first_plan(), WorkerSettings(), admin_key=KEY)
    assert report.conflicts == ("ConfigMap ns1/tiny-detector-small",)
    assert gw.objects[("ConfigMap", "ns1", "tiny-detector-small")]["data"] == {"theirs": "1"}
    assert ("Deployment", "ns1", "tiny-detector-small") in gw.objects  # the rest is applied
    status = pipeline_steps.reconcile(gw, OperatorConfig(), body(), parse_pipeline(PIPELINE), now=0.0).status
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "Conflict"
    assert "ConfigMap ns1/tiny-detector-small exists and is not owned" in degraded["message"]


def test_a_labelled_lookalike_object_is_not_deleted_as_an_orphan() -> None:
    gw = FakeGateway()
    gw.apply({"kind": "Service", "apiVersion": "v1", "metadata": {
        "name": "victim", "namespace": "ns1",
        "labels": {"paretoserve.io/pipeline": "tiny", "app.kubernetes.io/managed-by": "paretoserve"}}})
    actuate(gw, OWNER, parse_pipeline(PIPELINE), first_plan(), WorkerSettings(), admin_key=KEY)
    assert ("Service", "ns1", "victim") in gw.objects


def test_a_stalling_router_costs_the_push_budget_once_and_is_not_pushed_again_meanwhile() -> None:
    release = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "10.0.0.2":
            release.wait(30)  # a hostile pod that never answers in time
        return httpx.Response(200, json={})

    pusher = RouterPusher(budget_s=0.2, transport=httpx.MockTransport(handler))
    try:
        targets = [("10.0.0.1", {}), ("10.0.0.2", {})]
        first = pusher.push(targets, {"stages": []}, token="t")
        assert first.pushed == 1 and first.pending == ("10.0.0.2",) and first.failed == ()
        second = pusher.push(targets, {"stages": []}, token="t")
        assert second.pending == ("10.0.0.2",) and second.pushed == 1  # skipped while in flight
    finally:
        release.set()
        pusher.close()


class _Sources:
    """The two events that drive the slow pipeline: it has entered its observation; it may leave it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()


class _Behaviour:
    """A pipeline's metrics source: a fixed load, a bug, or one that blocks until released."""

    def __init__(self, sources: _Sources, kind: str) -> None:
        self.sources, self.kind = sources, kind

    def observe(self, now: float) -> Observed:
        if self.kind == "boom":
            raise ZeroDivisionError("a bug in one pipeline")
        if self.kind == "slow":
            self.sources.entered.set()
            self.sources.release.wait(30)
        return Observed(load_history=(5.0,) * 10)


def _named(name: str, namespace: str) -> dict[str, Any]:
    doc = body()
    doc["metadata"] = {**doc["metadata"], "name": name, "namespace": namespace, "uid": f"uid-{name}"}
    return doc


def test_one_pipelines_failure_or_slowness_never_holds_back_the_others() -> None:
    gw, registry, sources = FakeGateway(), PipelineRegistry(), _Sources()
    kinds = {"a": "boom", "b": "slow", "c": "ok"}
    for name in kinds:
        first = pipeline_steps.reconcile(gw, OperatorConfig(), _named(name, f"ns-{name}"),
                                         parse_pipeline(PIPELINE), now=0.0).status
        registry.observe("ADDED", {**_named(name, f"ns-{name}"), "status": first})
    def source_for(namespace: str, pipeline: ServingPipeline) -> MetricsSource:
        return _Behaviour(sources, kinds[namespace.removeprefix("ns-")])

    loop = AdaptationLoop(registry, gw, source_for, OperatorConfig(adaptation_workers=3), clock=lambda: 20.0)
    try:
        assert loop.tick() == 3
        assert sources.entered.wait(10)
        assert not loop.wait_idle(0.2)  # b is still stuck in its observation
        assert gw.statuses[("ns-c", "c")]["observedLoadRps"] == 5.0  # c adapted meanwhile
        failed = next(c for c in gw.statuses[("ns-a", "a")]["conditions"] if c["type"] == "Degraded")
        assert failed["reason"] == "AdaptationFailed" and "ZeroDivisionError" in failed["message"]
        assert loop.tick() == 0  # b in flight is not queued twice; a and c are not due
        sources.release.set()
        assert loop.wait_idle(10) and gw.statuses[("ns-b", "b")]["observedLoadRps"] == 5.0
    finally:
        sources.release.set()
        loop.stop()


@pytest.mark.parametrize(("name", "value"), [
    ("PARETOSERVE_TICK_SECONDS", "fast"), ("PARETOSERVE_METRICS_PORT", "70000"),
    ("PARETOSERVE_TOLERATIONS", "{not json"), ("PARETOSERVE_PUSH_ROUTERS", "maybe"),
    ("PARETOSERVE_CLIENT_PEERS", '{"a": 1}'), ("PARETOSERVE_NODE_SELECTOR", "[1]"),
])
def test_a_bad_setting_is_one_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        OperatorConfig.from_env({name: value, "PARETOSERVE_ADMIN_KEY": "k"})


def test_a_plan_written_into_the_status_by_someone_else_is_validated_like_input() -> None:
    gw = FakeGateway()
    first = pipeline_steps.reconcile(gw, OperatorConfig(), body(), parse_pipeline(PIPELINE), now=0.0).status
    forged = {**first, "plan": {**first["plan"], "stages": [
        {**stage, "allocations": [{**a, "replicas": 5000} for a in stage["allocations"]]}
        for stage in first["plan"]["stages"]]}, "policyState": {"lastTickAt": "garbage", "lowerStreak": []}}
    update = pipeline_steps.reconcile(gw, OperatorConfig(), body(forged), parse_pipeline(PIPELINE), now=10.0).status
    assert update["plan"]["stages"] == first["plan"]["stages"]  # replanned, not applied
    deployed = [o["spec"]["replicas"] for (kind, _, _), o in gw.objects.items() if kind == "Deployment"]
    assert max(deployed) < 5000


def test_a_deleted_pipeline_leaves_no_metric_series_behind() -> None:
    from paretoserve.operator import telemetry

    owner = Owner("gone", "ns-gone", "u")
    telemetry.record_decision(owner, first_plan(), applied=True)
    assert 'pipeline="gone"' in _exposition(telemetry)
    telemetry.forget("ns-gone", "gone")
    assert 'pipeline="gone"' not in _exposition(telemetry)


def _exposition(telemetry: Any) -> str:
    from prometheus_client import generate_latest

    return generate_latest(telemetry.REGISTRY).decode()


EXTREMES = {  # every numeric bound at its maximum, on one variant: what the renderers must still express
    "cpu": lambda v, s: v["resources"].update(cpu=1024),
    "memory": lambda v, s: v["resources"].update(memoryGib=16384),
    "gpus": lambda v, s: v["resources"].update(gpus={"nvidia.com/gpu": 64}),
    "queue-delay": lambda v, s: s.update(maxQueueDelayMs=60000),
    "instances": lambda v, s: s.setdefault("bounds", {}).update(maxReplicas=1000),
}


@pytest.mark.parametrize("case", [*LARGEST, *EXTREMES])
def test_every_spec_the_schema_accepts_renders_objects_and_a_router_config_the_sidecar_accepts(case: str) -> None:
    """A spec works end to end or is rejected: nothing accepted may crash the renderer or a sidecar."""
    from paretoserve.planner.serialize import plan_from_json
    from paretoserve.workers.router.config import parse_config

    if case in LARGEST:
        doc = json.loads(json.dumps(LARGEST[case]))
    else:
        doc = json.loads(json.dumps(PIPELINE))
        stage = doc["spec"]["stages"][0]
        variant = stage["variants"][1]
        variant.setdefault("resources", {"cpu": 1})
        EXTREMES[case](variant, stage)
    doc["metadata"] = {"name": "big", "namespace": "ns1", "uid": "u"}
    pipeline = parse_pipeline(doc)
    status = pipeline_steps.reconcile(FakeGateway(), OperatorConfig(), {**doc, "status": {}}, pipeline,
                                      now=0.0).status
    plan = plan_from_json(status["plan"]) if status.get("plan") else None
    objects = render_children(Owner("big", "ns1", "u"), pipeline.spec, plan, WorkerSettings(), admin_key=b"k")
    for config_map in (o for o in objects if o["kind"] == "ConfigMap"):
        parse_config(json.loads(config_map["data"]["router.json"]))
        json.loads(config_map["data"]["worker.json"])
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert all(str(value) not in ("0", "0Mi", "0m") for value in limits.values()), limits
