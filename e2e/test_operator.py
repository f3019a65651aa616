"""The ParetoServe operator on a real control plane: Helm install, reconcile, adaptation, failures.

The chart is installed with `operator.enabled=false` (kwok nodes run no containers, so an in-cluster
operator pod could never start here) and the operator runs as a local process authenticated with the
chart's ServiceAccount token — the chart's RBAC is exactly what it gets. Load reaches it the production
way: a Prometheus server scrapes `paretoserve_pipeline_requests_total` (served by `LoadExporter` instead
of router sidecars) and the operator queries Prometheus.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e_kube import KWOK_TOLERATION, Cluster
from operator_harness import (
    REPO_ROOT,
    LoadExporter,
    OperatorProcess,
    PrometheusServer,
    free_port,
    helm,
    service_account_kubeconfig,
)

EXAMPLES = REPO_ROOT / "manifests" / "examples"
INTERVAL_S = 3.0
RELEASE = "paretoserve"


def _load_invalid_cases() -> list[Any]:
    path = REPO_ROOT / "tests" / "unit" / "invalid_pipelines.py"
    spec = importlib.util.spec_from_file_location("invalid_pipelines", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.INVALID_PIPELINES)


@pytest.fixture(scope="module")
def system_namespace(cluster: Cluster) -> Iterator[str]:
    # A fixed release namespace: the CRD is kept on uninstall (resource-policy keep) and stays owned by
    # this release, so a later run (--keep-cluster, or a user's cluster) upgrades it in place.
    namespace = "paretoserve-system"
    cluster.kubectl("create", "namespace", namespace, check=False)
    args = [helm(), "--kubeconfig", str(cluster.kubeconfig), "upgrade", "--install", RELEASE,
            str(REPO_ROOT / "charts" / "paretoserve"), "-n", namespace, "--set", "operator.enabled=false",
            "--wait", "--timeout", "60s"]
    installed = subprocess.run(args, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    cluster.wait_for(lambda: "True" in cluster.kubectl(
        "get", "crd", "servingpipelines.paretoserve.io", "-o",
        "jsonpath={.status.conditions[?(@.type=='Established')].status}").stdout, "CRD established")
    yield namespace
    subprocess.run([helm(), "--kubeconfig", str(cluster.kubeconfig), "uninstall", RELEASE, "-n", namespace],
                   check=False, capture_output=True)


@pytest.fixture(scope="module")
def exporter() -> Iterator[LoadExporter]:
    exp = LoadExporter()
    yield exp
    exp.close()


@pytest.fixture(scope="module")
def prometheus(exporter: LoadExporter) -> Iterator[PrometheusServer]:
    prom = PrometheusServer(exporter.port)
    yield prom
    prom.close()


@pytest.fixture(scope="module")
def operator_process(cluster: Cluster, system_namespace: str, prometheus: PrometheusServer,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = service_account_kubeconfig(cluster, system_namespace, f"{RELEASE}-paretoserve",
                                            workdir / "kubeconfig")
    env = operator_env(prometheus, "operator-a")
    proc = OperatorProcess(kubeconfig, env, workdir / "operator.log", peering=("paretoserve", 200))
    proc.start()
    yield proc
    proc.stop()
    print((workdir / "operator.log").read_text()[-4000:])


def operator_env(prometheus: PrometheusServer, pod_id: str) -> dict[str, str]:
    return {
        "POD_ID": pod_id,
        "PARETOSERVE_PEERING_LIFETIME_SECONDS": "6",
        # kwok pods run no containers and their IPs are fake: never send traffic to them
        "PARETOSERVE_PUSH_ROUTERS": "false",
        "PARETOSERVE_PROMETHEUS_URL": prometheus.url,
        "PARETOSERVE_TICK_SECONDS": "1",
        "PARETOSERVE_RATE_WINDOW_SECONDS": "4",
        "PARETOSERVE_STEP_SECONDS": "1",
        "PARETOSERVE_METRICS_PORT": str(free_port()),
        "PARETOSERVE_TOLERATIONS": json.dumps([KWOK_TOLERATION]),
    }


def pipeline_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.get_json("-n", namespace, "servingpipeline", name)
    return obj.get("status") or {}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def planned_replicas(status: dict[str, Any]) -> dict[str, int]:
    return {f"{s['name']}-{a['variant']}": a["replicas"] for s in status["plan"]["stages"] for a in s["allocations"]}


def deployments(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    items = cluster.get_json("-n", namespace, "deployments")["items"]
    return {d["metadata"]["name"]: d for d in items}


def test_chart_lints_and_renders() -> None:
    chart = str(REPO_ROOT / "charts" / "paretoserve")
    lint = subprocess.run([helm(), "lint", chart, "--kube-version", "1.35.0"], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = subprocess.run([helm(), "template", "t", chart, "--kube-version", "1.35.0"],
                              capture_output=True, text=True, check=True).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(rendered) if d)
    assert kinds == ["ClusterKopfPeering", "ClusterRole", "ClusterRoleBinding", "ConfigMap",
                     "CustomResourceDefinition", "Deployment", "NetworkPolicy", "Secret", "Service", "ServiceAccount"]
    scoped = subprocess.run([helm(), "template", "t", chart, "--kube-version", "1.35.0",
                             "--set", "operator.watchNamespaces={team-a,team-b}"],
                            capture_output=True, text=True, check=True).stdout
    objects = [d for d in yaml.safe_load_all(scoped) if d]
    assert not [d for d in objects if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering")]
    assert sorted(d["metadata"]["namespace"] for d in objects if d["kind"] == "Role") == ["team-a", "team-b"]
    operator = next(d for d in objects if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    args = operator["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--standalone" in args and "--all-namespaces" not in args
    context = operator["containers"][0]["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"]} and context["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_gets_its_planned_children_on_fake_gpu_nodes(
    cluster: Cluster, namespace: str, operator_process: OperatorProcess, example: str
) -> None:
    manifest = yaml.safe_load((EXAMPLES / example).read_text())
    name = manifest["metadata"]["name"]
    cluster.apply(manifest, namespace)
    status = cluster.wait_for(
        lambda: (s := pipeline_status(cluster, namespace, name)) and condition(s, "Ready").get("status") == "True"
        and s, f"{example} Ready")
    want = planned_replicas(status)
    variants = sum(len(stage["variants"]) for stage in manifest["spec"]["stages"])

    def children_match() -> bool:
        deps = deployments(cluster, namespace)
        if len(deps) != variants:
            return False
        for dep_name, dep in deps.items():
            key = dep_name.removeprefix(f"{name}-")
            ready = dep.get("status", {}).get("readyReplicas", 0)
            if dep["spec"]["replicas"] != want.get(key, 0) or ready != want.get(key, 0):
                return False
        return True

    cluster.wait_for(children_match, f"{example}: Deployments at the planned replicas and ready")
    pods = cluster.get_json("-n", namespace, "pods")["items"]
    assert len(pods) == sum(want.values())
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("kwok-"), pod["metadata"]["name"]
        owner = pod["metadata"]["ownerReferences"][0]["kind"]
        assert owner == "ReplicaSet"
    configmaps = {c["metadata"]["name"] for c in cluster.get_json("-n", namespace, "configmaps")["items"]}
    services = {s["metadata"]["name"] for s in cluster.get_json("-n", namespace, "services")["items"]}
    assert set(deployments(cluster, namespace)) <= configmaps and set(deployments(cluster, namespace)) <= services
    assert pipeline_status(cluster, namespace, name)["observedGeneration"] == 1


def test_api_server_rejects_invalid_pipelines_naming_the_field(cluster: Cluster, namespace: str,
                                                               system_namespace: str) -> None:
    cases = [c for c in _load_invalid_cases() if c.layer in ("schema", "cel")]
    assert len(cases) >= 15
    for case in cases:
        manifest = case.build()
        # --validate=strict: the API server validates (strict field validation rejects unknown fields)
        proc = cluster.kubectl("-n", namespace, "apply", "--validate=strict", "-f", "-", input=json.dumps(manifest),
                               check=False)
        assert proc.returncode != 0, f"{case.id} was accepted"
        assert case.api_server_path in proc.stderr, (case.id, proc.stderr[-600:])


ADAPTIVE = {
    "apiVersion": "paretoserve.io/v1alpha1",
    "kind": "ServingPipeline",
    "metadata": {"name": "adaptive"},
    "spec": {
        "slo": {"latencyMs": 400},
        "objective": {"accuracy": 1.0, "cost": 0.01, "accuracyAggregation": "sum"},
        "budget": {"cpu": 10},
        "adaptation": {"intervalSeconds": INTERVAL_S, "scaleDownStabilization": 1,
                       "predictor": {"kind": "lastValue", "headroom": 0}},
        "stages": [
            {"name": "detector", "bounds": {"maxReplicas": 2}, "variants": [
                {"name": "det", "tritonModel": "det", "accuracy": 0.8, "resources": {"cpu": 1},
                 "profile": {"points": [{"batch": 1, "cpu": 1, "latencyMs": 50},
                                        {"batch": 1, "cpu": 2, "latencyMs": 30}]}}]},
            {"name": "answer", "dependsOn": ["detector"], "bounds": {"maxReplicas": 10}, "variants": [
                {"name": "light", "tritonModel": "light", "accuracy": 0.6, "resources": {"cpu": 1},
                 "profile": {"points": [{"batch": 1, "latencyMs": 2}]}},
                {"name": "heavy", "tritonModel": "heavy", "accuracy": 0.9, "resources": {"cpu": 1},
                 "profile": {"points": [{"batch": 1, "latencyMs": 100}]}}],
             "cascade": {"light": "light", "heavy": "heavy", "rows": [
                 {"threshold": 0.0, "heavyFraction": 0.0}, {"threshold": 0.5, "heavyFraction": 0.6},
                 {"threshold": 0.9, "heavyFraction": 1.0}]}},
        ],
    },
}
# At 10 rps: detector 1 replica × 1 core, heavy gets everything (threshold 0.9, 1 replica): 3 cores.
# At 60 rps: the detector needs 2 cores per replica (maxReplicas 2: 2 × 33 rps), the 10-core budget leaves
# 5 heavy replicas (50 rps) -> threshold 0.5 (36 rps, 4 replicas).


def _wait_for_rate(prometheus: PrometheusServer, namespace: str, name: str, rps: float) -> None:
    query = f'sum(rate(paretoserve_pipeline_requests_total{{namespace="{namespace}",pipeline="{name}"}}[4s]))'
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": query}, timeout=5).json()
        values = result["data"]["result"]
        if values and abs(float(values[0]["value"][1]) - rps) <= 0.1 * rps:
            return
        time.sleep(0.5)
    pytest.fail(f"Prometheus never saw {rps} rps for {namespace}/{name}")


def _state(cluster: Cluster, namespace: str) -> tuple[dict[str, int], dict[str, str], float | None]:
    deps = deployments(cluster, namespace)
    replicas = {n: d["spec"]["replicas"] for n, d in deps.items()}
    pods = cluster.get_json("-n", namespace, "pods")["items"]
    cpus = {p["metadata"]["name"]: next(c for c in p["spec"]["containers"] if c["name"] == "triton")["resources"][
        "requests"]["cpu"] for p in pods if not p["metadata"].get("deletionTimestamp")}
    router = json.loads(cluster.get_json("-n", namespace, "configmap", "adaptive-answer-light")["data"]["router.json"])
    answer = next(stage for stage in router["stages"] if stage["name"] == "answer")
    return replicas, cpus, answer["cascade"]["threshold"]


def _apply_at_low_load(cluster: Cluster, namespace: str, exporter: LoadExporter) -> dict[str, Any]:
    """Apply the adaptive pipeline at 10 rps and wait for its low-load plan, in the children and then in the
    status (the operator writes the children first and the status that reports them after)."""
    exporter.set_rate(namespace, "adaptive", 10.0)
    cluster.apply(ADAPTIVE, namespace)
    cluster.wait_for(lambda: _state(cluster, namespace)[2] == 0.9
                     and _state(cluster, namespace)[0].get("adaptive-detector-det") == 1, "low-load plan")
    status: dict[str, Any] = cluster.wait_for(
        lambda: (s := pipeline_status(cluster, namespace, "adaptive")) and "plan" in s and s, "plan in status")
    return status


def test_load_step_moves_replicas_cpu_and_threshold(cluster: Cluster, namespace: str, exporter: LoadExporter,
                                                    prometheus: PrometheusServer,
                                                    operator_process: OperatorProcess) -> None:
    _apply_at_low_load(cluster, namespace, exporter)
    _wait_for_rate(prometheus, namespace, "adaptive", 10.0)
    exporter.set_rate(namespace, "adaptive", 60.0)
    _wait_for_rate(prometheus, namespace, "adaptive", 60.0)
    seen = time.monotonic()

    def high_load_plan() -> bool:
        replicas, cpus, threshold = _state(cluster, namespace)
        det_pods = [c for p, c in cpus.items() if p.startswith("adaptive-detector-det")]
        return (threshold == 0.5 and replicas["adaptive-detector-det"] == 2 and replicas["adaptive-answer-heavy"] == 4
                and len(det_pods) == 2 and all(c in ("2", "2000m") for c in det_pods))

    # two adaptation intervals, one operator tick and the time to write the children
    cluster.wait_for(high_load_plan, "plan for 60 rps: 2 detector pods resized to 2 cores, threshold 0.5",
                     timeout=2 * INTERVAL_S + 6)
    assert time.monotonic() - seen <= 2 * INTERVAL_S + 6
    # the operator writes the children first and reports the plan in status after them
    status = cluster.wait_for(lambda: (s := pipeline_status(cluster, namespace, "adaptive"))
                              and "plan" in s and planned_replicas(s).get("detector-det") == 2 and s,
                              "status reports the 60 rps plan")
    # The plan may come while Prometheus's 4 s rate() is still rising towards 60: once the load outgrew the running
    # plan the loop plans for where it is going (`predict.surge_load`), never below what it saw.
    assert 10.0 < status["observedLoadRps"] <= status["predictedLoadRps"] + 1e-6, status
    status = cluster.wait_for(lambda: (s := pipeline_status(cluster, namespace, "adaptive"))
                              and s.get("observedLoadRps", 0.0) == pytest.approx(60.0, rel=0.3) and s,
                              "status reports the observed 60 rps")  # a 4 s rate() over 1 s scrapes jitters
    assert condition(status, "MetricsUnavailable")["status"] == "False"


def _children(cluster: Cluster, namespace: str) -> list[tuple[str, str]]:
    out = []
    for kind in ("deployments", "services", "configmaps", "poddisruptionbudgets", "networkpolicies", "secrets"):
        for item in cluster.get_json("-n", namespace, kind)["items"]:
            if item["metadata"].get("labels", {}).get("paretoserve.io/pipeline") == "adaptive":
                out.append((kind, item["metadata"]["name"]))
    return sorted(out)


def test_operator_killed_mid_adaptation_converges_without_duplicates(
    cluster: Cluster, namespace: str, exporter: LoadExporter, prometheus: PrometheusServer,
    operator_process: OperatorProcess,
) -> None:
    _apply_at_low_load(cluster, namespace, exporter)
    before = _children(cluster, namespace)
    exporter.set_rate(namespace, "adaptive", 60.0)
    _wait_for_rate(prometheus, namespace, "adaptive", 60.0)
    operator_process.kill()
    operator_process.start()
    cluster.wait_for(lambda: _state(cluster, namespace)[2] == 0.5
                     and _state(cluster, namespace)[0]["adaptive-detector-det"] == 2, "converged after restart")
    after = _children(cluster, namespace)
    assert len(after) == len(set(after))
    assert {n for _, n in after} == {n for _, n in before} | {n for k, n in after if k == "poddisruptionbudgets"}
    assert operator_process.alive()


def test_metrics_outage_keeps_the_plan_and_sets_metrics_unavailable(
    cluster: Cluster, namespace: str, exporter: LoadExporter, prometheus: PrometheusServer,
    operator_process: OperatorProcess,
) -> None:
    plan_before = _apply_at_low_load(cluster, namespace, exporter)["plan"]["stages"]
    prometheus.stop()
    try:
        status = cluster.wait_for(
            lambda: (s := pipeline_status(cluster, namespace, "adaptive"))
            and condition(s, "MetricsUnavailable").get("status") == "True" and s, "MetricsUnavailable=True")
        assert status["plan"]["stages"] == plan_before  # allocations kept (solver bookkeeping may differ)
        assert _state(cluster, namespace)[0]["adaptive-detector-det"] == 1
    finally:
        prometheus.start()
    cluster.wait_for(lambda: condition(pipeline_status(cluster, namespace, "adaptive"),
                                       "MetricsUnavailable").get("status") == "False", "metrics back")


def test_deleting_the_pipeline_garbage_collects_its_children(cluster: Cluster, namespace: str,
                                                             operator_process: OperatorProcess) -> None:
    cluster.apply(ADAPTIVE, namespace)
    cluster.wait_for(lambda: len(_children(cluster, namespace)) >= 9, "children created")
    cluster.kubectl("-n", namespace, "delete", "servingpipeline", "adaptive", "--wait=true", timeout=120)
    cluster.wait_for(lambda: _children(cluster, namespace) == [], "children garbage-collected")
    cluster.wait_for(lambda: not [p for p in cluster.get_json("-n", namespace, "pods")["items"]], "pods gone")


def test_pipeline_that_only_the_parser_rejects_is_marked_degraded(cluster: Cluster, namespace: str,
                                                                  operator_process: OperatorProcess) -> None:
    cases = [c for c in _load_invalid_cases() if c.layer == "parser"]
    assert cases, "expected parser-only invalid cases (e.g. dependsOn cycles longer than CEL can see)"
    manifest = cases[0].build()
    cluster.apply(manifest, namespace)
    name = manifest["metadata"]["name"]
    status = cluster.wait_for(lambda: (s := pipeline_status(cluster, namespace, name))
                              and condition(s, "Degraded").get("status") == "True" and s, "Degraded")
    assert condition(status, "Degraded")["message"].startswith(cases[0].path)
    assert deployments(cluster, namespace) == {}


def test_standby_operator_takes_over_when_the_active_one_dies(
    cluster: Cluster, namespace: str, exporter: LoadExporter, prometheus: PrometheusServer,
    operator_process: OperatorProcess, tmp_path: Path,
) -> None:
    standby = OperatorProcess(operator_process.kubeconfig, operator_env(prometheus, "operator-b"),
                              tmp_path / "standby.log", peering=("paretoserve", 100))
    standby.start()
    try:
        exporter.set_rate(namespace, "adaptive", 10.0)
        cluster.apply(ADAPTIVE, namespace)

        def adapted_by() -> str | None:
            return pipeline_status(cluster, namespace, "adaptive").get("policyState", {}).get("adaptedBy")

        cluster.wait_for(lambda: adapted_by() == "operator-a", "the high-priority operator adapts")
        time.sleep(3 * INTERVAL_S)
        assert adapted_by() == "operator-a"  # the stand-by never wrote a decision
        operator_process.kill()
        cluster.wait_for(lambda: adapted_by() == "operator-b", "the stand-by takes over", timeout=60)
        exporter.set_rate(namespace, "adaptive", 60.0)
        cluster.wait_for(lambda: _state(cluster, namespace)[2] == 0.5, "the stand-by follows a load step")
    finally:
        standby.stop()
        if not operator_process.alive():
            operator_process.start()


def test_an_object_the_pipeline_does_not_own_is_reported_not_taken_over(cluster: Cluster, namespace: str,
                                                                        operator_process: OperatorProcess) -> None:
    """A user who may only create pipelines cannot use the operator to rewrite (or later delete) an object
    that happens to have a child's name: server-side apply without force plus the ownership check."""
    foreign = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "adaptive-detector-det"},
               "data": {"owner": "someone else"}}
    cluster.apply(foreign, namespace)
    cluster.apply(ADAPTIVE, namespace)
    status = cluster.wait_for(lambda: (s := pipeline_status(cluster, namespace, "adaptive"))
                              and condition(s, "Degraded").get("reason") == "Conflict" and s, "Degraded/Conflict")
    message = condition(status, "Degraded")["message"]
    assert f"ConfigMap {namespace}/adaptive-detector-det exists and is not owned" in message
    kept = cluster.get_json("-n", namespace, "configmap", "adaptive-detector-det")
    assert kept["data"] == {"owner": "someone else"} and not kept["metadata"].get("ownerReferences")
    assert "adaptive-answer-heavy" in deployments(cluster, namespace)  # everything else is applied
    cluster.kubectl("-n", namespace, "delete", "servingpipeline", "adaptive", "--wait=true", timeout=120)
    cluster.wait_for(lambda: "adaptive-answer-heavy" not in deployments(cluster, namespace), "children collected")
    assert cluster.get_json("-n", namespace, "configmap", "adaptive-detector-det")["data"] == {"owner": "someone else"}


