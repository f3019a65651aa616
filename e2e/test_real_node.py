"""The product path on real pods: the chart installs the operator as a pod, a digits cascade serves from real
worker pods, and what the operator plans is what the kernel enforces.

The real-node tier (`real_tier.py`): a node that really runs containers (the local kubelet started with
``PARETOSERVE_REAL_NODE=1``, or a kind worker labelled ``paretoserve.io/node=real``) and the project's images
on it. Every pod here runs the images built by ``images/build.sh``; nothing is a fake.

Covers, in the order a user meets them:
- ``helm install`` with the built images: the operator runs as a pod with the chart's ServiceAccount and
  PodSecurity-restricted security context, and stays up;
- ``kubectl apply`` of ``manifests/examples/digits-cluster.yaml`` (cascade tiny_linear → cnn_large): the
  worker pods pass their real readiness probes (the router is ready once its Triton loaded its models), and
  every held-out digit sent to the pipeline's Service from a pod in the cluster (DNS, kube-proxy) gets an
  answer whose accuracy is within 1 point of the local runtime's (the cascade's measured quality at the
  planned threshold); Prometheus, discovering the pods as users' Prometheus would, shows the cascade split;
- the planned CPU per pod is the Triton container's CFS quota (read inside the container), though the pod
  template asks for less: the operator's in-place resize reached the kernel;
- the planned threshold is in every router's live config (pushed to their pod IPs, read back through the
  admin API with the pod's own token);
- every router's data port is the compiled fast path (``native/fastpath``, in the router image): it runs in the
  router container, answers a plain model request, and its counts are in the router's ``/metrics``;
- a plan with two Triton instances per pod reaches the running servers (no restart, no new pod);
- a pod of another namespace gets 401 from the routers' admin API and finds no Triton HTTP/gRPC endpoint
  at a worker pod's IP (only its metrics);
- a load step from a pod adds replicas that start and take traffic; scale-down (drained), deleting a worker
  pod and deleting the operator pod lose no request silently;
- deleting the pipeline and uninstalling the chart leave nothing but the kept CRD.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import real_tier
import yaml
from e2e_kube import Cluster
from real_tier import (
    OPERATOR_IMAGE,
    WORKER_IMAGE,
    PrometheusWithDiscovery,
    RealNode,
    allocations,
    cgroup_cpu_quota,
    helm_install,
    helm_uninstall,
    loadgen_pod,
    operator_logs,
    pod_ready,
    pod_report,
    real_node_or_skip,
    restricted_namespace,
    router_admin_config,
    script_pod,
    wait_planned_pods_ready,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RELEASE = "paretoserve"  # the kwok tier's release: the kept CRD stays owned by it, so the upgrade adopts it
RELEASE_NS = "paretoserve-system"
MANIFEST = REPO_ROOT / "manifests" / "examples" / "digits-cluster.yaml"
PIPELINE = "digits-cluster"
ROUTER_RESOURCES = {"cpu": "100m", "memory": "192Mi"}
"""The node has 2 cores: five worker pods, the operator and a load generator must fit in their requests."""


@pytest.fixture(scope="module")
def node(cluster: Cluster) -> RealNode:
    return real_node_or_skip(cluster)


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, node: RealNode) -> Iterator[PrometheusWithDiscovery]:
    # Prometheus runs on the test host. The local real node's IP is a host address; on kind, give an address
    # of the host that the nodes reach (the docker network's gateway, e.g. 172.18.0.1).
    server = PrometheusWithDiscovery(Path(cluster.kubeconfig), os.environ.get("PARETOSERVE_E2E_HOST_IP", node.ip))
    yield server
    server.close()


_RUNNING: dict[str, Cluster] = {}
"""The cluster the operator was installed on, for `failure_context`."""


def failure_context(lines: int = 80) -> str:
    """The operator's last log lines (its decisions, retries and errors): added to a failed test's report."""
    cluster = _RUNNING.get("cluster")
    return "(the operator was not installed)" if cluster is None else operator_logs(cluster, RELEASE_NS, lines)


@pytest.fixture(scope="module")
def release(cluster: Cluster, node: RealNode, prometheus: PrometheusWithDiscovery) -> Iterator[str]:
    _RUNNING["cluster"] = cluster
    scheduling = node.scheduling
    values = {
        "operator": {"tickSeconds": 2, **scheduling},
        "prometheus": {"url": prometheus.url},
        # the routers' data ports through the compiled fast path (off by default): every test below then serves
        # through it; the LLM module keeps the default, so both ways run on real pods
        "workers": {**scheduling, "routerResources": ROUTER_RESOURCES, "routerFastPath": True},
    }
    helm_install(cluster, RELEASE, RELEASE_NS, values)
    yield RELEASE_NS
    _RUNNING.clear()
    helm_uninstall(cluster, RELEASE, RELEASE_NS)


@pytest.fixture(scope="module")
def served(cluster: Cluster, release: str) -> Iterator[str]:
    """The digits cascade applied in a PodSecurity-restricted namespace; yields the namespace."""
    namespace = restricted_namespace(cluster, "e2e-real")
    cluster.kubectl("-n", namespace, "apply", "-f", str(MANIFEST))
    yield namespace
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def status_plan(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    return real_tier.status_plan(cluster, namespace, PIPELINE)


def worker_pods(cluster: Cluster, namespace: str, variant: str) -> list[dict[str, Any]]:
    return real_tier.worker_pods(cluster, namespace, PIPELINE, variant)


def wait_serving(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """The plan, once every planned replica is a Ready pod (real readiness probes)."""
    return wait_planned_pods_ready(cluster, namespace, PIPELINE)


def held_out_digits() -> dict[str, Any]:
    from paretoserve.workers.models import load_split

    split = load_split()
    return {"images": split.x_test.reshape(len(split.x_test), -1).round(4).tolist(),
            "labels": split.y_test.tolist()}


def test_the_operator_runs_as_a_pod_with_the_charts_security(cluster: Cluster, release: str) -> None:
    pods = cluster.get_json("-n", release, "pods", "-l", "app.kubernetes.io/name=paretoserve")["items"]
    assert len(pods) == 1
    pod = pods[0]
    container = pod["spec"]["containers"][0]
    assert container["image"] == OPERATOR_IMAGE
    assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-paretoserve"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


def test_a_cascade_serves_correct_answers_from_real_pods(cluster: Cluster, node: RealNode, served: str,
                                                         prometheus: PrometheusWithDiscovery) -> None:
    plan = wait_serving(cluster, served)
    for variant in allocations(plan):
        for pod in worker_pods(cluster, served, variant):
            images = {c["name"]: c["image"] for c in pod["spec"]["containers"]}
            assert images == {"triton": WORKER_IMAGE, "router": OPERATOR_IMAGE}
            assert pod["spec"]["nodeName"] == node.name
    digits = held_out_digits()
    sent = len(digits["labels"])
    url = f"http://{PIPELINE}.{served}.svc.cluster.local:8080"
    for obj in loadgen_pod(served, "correctness", node, digits,
                               ["--url", url, "--pipeline", PIPELINE, "--phases", f"15x{sent / 15}"]):
        cluster.apply(obj)
    report = pod_report(cluster, served, "correctness", timeout_s=180)

    assert report["sent"] == sent and report["outcomes"] == {"ok": sent}, report["outcomes"]
    stage = status_plan(cluster, served)["stages"][0]  # type: ignore[index]
    manifest = yaml.safe_load(MANIFEST.read_text())
    rows = manifest["spec"]["stages"][0]["cascade"]["rows"]
    local_quality = min(rows, key=lambda r: abs(r["threshold"] - stage["threshold"]))["quality"]
    assert abs(report["accuracy"] - local_quality) <= 0.01, (report["accuracy"], local_quality, stage)
    # Prometheus found the worker pods by Kubernetes discovery and scraped the routers' split. Each router
    # counts the requests it answered; a pod the operator replaced since keeps its last count in the window.
    def total(metric: str, labels: str = "") -> float | None:
        return prometheus.value(f'sum(max_over_time({metric}{{namespace="{served}",pipeline="{PIPELINE}"'
                                f'{labels}}}[10m]))')

    # every row is answered once, by the light model (confident) or by the heavy one it was deferred to
    def answered() -> tuple[float, float] | None:
        light = total("paretoserve_router_requests_total", ',route="light"') or 0.0
        heavy = total("paretoserve_router_requests_total", ',route="heavy"') or 0.0
        return (light, heavy) if light + heavy >= sent else None

    light, heavy = cluster.wait_for(answered, f"{sent} answered rows in Prometheus", timeout=60)
    deferred = total("paretoserve_router_deferrals_total")
    assert light > 0 and heavy > 0 and deferred is not None and deferred >= heavy, (light, heavy, deferred)
    assert total("nv_inference_request_success", ',model="cnn_large"')  # Triton's own series, same pods


def test_the_planned_cpu_is_the_triton_containers_cfs_quota(cluster: Cluster, served: str) -> None:
    plan = wait_serving(cluster, served)
    checked, resized = 0, 0
    for variant, alloc in allocations(plan).items():
        deployment = cluster.get_json("-n", served, "deployment", f"{PIPELINE}-classify-{variant}")
        template_cpu = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
        for pod in worker_pods(cluster, served, variant):
            if not pod_ready(pod):
                continue
            quota = cluster.wait_for(
                lambda p=pod["metadata"]["name"], want=alloc["cpu"]: (
                    q if abs((q := cgroup_cpu_quota(cluster, served, p, "triton")) - want) < 1e-3 else None),
                f"{variant}: Triton's CFS quota at the planned {alloc['cpu']} cores", timeout=60)
            assert quota == pytest.approx(alloc["cpu"])
            checked += 1
            resized += template_cpu != f"{round(alloc['cpu'] * 1000)}m"  # the pod started at the template's CPU
    assert checked >= 2 and resized >= 1, (checked, resized)


def test_the_planned_threshold_reached_every_router(cluster: Cluster, served: str) -> None:
    plan = wait_serving(cluster, served)
    threshold = plan["stages"][0]["threshold"]
    for variant in allocations(plan):
        for pod in worker_pods(cluster, served, variant):
            config = cluster.wait_for(
                lambda p=pod["metadata"]["name"]: (
                    c if (c := router_admin_config(cluster, served, p))["stages"][0]["cascade"]["threshold"]
                    == threshold else None),
                f"threshold {threshold} in {pod['metadata']['name']}'s router", timeout=60)
            assert config["stages"][0]["cascade"]["threshold"] == threshold


FASTPATH_PROBE = """\
import json, os, sys, urllib.request as u
comms = []
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        comms.append(open(f'/proc/{pid}/comm').read().strip())
    except OSError:
        pass
