"""Smoke tests for the e2e cluster itself: fake GPU nodes, scheduling, in-place resize.

If these fail, every other e2e test would fail for reasons unrelated to ParetoServe.
"""

from __future__ import annotations

import json
import re
from typing import Any

from e2e_kube import KWOK_TOLERATION, Cluster, KubectlError

GPU = "nvidia.com/gpu"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"


def _container(cpu: str, gpus: int, memory: str = "256Mi") -> dict[str, Any]:
    # Guaranteed QoS (requests == limits); extended resources must have requests == limits anyway.
    resources = {"cpu": cpu, "memory": memory, GPU: str(gpus)}
    return {
        "name": "worker",
        "image": "registry.example/paretoserve/worker:e2e",  # never pulled: kwok runs no containers
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "resizePolicy": [
            {"resourceName": "cpu", "restartPolicy": "NotRequired"},
            {"resourceName": "memory", "restartPolicy": "NotRequired"},
        ],
        # the e2e namespaces enforce PodSecurity "restricted"
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 1000,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
    }


def _pod(name: str, cpu: str = "500m", gpus: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [_container(cpu, gpus)], "tolerations": [KWOK_TOLERATION]},
    }


def _condition(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    conditions: list[dict[str, Any]] = obj.get("status", {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == ctype), None)


def _ready_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        pod: dict[str, Any] = cluster.get_json("-n", namespace, "pod", name)
        ready = _condition(pod, "Ready")
        if pod["status"].get("phase") == "Running" and ready and ready["status"] == "True":
            return pod
        return None

    return cluster.wait_for(probe, f"pod {namespace}/{name} Running and Ready")


def test_server_supports_in_place_resize(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    major, minor = int(version["major"]), int(re.match(r"\d+", version["minor"]).group())  # type: ignore[union-attr]
    # In-place pod resize is beta and on by default from 1.33, GA (always on) from 1.35.
    assert (major, minor) >= (1, 33), f"server {version['gitVersion']} predates in-place resize"


def test_fake_gpu_nodes_are_ready(cluster: Cluster) -> None:
    nodes = cluster.get_json("nodes")["items"]
    fake = [n for n in nodes if n["metadata"].get("annotations", {}).get(FAKE_NODE_ANNOTATION) == "fake"]
    assert len(fake) >= 2, f"expected >= 2 kwok nodes, got {[n['metadata']['name'] for n in nodes]}"
    for node in fake:
        name = node["metadata"]["name"]
        assert node["status"]["allocatable"].get(GPU) == "8", name
        assert node["status"]["capacity"].get(GPU) == "8", name
        assert any(t["key"] == "kwok.x-k8s.io/node" for t in node["spec"].get("taints", [])), name
        ready = _condition(node, "Ready")
        assert ready is not None and ready["status"] == "True", f"{name} not Ready: {ready}"


def test_gpu_deployment_scheduled_on_fake_nodes_and_ready(cluster: Cluster, namespace: str) -> None:
    replicas = 3
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "gpu-worker"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "gpu-worker"}},
                "template": {
                    "metadata": {"labels": {"app": "gpu-worker"}},
                    "spec": {"containers": [_container("250m", 1)], "tolerations": [KWOK_TOLERATION]},
                },
            },
        },
        namespace=namespace,
    )

    def available() -> dict[str, Any] | None:
        dep: dict[str, Any] = cluster.get_json("-n", namespace, "deployment", "gpu-worker")
        return dep if dep.get("status", {}).get("readyReplicas") == replicas else None

    cluster.wait_for(available, f"{replicas} ready replicas of deployment gpu-worker")

    fake_nodes = {
        n["metadata"]["name"]
        for n in cluster.get_json("nodes")["items"]
        if n["metadata"].get("annotations", {}).get(FAKE_NODE_ANNOTATION) == "fake"
    }
    pods = cluster.get_json("-n", namespace, "pods", "-l", "app=gpu-worker")["items"]
    assert len(pods) == replicas
    for pod in pods:
        name = pod["metadata"]["name"]
        assert pod["spec"].get("nodeName") in fake_nodes, f"{name} on {pod['spec'].get('nodeName')}"
        assert pod["status"]["phase"] == "Running", name
        assert _condition(pod, "Ready")["status"] == "True", name  # type: ignore[index]
        assert pod["spec"]["containers"][0]["resources"]["limits"][GPU] == "1", name


