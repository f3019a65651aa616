"""`paretoserve bench operator`, or `python e2e/bench_operator.py --json`: the operator's latencies and
footprint on the local kwok control plane.

Measures, on the e2e cluster (built and started by e2e/cluster/*.sh, so it needs a repository checkout):
- `apply_to_ready_s`: `kubectl apply` of each example until its Ready condition and every Deployment at
  the planned, ready replicas;
- `reaction_s`: a load step seen by Prometheus until the operator has applied the new plan;
- `operator_cpu_percent` / `operator_rss_mib`: the operator process while it manages 100 pipelines.
The operator runs as a local process with the Helm chart's ServiceAccount, as in the e2e suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
E2E = REPO / "e2e"


def _script(name: str, *args: str) -> str:
    return subprocess.run(["bash", str(E2E / "cluster" / name), *args], check=True, capture_output=True,
                          text=True).stdout


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime in clock ticks (USER_HZ = 100)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def _small_pipeline(name: str) -> dict[str, Any]:
    return {"apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline", "metadata": {"name": name},
            "spec": {"slo": {"latencyMs": 200}, "adaptation": {"intervalSeconds": 10},
                     "stages": [{"name": "s", "variants": [
                         {"name": "v", "tritonModel": "v", "accuracy": 0.9,
                          "profile": {"points": [{"batch": 1, "latencyMs": 20}]}}]}]}}


def bench_operator(quick: bool = False) -> dict[str, Any]:
    import e2e_kube as kube  # this script's folder (e2e/) is first on sys.path
    import operator_harness as harness
    import test_operator as tests
    _script("build.sh", "--quiet")
    kubeconfig = Path(_script("up.sh").strip().splitlines()[-1])
    _script("health.sh", str(kubeconfig))
    cluster = kube.Cluster(kubeconfig=kubeconfig, managed=True)
    cluster.kubectl("create", "namespace", "paretoserve-system", check=False)
    subprocess.run([harness.helm(), "--kubeconfig", str(kubeconfig), "upgrade", "--install", "paretoserve",
                    str(REPO / "charts" / "paretoserve"), "-n", "paretoserve-system",
                    "--set", "operator.enabled=false", "--wait"], check=True, capture_output=True)
    workdir = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip())
    exporter = harness.LoadExporter()
    prometheus = harness.PrometheusServer(exporter.port)
    sa = harness.service_account_kubeconfig(cluster, "paretoserve-system", "paretoserve-paretoserve",
                                            workdir / "kubeconfig")
    proc = harness.OperatorProcess(sa, {
        "PARETOSERVE_PROMETHEUS_URL": prometheus.url, "PARETOSERVE_TICK_SECONDS": "1",
        "PARETOSERVE_RATE_WINDOW_SECONDS": "4", "PARETOSERVE_STEP_SECONDS": "1",
        "PARETOSERVE_METRICS_PORT": str(harness.free_port()), "PARETOSERVE_PUSH_ROUTERS": "false",
        "PARETOSERVE_TOLERATIONS": json.dumps([kube.KWOK_TOLERATION])}, workdir / "operator.log")
    proc.start()
    namespaces: list[str] = []
    try:
        def fresh_namespace() -> str:
            ns = f"bench-{len(namespaces)}-{int(time.time())}"
            cluster.kubectl("create", "namespace", ns)
            namespaces.append(ns)
            return ns

        apply_times = []
        for example in ("ipa-video.yaml", "infadapter-resnet.yaml", "diffserve-cascade.yaml"):
            ns = fresh_namespace()
            manifest = yaml.safe_load((REPO / "manifests" / "examples" / example).read_text())
            started = time.monotonic()
            cluster.apply(manifest, ns)
            name = manifest["metadata"]["name"]

            def ready(ns: str = ns, name: str = name) -> bool:
                status = tests.pipeline_status(cluster, ns, name)
                if tests.condition(status, "Ready").get("status") != "True":
                    return False
                want = tests.planned_replicas(status)
                deps = tests.deployments(cluster, ns)
                return all(d.get("status", {}).get("readyReplicas", 0) == want.get(n.removeprefix(f"{name}-"), 0)
                           for n, d in deps.items())

            cluster.wait_for(ready, f"{example} ready", timeout=180, interval=0.2)
            apply_times.append(time.monotonic() - started)

        ns = fresh_namespace()
        exporter.set_rate(ns, "adaptive", 10.0)
        cluster.apply(tests.ADAPTIVE, ns)
        cluster.wait_for(lambda: tests._state(cluster, ns)[2] == 0.9, "low-load plan", timeout=120)
        exporter.set_rate(ns, "adaptive", 60.0)
        stepped = time.monotonic()
        tests._wait_for_rate(prometheus, ns, "adaptive", 60.0)
        seen = time.monotonic()
        cluster.wait_for(lambda: tests._state(cluster, ns)[2] == 0.5, "high-load plan", timeout=120, interval=0.2)
        applied = time.monotonic()

        count = 20 if quick else 100
        per_ns = 10
        for _ in range(count // per_ns):
            ns = fresh_namespace()
            items = [_small_pipeline(f"p{j}") for j in range(per_ns)]
            for item in items:
                exporter.set_rate(ns, item["metadata"]["name"], 5.0)
            cluster.apply(items, ns)
        cpu0, t0 = _cpu_seconds(proc.proc.pid), time.monotonic()
        rss = []
        window = 20 if quick else 60
        while time.monotonic() - t0 < window:
            rss.append(_rss_mib(proc.proc.pid))
            time.sleep(2)
        cpu = (_cpu_seconds(proc.proc.pid) - cpu0) / (time.monotonic() - t0) * 100.0
        return {
            "apply_to_ready_s": {"p50": round(statistics.median(apply_times), 2), "max": round(max(apply_times), 2),
                                 "n": len(apply_times)},
            "reaction_s": {"from_load_step": round(applied - stepped, 2),
                           "from_prometheus_seeing_it": round(applied - seen, 2),
                           "adaptation_interval_s": tests.INTERVAL_S},
            "managed_pipelines": count + len(apply_times) + 1,
            "operator_cpu_percent": round(cpu, 1),
            "operator_rss_mib": {"mean": round(statistics.mean(rss), 1), "max": round(max(rss), 1)},
            "measurement_window_s": window,
        }
    finally:
        proc.stop()
        prometheus.close()
        exporter.close()
        for ns in namespaces:
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter measurement window")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()
    result = bench_operator(args.quick)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