model, image = sys.argv[1], json.loads(sys.argv[2])
body = json.dumps({'inputs': [{'name': 'IMAGE', 'shape': [1, 8, 8], 'datatype': 'FP32', 'data': image}]}).encode()
request = u.Request(f'http://127.0.0.1:8080/v2/models/{model}/infer', data=body,
                    headers={'content-type': 'application/json'})
with u.urlopen(request, timeout=10) as answer:
    status, outputs = answer.status, {o['name']: o['data'] for o in json.loads(answer.read())['outputs']}
metrics = u.urlopen('http://127.0.0.1:8081/metrics', timeout=10).read().decode()
rows = [float(line.rsplit(' ', 1)[1]) for line in metrics.splitlines()
        if line.startswith('paretoserve_router_requests_total{') and 'stage="proxy"' in line
        and f'model="{model}"' in line]
print(json.dumps({'comms': comms, 'status': status, 'label': outputs['LABEL'], 'rows': rows}))
"""


def test_every_routers_data_port_is_the_compiled_fast_path(cluster: Cluster, served: str) -> None:
    """The router image's fast path (native/fastpath) serves each worker pod's data port: it runs in the router
    container, answers a plain model request there, and its counts reach the router's /metrics."""
    plan = wait_serving(cluster, served)
    variants = yaml.safe_load(MANIFEST.read_text())["spec"]["stages"][0]["variants"]
    models = {v["name"]: v["tritonModel"] for v in variants}
    image = held_out_digits()["images"][0]
    checked = 0
    for variant in allocations(plan):
        for pod in worker_pods(cluster, served, variant):
            router = next(c for c in pod["spec"]["containers"] if c["name"] == "router")
            assert "--fastpath=auto" in router["args"], router["args"]
            out = cluster.kubectl("-n", served, "exec", pod["metadata"]["name"], "-c", "router", "--", "python", "-c",
                                  FASTPATH_PROBE, models[variant], json.dumps(image)).stdout
            probe = json.loads(out)
            assert "paretoserve-fas" in probe["comms"], probe["comms"]  # the kernel's 15-character comm
            assert probe["status"] == 200 and len(probe["label"]) == 1 and 0 <= probe["label"][0] <= 9, probe
            assert probe["rows"] and probe["rows"][0] >= 1, probe  # folded into the router's own series
            checked += 1
    assert checked >= 2