def test_pod_cpu_resized_in_place(cluster: Cluster, namespace: str) -> None:
    cluster.apply(_pod("resizable", cpu="500m"), namespace=namespace)
    before = _ready_pod(cluster, namespace, "resizable")
    # kwok's stock stages leave this unset, and then the apiserver refuses any resize.
    status_resources = before["status"]["containerStatuses"][0].get("resources")
    assert status_resources and status_resources["limits"]["cpu"] == "500m", status_resources

    patch = {
        "spec": {
            "containers": [{"name": "worker", "resources": {"requests": {"cpu": "800m"}, "limits": {"cpu": "800m"}}}]
        }
    }
    accepted = cluster.resize(namespace, "resizable", patch)
    assert accepted["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "800m"

    def resized() -> dict[str, Any] | None:
        pod: dict[str, Any] = cluster.get_json("-n", namespace, "pod", "resizable")
        actual = (pod["status"]["containerStatuses"][0].get("resources") or {}).get("requests", {})
        return pod if actual.get("cpu") == "800m" else None

    after = cluster.wait_for(resized, "status.containerStatuses[0].resources.requests.cpu == 800m")
    spec_res = after["spec"]["containers"][0]["resources"]
    assert spec_res["requests"]["cpu"] == spec_res["limits"]["cpu"] == "800m"
    actual = after["status"]["containerStatuses"][0]
    assert actual["resources"]["limits"]["cpu"] == "800m"
    assert actual["resources"]["limits"]["memory"] == "256Mi"
    # In place: same pod object, same node, no restart, still Ready.
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["spec"]["nodeName"] == before["spec"]["nodeName"]
    assert actual["restartCount"] == 0
    assert _condition(after, "Ready")["status"] == "True"  # type: ignore[index]
    # The resize bumped metadata.generation and the (fake) kubelet reported observing it.
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert after["status"].get("observedGeneration") == after["metadata"]["generation"]


def test_gpu_count_cannot_be_resized_in_place(cluster: Cluster, namespace: str) -> None:
    # Guard that the resize path goes through real apiserver validation (only cpu/memory mutable).
    cluster.apply(_pod("fixed-gpus"), namespace=namespace)
    _ready_pod(cluster, namespace, "fixed-gpus")
    gpus = {"requests": {GPU: "2"}, "limits": {GPU: "2"}}
    patch = {"spec": {"containers": [{"name": "worker", "resources": gpus}]}}
    try:
        cluster.resize(namespace, "fixed-gpus", patch)
    except KubectlError as exc:
        assert "only cpu and memory resources are mutable" in exc.stderr, exc.stderr
    else:
        raise AssertionError("resizing nvidia.com/gpu in place was accepted")


def test_pod_needing_more_gpus_than_any_node_stays_pending(cluster: Cluster, namespace: str) -> None:
    cluster.apply(_pod("too-big", gpus=9), namespace=namespace)

    def unschedulable() -> dict[str, Any] | None:
        pod: dict[str, Any] = cluster.get_json("-n", namespace, "pod", "too-big")
        cond = _condition(pod, "PodScheduled")
        return pod if cond and cond["status"] == "False" and cond.get("reason") == "Unschedulable" else None

    pod = cluster.wait_for(unschedulable, "PodScheduled=False/Unschedulable for pod too-big")
    assert f"Insufficient {GPU}" in _condition(pod, "PodScheduled")["message"]  # type: ignore[index]
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")
