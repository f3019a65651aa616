"""`paretoserve bench real-node`, or `python e2e/bench_real_node.py --json`: the Kubernetes path, timed on real pods.

On the e2e cluster with its real node (started here with ``PARETOSERVE_REAL_NODE=1`` unless ``E2E_KUBECONFIG``
names a cluster that has one) and the images ``images/build.sh`` loaded into it, with the chart installed
as in the real-node tier (`test_real_node.py`):
- `apply_to_first_correct_answer_s`: ``kubectl apply`` of the digits cascade until the pipeline's Service
  (its ClusterIP, from the host through kube-proxy) first answers a held-out digit correctly;
- `load_step_to_new_pod_serving_s`: a load step from a pod until a new light pod is Ready and its router has
  answered requests;
- `planned_cpu_to_cgroup_s`: a plan with another CPU per pod seen in the status until the Triton container's
  CFS quota (read inside it) is the planned one;
- `requests`: what the load generator sent across the step, a scale-out, a worker pod's and the operator
  pod's deletion and the scale-down, by outcome (target: nothing but ``ok``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

E2E = Path(__file__).resolve().parent
REPO = E2E.parent


def _script(path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["bash", str(path), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}).stdout


def _answer_ok(url: str, image: list[float], label: int) -> bool:
    body = {"inputs": [{"name": "IMAGE", "shape": [1, 8, 8], "datatype": "FP32", "data": image}]}
    try:
        answer = httpx.post(url, json=body, timeout=2.0)
    except httpx.HTTPError:
        return False
    if answer.status_code != 200:
        return False
    outputs = {o["name"]: o["data"] for o in answer.json().get("outputs", [])}
    return bool(outputs.get("LABEL")) and int(outputs["LABEL"][0]) == label


def bench(quick: bool) -> dict[str, Any]:
    import e2e_kube as kube  # this script's folder (e2e/) is first on sys.path
    import real_tier as real
    import test_real_node as tests

    env = {"PARETOSERVE_REAL_NODE": "1"}
    external = os.environ.get("E2E_KUBECONFIG")
    if external:
        kubeconfig = Path(external)
    else:
        _script(E2E / "cluster" / "build.sh", "--quiet", env=env)
        kubeconfig = Path(_script(E2E / "cluster" / "up.sh", env=env).strip().splitlines()[-1])
        _script(E2E / "cluster" / "health.sh", str(kubeconfig), env=env)
    _script(REPO / "images" / "build.sh")
    cluster = kube.Cluster(kubeconfig=kubeconfig, managed=not external, timeout=180)
    node = real.find_real_node(cluster)
    if node is None:
        raise SystemExit("no Ready node labelled paretoserve.io/node=real")
    prometheus = real.PrometheusWithDiscovery(kubeconfig, os.environ.get("PARETOSERVE_E2E_HOST_IP", node.ip))
    namespace = f"bench-real-{uuid.uuid4().hex[:6]}"
    try:
        real.helm_install(cluster, tests.RELEASE, tests.RELEASE_NS, {
            "operator": {"tickSeconds": 2, **node.scheduling}, "prometheus": {"url": prometheus.url},
            "workers": {**node.scheduling, "routerResources": tests.ROUTER_RESOURCES}})
        cluster.kubectl("create", "namespace", namespace)
        cluster.wait_for(lambda: cluster.kubectl("-n", namespace, "get", "serviceaccount", "default",
                                                 check=False).returncode == 0, "default ServiceAccount")
        digits = tests.held_out_digits()
        image, label = digits["images"][0], digits["labels"][0]

        applied = time.monotonic()
        cluster.kubectl("-n", namespace, "apply", "-f", str(tests.MANIFEST))
        ip = cluster.wait_for(lambda: cluster.get_json("-n", namespace, "service", tests.PIPELINE)["spec"]
                              .get("clusterIP"), "the pipeline's Service")
        url = f"http://{ip}:8080/v2/pipelines/{tests.PIPELINE}/infer"
        cluster.wait_for(lambda: _answer_ok(url, image, label), "a correct answer", timeout=300, interval=0.1)
        first_answer = time.monotonic() - applied
        tests.wait_serving(cluster, namespace)

        current = real.allocations(tests.status_plan(cluster, namespace) or {})["tiny-linear"]["cpu"]
        want = 0.5 if current == 0.25 else 0.25  # offer only measured points of another CPU per pod
        tests.small_pods_only(cluster, namespace, cpu=want)
        cluster.wait_for(lambda: (p := tests.status_plan(cluster, namespace)) and
                         real.allocations(p)["tiny-linear"]["cpu"] == want,
                         "a plan with another CPU per light pod", timeout=120, interval=0.2)
        seen = time.monotonic()
        pod = tests.worker_pods(cluster, namespace, "tiny-linear")[0]["metadata"]["name"]
        cluster.wait_for(lambda: abs(real.cgroup_cpu_quota(cluster, namespace, pod, "triton") - want) < 1e-3,
                         "the planned CFS quota", timeout=120, interval=0.2)
        cpu_to_cgroup = time.monotonic() - seen
        tests.small_pods_only(cluster, namespace, cpu=0.25)
        tests.wait_serving(cluster, namespace)

        step_s = 40 if quick else 70
        for obj in real.loadgen_pod(namespace, "step", node, digits, [
                "--url", f"http://{tests.PIPELINE}.{namespace}.svc.cluster.local:8080", "--pipeline", tests.PIPELINE,
                "--phases", f"10x20,60x{step_s},10x80"]):
            cluster.apply(obj)
        original = {p["metadata"]["name"] for p in tests.worker_pods(cluster, namespace, "tiny-linear")}
        cluster.wait_for(lambda: tests.status_plan(cluster, namespace) is not None, "plan")
        time.sleep(20)  # the step starts 20 s after the load generator
        stepped = time.monotonic()

        def new_pod_serving() -> bool:
            for p in tests.worker_pods(cluster, namespace, "tiny-linear"):
                if p["metadata"]["name"] in original or not real.pod_ready(p):
                    continue
                metrics = httpx.get(f"http://{p['status']['podIP']}:8081/metrics", timeout=2).text
                served = [line for line in metrics.splitlines()
                          if line.startswith("paretoserve_pipeline_requests_total") and not line.endswith(" 0.0")]
                if served:
                    return True
            return False

        cluster.wait_for(new_pod_serving, "a new light pod serving", timeout=180, interval=0.5)
        step_to_serving = time.monotonic() - stepped
        victim = tests.worker_pods(cluster, namespace, "tiny-linear")[0]["metadata"]["name"]
        cluster.kubectl("-n", namespace, "delete", "pod", victim, "--wait=false")
        operator = cluster.get_json("-n", tests.RELEASE_NS, "pods", "-l", "app.kubernetes.io/name=paretoserve")
        cluster.kubectl("-n", tests.RELEASE_NS, "delete", "pod", operator["items"][0]["metadata"]["name"],
                        "--wait=false")
        report = real.pod_report(cluster, namespace, "step", timeout_s=300)
        return {
            "apply_to_first_correct_answer_s": round(first_answer, 2),
            "load_step_to_new_pod_serving_s": round(step_to_serving, 2),
            "planned_cpu_to_cgroup_s": round(cpu_to_cgroup, 2),
            "planned_cpu_change": {"from": current, "to": want},
            "requests": {"sent": report["sent"], "outcomes": report["outcomes"], "retried": report["retried"],
                         "lost": report["sent"] - report["outcomes"].get("ok", 0),
                         "accuracy": round(report["accuracy"], 4), "latency_ms": report["latencyMs"]},
            "disruptions": ["scale-out", "worker pod deleted", "operator pod deleted", "scale-down"],
        }
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        real.helm_uninstall(cluster, tests.RELEASE, tests.RELEASE_NS)
        prometheus.close()
        if not external:
            _script(E2E / "cluster" / "down.sh")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one compact JSON line")
    parser.add_argument("--quick", action="store_true", help="a shorter load step")
    args = parser.parse_args()
    result = bench(args.quick)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    sys.exit(main())