def test_a_pod_of_another_tenant_cannot_control_the_data_plane(cluster: Cluster, node: RealNode,
                                                               served: str) -> None:
    """From a pod in another namespace, at a worker pod's IP: the router's admin API refuses it (401) without
    the pipeline's token, and Triton's HTTP and gRPC endpoints (model-repository API included) are not there at
    all (loopback only); only Triton's metrics answer. (The pipeline's NetworkPolicy would also refuse the
    admin and metrics ports to this pod: this cluster's bridge CNI does not enforce NetworkPolicies, so what
    is shown here is what holds without them.)"""
    plan = wait_serving(cluster, served)
    target = next(p for v in allocations(plan) for p in worker_pods(cluster, served, v) if pod_ready(p))
    ip = target["status"]["podIP"]
    tiny = "tiny_linear"
    checks = [
        {"name": "admin-no-token", "method": "POST", "url": f"http://{ip}:8081/admin/config",
         "json": {"stages": [{"name": "classify", "cascade": {"threshold": 0.0}}]}},
        {"name": "admin-wrong-token", "method": "POST", "url": f"http://{ip}:8081/admin/worker",
         "headers": {"Authorization": "Bearer not-the-token"}, "json": {"models": {tiny: {"instanceCount": 64}}}},
        {"name": "triton-repository", "method": "POST", "url": f"http://{ip}:8000/v2/repository/index", "json": {}},
        {"name": "triton-load", "method": "POST", "url": f"http://{ip}:8000/v2/repository/models/{tiny}/load",
         "json": {}},
        {"name": "triton-grpc", "method": "POST", "url": f"http://{ip}:8001/", "json": {}},
        {"name": "triton-metrics", "method": "GET", "url": f"http://{ip}:8002/metrics"},
    ]
    attacker = f"e2e-attacker-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", attacker)
    try:
        cluster.wait_for(lambda: cluster.kubectl("-n", attacker, "get", "serviceaccount", "default",
                                                 check=False).returncode == 0, "default ServiceAccount")
        for obj in script_pod(attacker, "probe", node, "probe.py", {"checks.json": json.dumps(checks)},
                              ["/load/checks.json"]):
            cluster.apply(obj)
        answers = pod_report(cluster, attacker, "probe", timeout_s=120)
    finally:
        cluster.kubectl("delete", "namespace", attacker, "--wait=false", check=False)

    assert answers["admin-no-token"] == answers["admin-wrong-token"] == 401, answers  # Bearer challenge
    assert answers["triton-repository"] == answers["triton-load"] == answers["triton-grpc"] == "refused", answers
    assert answers["triton-metrics"] == 200, answers
    config = router_admin_config(cluster, served, target["metadata"]["name"])
    assert config["stages"][0]["cascade"]["threshold"] == plan["stages"][0]["threshold"]  # nothing changed


