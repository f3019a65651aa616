"""The e2e real-node tier's pieces: the real node, Prometheus with Kubernetes discovery, the chart, pods in it.

kwok fakes pods; this tier runs them. It needs a node that really runs containers and carries the label
``paretoserve.io/node=real`` (and, on the local cluster, the taint ``paretoserve.io/real-node:NoSchedule``,
which only this tier's pods tolerate): ``PARETOSERVE_REAL_NODE=1`` makes ``e2e/cluster/up.sh`` start one
(a kubelet built from Go modules, containerd, CNI; ``e2e/cluster/node/``), and ``images/build.sh`` loads the
project's images into it. On kind, label a worker node and ``kind load docker-image`` the images
(``e2e/kind/README.md``).

- `RealNode`: the node's name and InternalIP (where host processes such as Prometheus are reachable from pods).
- `PrometheusWithDiscovery`: a Prometheus server (the one ``e2e/cluster/build.sh`` builds; Debian's lacks
  Kubernetes service discovery) that finds the worker pods with ``manifests/prometheus/scrape-configs.yaml``,
  the file users get, plus a ``kubeconfig_file`` because it runs outside the cluster.
- `helm_install`: the chart with the built images, the operator as a pod on the real node.
- `script_pod` / `pod_report` / `cgroup_cpu_quota`: a pod running an ``e2e/incluster`` script and its JSON
  report; a container's CFS quota read inside the container (works wherever ``kubectl exec`` does, kind
  included).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e_kube import Cluster
from operator_harness import free_port, helm

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PARETOSERVE_CACHE", Path.home() / ".cache" / "paretoserve"))
REAL_LABEL = ("paretoserve.io/node", "real")
REAL_TOLERATION = {"key": "paretoserve.io/real-node", "operator": "Exists", "effect": "NoSchedule"}
SCRAPE_CONFIGS = REPO_ROOT / "manifests" / "prometheus" / "scrape-configs.yaml"
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                        "runAsUser": 10001, "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"}}


def image_version() -> str:
    for line in (REPO_ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise RuntimeError("no version in pyproject.toml")


OPERATOR_IMAGE = f"ghcr.io/paretoserve/paretoserve:{image_version()}"
WORKER_IMAGE = f"ghcr.io/paretoserve/worker-cpu:{image_version()}"


@dataclass(frozen=True)
class RealNode:
    name: str
    ip: str

    @property
    def scheduling(self) -> dict[str, Any]:
        """Pod-spec fields that put a pod on this node."""
        return {"nodeSelector": {REAL_LABEL[0]: REAL_LABEL[1]}, "tolerations": [REAL_TOLERATION]}


def find_real_node(cluster: Cluster) -> RealNode | None:
    nodes = cluster.get_json("nodes", "-l", f"{REAL_LABEL[0]}={REAL_LABEL[1]}")["items"]
    for node in nodes:
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
        address = next((a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"), None)
        if ready and address:
            return RealNode(node["metadata"]["name"], address)
    return None


def real_node_or_skip(cluster: Cluster) -> RealNode:
    """The real node (a module's ``node`` fixture): skipped without one, failed when the run asked for it
    (``PARETOSERVE_REAL_NODE=1``)."""
    found = find_real_node(cluster)
    if found is None:
        message = ("no Ready node labelled paretoserve.io/node=real: start the local one with "
                   "PARETOSERVE_REAL_NODE=1 (e2e/cluster/up.sh) and load the images (images/build.sh), or label "
                   "a kind worker and `kind load docker-image` the images")
        if os.environ.get("PARETOSERVE_REAL_NODE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def restricted_namespace(cluster: Cluster, prefix: str) -> str:
    """A new namespace that enforces PodSecurity ``restricted``, once its default ServiceAccount exists."""
    namespace = f"{prefix}-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    cluster.wait_for(lambda: cluster.kubectl("-n", namespace, "get", "serviceaccount", "default",
                                             check=False).returncode == 0, "default ServiceAccount")
    return namespace


def operator_logs(cluster: Cluster, release_namespace: str, lines: int) -> str:
    """The operator's last ``lines`` log lines (its decisions, retries and errors)."""
    logs = cluster.kubectl("-n", release_namespace, "logs", "-l", "app.kubernetes.io/name=paretoserve",
                           f"--tail={lines}", check=False)
    return f"the operator's last {lines} log lines:\n{logs.stdout}{logs.stderr}"


def status_plan(cluster: Cluster, namespace: str, pipeline: str) -> dict[str, Any] | None:
    """The pipeline's applied plan from its status (None before the first one)."""
    plan = cluster.get_json("-n", namespace, "servingpipeline", pipeline).get("status", {}).get("plan")
    return plan if plan and plan.get("stages") else None


def allocations(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["variant"]: a for stage in plan["stages"] for a in stage["allocations"]}


def worker_pods(cluster: Cluster, namespace: str, pipeline: str, variant: str) -> list[dict[str, Any]]:
    """A variant's worker pods that are not being deleted."""
    pods: list[dict[str, Any]] = cluster.get_json(
        "-n", namespace, "pods", "-l", f"paretoserve.io/pipeline={pipeline},paretoserve.io/variant={variant}",
    )["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def wait_planned_pods_ready(cluster: Cluster, namespace: str, pipeline: str, *,
                            variants: set[str] | None = None) -> dict[str, Any]:
    """The plan, once every planned replica is a Ready pod (real readiness probes) and, with ``variants``, once
    exactly those variants have replicas."""
    def check() -> dict[str, Any] | None:
        plan = status_plan(cluster, namespace, pipeline)
        if plan is None:
            return None
        planned = {v: a for v, a in allocations(plan).items() if a["replicas"] > 0}
        if variants is not None and set(planned) != variants:
            return None
        for variant, alloc in planned.items():
            if sum(pod_ready(p) for p in worker_pods(cluster, namespace, pipeline, variant)) < alloc["replicas"]:
                return None
        return plan

    what = f"{sorted(variants)} planned and " if variants else ""
    return cluster.wait_for(check, f"{what}every planned worker pod Ready", timeout=300)


def prometheus_binary() -> str:
    configured = os.environ.get("PARETOSERVE_PROMETHEUS")
    candidates = [configured] if configured else []
    candidates += [str(p) for p in sorted(CACHE.glob("k8s/*/bin/prometheus"))]
    candidates += [str(CACHE / "prometheus-build" / "prometheus")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise RuntimeError("no Prometheus with Kubernetes discovery: run e2e/cluster/build.sh (or set "
                       "PARETOSERVE_PROMETHEUS); Debian's prometheus package has no kubernetes_sd_configs")


class PrometheusWithDiscovery:
    """Prometheus on the node's IP (pods reach it there), discovering pods with the project's scrape jobs."""

    def __init__(self, kubeconfig: Path, listen_ip: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="paretoserve-prom-real-"))
        self.port = free_port()
        self.listen_ip = listen_ip
        jobs = yaml.safe_load(SCRAPE_CONFIGS.read_text())["scrape_configs"]
        for job in jobs:
            for sd in job["kubernetes_sd_configs"]:
                sd["kubeconfig_file"] = str(kubeconfig)
        config = {"global": {"scrape_interval": "5s", "evaluation_interval": "5s"}, "scrape_configs": jobs}
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = (self.dir / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address={listen_ip}:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited; log: {self.dir / 'prometheus.log'}")
            try:
                with socket.create_connection((listen_ip, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"prometheus did not start; log: {self.dir / 'prometheus.log'}")

    @property
    def url(self) -> str:
        return f"http://{self.listen_ip}:{self.port}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10).json()
        if answer.get("status") != "success":
            raise RuntimeError(f"prometheus: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def targets(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()
        active: list[dict[str, Any]] = answer["data"]["activeTargets"]
        return active

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        shutil.rmtree(self.dir, ignore_errors=True)


def helm_install(cluster: Cluster, release: str, namespace: str, values: dict[str, Any]) -> None:
    values_file = Path(tempfile.mkdtemp(prefix="paretoserve-values-")) / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    cluster.kubectl("create", "namespace", namespace, check=False)
    args = [helm(), "--kubeconfig", str(cluster.kubeconfig), "upgrade", "--install", release,
            str(REPO_ROOT / "charts" / "paretoserve"), "-n", namespace, "-f", str(values_file),
            "--wait", "--timeout", "180s"]
    installed = subprocess.run(args, capture_output=True, text=True)
    if installed.returncode != 0:
        pods = cluster.kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False).stdout
        events = cluster.kubectl("-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout
        raise AssertionError(f"helm install failed:\n{installed.stdout}{installed.stderr}\n{pods}\n{events[-3000:]}")


def helm_uninstall(cluster: Cluster, release: str, namespace: str) -> None:
    subprocess.run([helm(), "--kubeconfig", str(cluster.kubeconfig), "uninstall", release, "-n", namespace,
                    "--wait", "--timeout", "120s"], check=False, capture_output=True)


def script_pod(namespace: str, name: str, node: RealNode, script: str, files: dict[str, str],
               args: list[str]) -> list[dict[str, Any]]:
    """A ConfigMap (``e2e/incluster/<script>`` and ``files``, mounted at ``/load``) and a one-shot pod of the
    operator/router image that runs the script with ``args``, PodSecurity-restricted, on the real node."""
    source = (REPO_ROOT / "e2e" / "incluster" / script).read_text()
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
                  "data": {script: source, **files}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                            "labels": {"app": "e2e-incluster"}},
           "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False, **node.scheduling,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "run", "image": OPERATOR_IMAGE, "imagePullPolicy": "IfNotPresent",
                        "command": ["python", f"/load/{script}", *args],
                        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                      "limits": {"cpu": "1", "memory": "512Mi"}},
                        "securityContext": RESTRICTED_CONTAINER,
                        "volumeMounts": [{"name": "load", "mountPath": "/load"}, {"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "volumes": [{"name": "load", "configMap": {"name": name}}, {"name": "tmp", "emptyDir": {}}]}}
    return [config_map, pod]


def loadgen_pod(namespace: str, name: str, node: RealNode, digits: dict[str, Any], args: list[str],
                ) -> list[dict[str, Any]]:
    """ParetoServe's open-loop load generator in a pod, sending the held-out ``digits``."""
    return script_pod(namespace, name, node, "loadgen.py", {"digits.json": json.dumps(digits)},
                      ["--data", "/load/digits.json", *args])


def pod_report(cluster: Cluster, namespace: str, pod: str, timeout_s: float) -> dict[str, Any]:
    """Wait for a one-shot pod to succeed and return the JSON object its last log line holds."""
    def phase() -> str:
        return str(cluster.get_json("-n", namespace, "pod", pod).get("status", {}).get("phase", ""))

    cluster.wait_for(lambda: phase() in ("Succeeded", "Failed"), f"pod {namespace}/{pod} finished",
                     timeout=timeout_s)
    logs = cluster.kubectl("-n", namespace, "logs", pod).stdout.strip().splitlines()
    assert phase() == "Succeeded" and logs, f"pod {pod} failed: {logs[-20:]}"
    report: dict[str, Any] = json.loads(logs[-1])
    return report


def cgroup_cpu_quota(cluster: Cluster, namespace: str, pod: str, container: str) -> float:
    """The container's CFS CPU quota in cores, read by the kernel's own files inside the container."""
    script = ("import pathlib as p\n"
              "v1 = p.Path('/sys/fs/cgroup/cpu/cpu.cfs_quota_us')\n"
              "if v1.exists():\n"
              "    print(int(v1.read_text()) / int(p.Path('/sys/fs/cgroup/cpu/cpu.cfs_period_us').read_text()))\n"
              "else:\n"
              "    q, period = p.Path('/sys/fs/cgroup/cpu.max').read_text().split()\n"
              "    print(-1 if q == 'max' else int(q) / int(period))\n")
    out = cluster.kubectl("-n", namespace, "exec", pod, "-c", container, "--", "python3", "-c", script).stdout
    return float(out.strip())


def router_admin_config(cluster: Cluster, namespace: str, pod: str) -> dict[str, Any]:
    """The router's live config, from its admin listener inside the pod, with the pod's own admin token."""
    script = ("import json, urllib.request as u\n"
              "token = open('/var/run/paretoserve/admin/token').read().strip()\n"
              "r = u.Request('http://127.0.0.1:8081/admin/config', headers={'Authorization': 'Bearer ' + token})\n"
              "print(u.urlopen(r, timeout=5).read().decode())\n")
    out = cluster.kubectl("-n", namespace, "exec", pod, "-c", "router", "--", "python", "-c", script).stdout
    config: dict[str, Any] = json.loads(out)
    return config