def test_namespace_scoped_install_works_without_cluster_wide_permissions(
    cluster: Cluster, namespace: str, system_namespace: str, prometheus: PrometheusServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    release, release_ns = "scoped", f"{namespace}-op"
    cluster.kubectl("create", "namespace", release_ns)
    try:
        installed = subprocess.run(
            [helm(), "--kubeconfig", str(cluster.kubeconfig), "install", release,
             str(REPO_ROOT / "charts" / "paretoserve"), "-n", release_ns,
             "--set", "operator.enabled=false", "--set", "crds.enabled=false",
             "--set", f"operator.watchNamespaces={{{namespace}}}", "--wait", "--timeout", "60s"],
            capture_output=True, text=True)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        selector = f"app.kubernetes.io/instance={release}"
        assert cluster.get_json("clusterroles,clusterrolebindings", "-l", selector)["items"] == []
        account = f"system:serviceaccount:{release_ns}:{release}-paretoserve"

        def can(verb: str, resource: str, where: list[str]) -> bool:
            done = cluster.kubectl("auth", "can-i", verb, resource, *where, f"--as={account}", check=False)
            return done.stdout.strip() == "yes"

        assert can("create", "deployments", ["-n", namespace])
        assert can("patch", "pods", ["-n", namespace, "--subresource=resize"])
        assert not can("create", "deployments", ["-n", "default"]) and not can("list", "secrets", ["-n", namespace])
        assert not can("list", "namespaces", []) and not can("create", "clusterrolebindings", [])
        workdir = tmp_path_factory.mktemp("scoped")
        kubeconfig = service_account_kubeconfig(cluster, release_ns, f"{release}-paretoserve", workdir / "kubeconfig")
        proc = OperatorProcess(kubeconfig, operator_env(prometheus, "scoped"), workdir / "operator.log",
                               namespaces=(namespace,))
        proc.start()
        try:
            cluster.apply(ADAPTIVE, namespace)
            cluster.wait_for(lambda: (s := pipeline_status(cluster, namespace, "adaptive"))
                             and condition(s, "Ready").get("status") == "True", "Ready under a namespaced Role")
            assert {"adaptive-detector-det", "adaptive-answer-light", "adaptive-answer-heavy"} <= set(
                deployments(cluster, namespace))
        finally:
            proc.stop()
            print((workdir / "operator.log").read_text()[-3000:])
    finally:
        subprocess.run([helm(), "--kubeconfig", str(cluster.kubeconfig), "uninstall", release, "-n", release_ns],
                       check=False, capture_output=True)
        cluster.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)