def offer_only(cluster: Cluster, namespace: str, *, cpu: tuple[float, ...], instances: int = 1,
               utilization: float | None = None) -> None:
    """Let the planner choose only among the manifest's measured points of ``cpu`` cores and ``instances``
    Triton instances at batch 1 (a subset of its measurements, none made up), optionally at another target
    utilisation."""
    manifest = yaml.safe_load(MANIFEST.read_text())  # the measured points, whatever an earlier patch kept
    patch: list[dict[str, Any]] = [{"op": "replace", "path": "/spec/stages/0/batchSizes", "value": [1]}]
    if utilization is not None:
        patch += [{"op": "replace", "path": "/spec/adaptation/targetUtilization", "value": utilization},
                  {"op": "replace", "path": "/spec/adaptation/scaleDownStabilization", "value": 2}]
    for i, variant in enumerate(manifest["spec"]["stages"][0]["variants"]):
        points = [p for p in variant["profile"]["points"]
                  if p["cpu"] in cpu and p["batch"] == 1 and p.get("instances", 1) == instances]
        assert points, (variant["name"], cpu, instances)
        patch.append({"op": "replace", "path": f"/spec/stages/0/variants/{i}/profile/points", "value": points})
    cluster.kubectl("-n", namespace, "patch", "servingpipeline", PIPELINE, "--type=json", "-p", json.dumps(patch))


def small_pods_only(cluster: Cluster, namespace: str, cpu: float = 0.25) -> None:
    """Small pods (``cpu`` cores, one instance) planned at 10 % utilisation.

    One load generator on a 2-core node reaches ~60-100 requests/s, far below what one pod serves at its
    best batch and CPU (thousands of images/s): only small pods, planned with headroom, make such a step
    worth new replicas."""
    offer_only(cluster, namespace, cpu=(cpu,), utilization=0.1)


def test_the_running_triton_gets_the_planned_instance_count(cluster: Cluster, served: str) -> None:
    """A plan with two Triton instances per pod reaches the running server (the sidecar applies the pods'
    knobs through Triton's model-control API): no restart, no new pod."""
    before = {p["metadata"]["name"] for v in ("tiny-linear", "cnn-large") for p in worker_pods(cluster, served, v)}
    offer_only(cluster, served, cpu=(0.5, 1.0), instances=2)
    last: list[Any] = []

    def two_instances() -> dict[str, Any] | None:
        plan = status_plan(cluster, served)
        last[:] = [plan and (plan["status"], plan["message"], allocations(plan))]
        return plan if plan and all(a["instances"] == 2 for a in allocations(plan).values() if a["replicas"]) else None

    try:
        plan = cluster.wait_for(two_instances, "a plan with two instances per pod", timeout=120)
    except pytest.fail.Exception:
        pytest.fail(f"no plan with two instances per pod; the last plan: {last}")
    script = ("import json, sys, urllib.request as u\n"
              "config = json.load(u.urlopen(f'http://127.0.0.1:8000/v2/models/{sys.argv[1]}/config', timeout=5))\n"
              "print(sum(g['count'] for g in config['instance_group']))\n")
    models = {"tiny-linear": "tiny_linear", "cnn-large": "cnn_large"}
    checked = 0
    for variant, alloc in allocations(plan).items():
        for pod in worker_pods(cluster, served, variant):
            name = pod["metadata"]["name"]
            if name not in before or not pod_ready(pod):
                continue  # a pod the new plan added starts with the knobs in its ConfigMap
            count = cluster.wait_for(lambda n=name, m=models[variant], want=alloc["instances"]: (c := int(
                cluster.kubectl("-n", served, "exec", n, "-c", "triton", "--", "python3", "-c", script, m).stdout))
                == want and c, f"{name}: Triton running {alloc['instances']} instances", timeout=90)
            assert count == 2
            assert all(s["restartCount"] == 0 for s in pod["status"]["containerStatuses"])
            checked += 1
    assert checked >= 1


def test_a_load_step_scales_out_and_no_request_is_lost(cluster: Cluster, node: RealNode, served: str,
                                                       release: str, prometheus: PrometheusWithDiscovery) -> None:
    """Under load from a pod: a step makes the operator add light replicas that start and take traffic; then
    the step ends and it scales down (drained), a worker pod and the operator pod are deleted. Every request
    sent is answered or gets an explicit error, and the scale-down costs none."""
    small_pods_only(cluster, served)
    wait_serving(cluster, served)
    digits = held_out_digits()
    url = f"http://{PIPELINE}.{served}.svc.cluster.local:8080"
    for obj in loadgen_pod(served, "step", node, digits,
                           ["--url", url, "--pipeline", PIPELINE, "--phases", "10x20,60x70,10x80"]):
        cluster.apply(obj)

    original = {p["metadata"]["name"] for p in worker_pods(cluster, served, "tiny-linear")}

    def light_ready() -> int:
        return sum(pod_ready(p) for p in worker_pods(cluster, served, "tiny-linear"))

    scaled = cluster.wait_for(lambda: (n := light_ready()) > 1 and n, "a second Ready light replica", timeout=120)
    added = [p["metadata"]["name"] for p in worker_pods(cluster, served, "tiny-linear")
             if p["metadata"]["name"] not in original and pod_ready(p)]
    # the new pod takes traffic: its router answers requests that enter through the Service (the routers
    # recycle keep-alive connections, so even the one long-lived client reaches it)
    cluster.wait_for(lambda: any(prometheus.value(
        f'sum(paretoserve_pipeline_requests_total{{namespace="{served}",pod="{pod}"}})') for pod in added),
        f"requests answered by a new pod {added}", timeout=90)
    victim = worker_pods(cluster, served, "tiny-linear")[0]["metadata"]["name"]  # the Deployment replaces it
    cluster.kubectl("-n", served, "delete", "pod", victim, "--wait=false")
    operator = cluster.get_json("-n", release, "pods", "-l", "app.kubernetes.io/name=paretoserve")["items"]
    cluster.kubectl("-n", release, "delete", "pod", operator[0]["metadata"]["name"], "--wait=false")
    cluster.wait_for(lambda: light_ready() == 1 and len(worker_pods(cluster, served, "tiny-linear")) == 1,
                     "scale-down back to one light replica", timeout=150)
    report = pod_report(cluster, served, "step", timeout_s=240)

    assert scaled > 1
    outcomes = report["outcomes"]
    assert sum(outcomes.values()) == report["sent"] == 10 * 20 + 60 * 70 + 10 * 80
    unexplained = {k: v for k, v in outcomes.items() if k != "ok" and not k.startswith("http_")}
    assert unexplained == {}, report  # no timeout, reset or cancelled request: answers or explicit errors
    assert outcomes.get("ok", 0) >= 0.99 * report["sent"], report
    # a request whose kept-alive connection a terminating pod closed under it is sent again (counted)
    assert report["retried"] <= 0.01 * report["sent"], report["retried"]
    # after the step (t >= 90 s) only the scale-down happens: drained, it fails nothing
    after_step = {s: c for s, c in report["perSecond"].items() if int(s) >= 90 and set(c) != {"ok"}}
    assert after_step == {}, after_step


def test_deleting_the_pipeline_and_the_release_leaves_only_the_crd(cluster: Cluster, served: str,
                                                                  release: str) -> None:
    cluster.kubectl("-n", served, "delete", "servingpipeline", PIPELINE, "--wait=true", "--timeout=120s")
    owned = "deployments,replicasets,pods,services,configmaps,secrets,networkpolicies,poddisruptionbudgets"
    cluster.wait_for(lambda: not cluster.get_json("-n", served, owned, "-l",
                                                  f"paretoserve.io/pipeline={PIPELINE}")["items"],
                     "the pipeline's children garbage-collected", timeout=120)
    helm_uninstall(cluster, RELEASE, release)
    cluster.wait_for(lambda: not cluster.get_json("-n", release, "pods", "-l",
                                                  f"app.kubernetes.io/instance={RELEASE}")["items"],
                     "the operator pod gone", timeout=90)
    left = cluster.get_json("-n", release, "all,configmaps,secrets,serviceaccounts,roles,rolebindings",
                            "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
    cluster_wide = cluster.get_json("clusterroles,clusterrolebindings", "-l",
                                    f"app.kubernetes.io/instance={RELEASE}")["items"]
    assert [o["metadata"]["name"] for o in left + cluster_wide] == []
    assert cluster.kubectl("get", "crd", "servingpipelines.paretoserve.io", check=False).returncode == 0
