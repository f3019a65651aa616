"""A token-generating pipeline served by the operator on real pods: streamed completions through the pipeline's
Service, each answered by the model its prompt's score chose, token for token as that model answers offline.

The real-node tier (`real_tier.py`): the chart installs the operator as a pod, ``kubectl apply`` of
``manifests/examples/arith-llm-cluster.yaml`` (arith-small / arith-large behind a query-aware prompt router at a
fixed threshold, 0.5-core pods) makes worker pods of the CPU worker image, which carries both generation models
and their prompt scorer at /models (``paretoserve models export``). Covers:

- each worker pod's Triton loads its model and ``arith-scorer`` (the router beside it scores from its own Triton)
  and passes its real readiness probe; the images are the ones ``images/build.sh`` built;
- streamed completions (``/v1/completions`` with ``stream: true`` and ``/v2/models/{pipeline}/generate_stream``)
  sent from a pod to the pipeline's Service (DNS, kube-proxy, any pod's router): every request answered (200, the
  stream ended properly, no error event), by the model the score chose against the planned threshold (the
  router's ``x-paretoserve-variant`` header), with that model's offline greedy answer (the numpy engine on the
  host, as ``tests/integration/test_router_prompt_cascade.py`` checks in process), both models used;
- the plan's batch reached each running Triton as its generation model's ``max_sequences`` (the sidecar's knobs
  from the pod's ConfigMap: a reload, since the export's default is 8);
- a plan change while streams run (``batchSizes`` [4]: 4 sequences at once) reaches both running Tritons, a full
  reload of each generation model (never Triton's in-place update, which stalled streams), and no stream sent
  meanwhile fails or answers differently.

Deleting the pipeline and uninstalling the chart are the digits module's checks; here they are the teardown.
Run alone: ``PARETOSERVE_REAL_NODE=1 .venv/bin/pytest e2e/test_real_node_llm.py``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
    helm_install,
    helm_uninstall,
    operator_logs,
    pod_ready,
    pod_report,
    real_node_or_skip,
    restricted_namespace,
    script_pod,
    wait_planned_pods_ready,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RELEASE = "paretoserve"  # the kwok tier's release name: the kept CRD stays owned by it
RELEASE_NS = "paretoserve-system"
MANIFEST = REPO_ROOT / "manifests" / "examples" / "arith-llm-cluster.yaml"
PIPELINE = "arith-llm-cluster"
SCORER = "arith-scorer"
PROMPTS = 40
"""Held-out test prompts sent (half as completions, half as generate streams), 4 at a time."""
RELOAD_CLIENT_S = 20
"""How long the client streams while the plan changes: the change reached both pods 3.3 s after the patch here
(the operator's next plan within its 5 s interval, its push, a ~2 s reload), 10 s at worst."""
ROUTER_RESOURCES = {"cpu": "100m", "memory": "192Mi"}


@pytest.fixture(scope="module")
def node(cluster: Cluster) -> RealNode:
    return real_node_or_skip(cluster)


_RUNNING: dict[str, Any] = {}
"""The cluster and namespace under test, for `failure_context`."""


def failure_context(lines: int = 60) -> str:
    """The operator's last log lines and the worker pods' state and router logs: added to a failed test's report."""
    cluster: Cluster | None = _RUNNING.get("cluster")
    if cluster is None:
        return "(the operator was not installed)"
    parts = [operator_logs(cluster, RELEASE_NS, lines)]
    namespace = _RUNNING.get("namespace")
    if namespace:
        parts.append(cluster.kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False).stdout)
        for container in ("router", "triton"):
            parts.append(cluster.kubectl("-n", namespace, "logs", "-l", f"paretoserve.io/pipeline={PIPELINE}",
                                         "-c", container, f"--tail={lines}", check=False).stdout)
    return "\n".join(parts)


@pytest.fixture(scope="module")
def release(cluster: Cluster, node: RealNode) -> Iterator[str]:
    # Prometheus with Kubernetes discovery, as users run it: the operator plans from what it scrapes.
    prometheus = PrometheusWithDiscovery(Path(cluster.kubeconfig), os.environ.get("PARETOSERVE_E2E_HOST_IP", node.ip))
    _RUNNING["cluster"] = cluster
    values = {"operator": {"tickSeconds": 2, **node.scheduling}, "prometheus": {"url": prometheus.url},
              "workers": {**node.scheduling, "routerResources": ROUTER_RESOURCES}}
    try:
        helm_install(cluster, RELEASE, RELEASE_NS, values)
        yield RELEASE_NS
    finally:
        _RUNNING.clear()
        helm_uninstall(cluster, RELEASE, RELEASE_NS)
        prometheus.close()


@pytest.fixture(scope="module")
def served(cluster: Cluster, release: str) -> Iterator[str]:
    """The generation pipeline applied in a PodSecurity-restricted namespace; yields the namespace."""
    namespace = restricted_namespace(cluster, "e2e-llm")
    _RUNNING["namespace"] = namespace
    cluster.kubectl("-n", namespace, "apply", "-f", str(MANIFEST))
    yield namespace
    cluster.kubectl("-n", namespace, "delete", "servingpipeline", PIPELINE, "--wait=true", "--timeout=60s",
                    check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def worker_pods(cluster: Cluster, namespace: str, variant: str) -> list[dict[str, Any]]:
    return real_tier.worker_pods(cluster, namespace, PIPELINE, variant)


def wait_serving(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """The plan, once it runs both models and every planned replica is a Ready pod (real readiness probes)."""
    return wait_planned_pods_ready(cluster, namespace, PIPELINE, variants={"arith-small", "arith-large"})


def offline_answers(prompts: list[str]) -> tuple[dict[str, dict[str, str]], dict[str, float]]:
    """Each model's greedy answer per prompt (the numpy engine the worker image serves) and each prompt's score as
    the router reads it (Triton's FP32 ``SCORE`` of the cached scorer fit the image carries)."""
    import numpy as np

    from paretoserve.workers.llm.cache import ensure_llms, ensure_scorer
    from paretoserve.workers.llm.tokenizer import decode, encode_prompt

    catalog = ensure_llms()
    answers = {}
    for model in ("arith-small", "arith-large"):
        engine = catalog.engine(model)
        max_new = int(catalog.metadata[model]["max_new_tokens"])
        answers[model] = {p: decode(engine.generate([encode_prompt(p)], max_new)[0]) for p in prompts}
    score = ensure_scorer().score()
    return answers, {p: float(np.float32(score(p))) for p in prompts}


@dataclass(frozen=True)
class Expected:
    """What the pods must answer: each model's offline greedy answer and each prompt's served score."""

    prompts: list[str]
    answers: dict[str, dict[str, str]]
    scores: dict[str, float]

    def model(self, prompt: str, threshold: float) -> str:
        return "arith-large" if self.scores[prompt] >= threshold else "arith-small"


@pytest.fixture(scope="module")
def expected() -> Expected:
    from paretoserve.workers.llm.tasks import make_splits

    prompts = [problem.prompt for problem in make_splits().test[:PROMPTS]]
    answers, scores = offline_answers(prompts)
    assert any(answers["arith-small"][p] != answers["arith-large"][p] for p in prompts)  # the text tells them apart
    return Expected(prompts, answers, scores)


def prompt_threshold(plan: dict[str, Any]) -> float:
    """The promptThreshold of the plan's row: what the routers compare each score with."""
    rows = yaml.safe_load(MANIFEST.read_text())["spec"]["stages"][0]["cascade"]["rows"]
    return float(min(rows, key=lambda r: abs(r["threshold"] - plan["stages"][0]["threshold"]))["promptThreshold"])


def send(cluster: Cluster, node: RealNode, namespace: str, name: str, prompts: list[str], *args: str) -> None:
    """Start a client pod sending streamed completions to the pipeline's Service (``incluster/completions.py``)."""
    url = f"http://{PIPELINE}.{namespace}.svc.cluster.local:8080"
    for obj in script_pod(namespace, name, node, "completions.py", {"prompts.json": json.dumps(prompts)},
                          ["--url", url, "--pipeline", PIPELINE, "--prompts", "/load/prompts.json", *args]):
        cluster.apply(obj)


def check_answers(got: list[dict[str, Any]], expected: Expected, threshold: float) -> None:
    """Every request answered (200, its stream ended properly), by the model its score chose, with that model's
    offline greedy answer, scored by the pods' own scorer (no fallback), on both endpoints."""
    failed = [a for a in got if a["status"] != 200 or not a.get("ended")]
    assert failed == [], failed
    wrong_model = [(a["prompt"], a["variant"], a["route"], expected.scores[a["prompt"]]) for a in got
                   if a["variant"] != expected.model(a["prompt"], threshold)]
    assert wrong_model == [], (threshold, wrong_model)
    wrong_text = [(a["prompt"], a["variant"], a["text"], expected.answers[a["variant"]][a["prompt"]]) for a in got
                  if a["text"] != expected.answers[a["variant"]][a["prompt"]]]
    assert wrong_text == [], wrong_text
    assert {a["variant"] for a in got} == {"arith-small", "arith-large"}
    assert {a["route"] for a in got} == {"light", "prerouted"}
    assert {a["endpoint"] for a in got} == {"completions", "generate_stream"}


def summary(report: dict[str, Any]) -> str:
    """One line for the test's output: requests, models, statuses, the client's time and latency."""
    answers = report["answers"]
    by_model = {m: sum(a.get("variant") == m for a in answers) for m in ("arith-small", "arith-large")}
    times = sorted(a.get("seconds", 0.0) for a in answers)
    statuses = {str(s): sum(a["status"] == s for a in answers) for s in {a["status"] for a in answers}}
    return (f"{len(answers)} requests in {report['seconds']} s, by model {by_model}, statuses {statuses}, "
            f"latency p50 {times[len(times) // 2] * 1000:.1f} ms max {times[-1] * 1000:.1f} ms")


def max_sequences(cluster: Cluster, namespace: str, pod: str, model: str) -> int:
    """The generation model's ``max_sequences`` as the pod's running Triton serves it."""
    script = ("import json, sys, urllib.request as u\n"
              "c = json.load(u.urlopen(f'http://127.0.0.1:8000/v2/models/{sys.argv[1]}/config', timeout=5))\n"
              "print(c['parameters']['max_sequences']['string_value'])\n")
    return int(cluster.kubectl("-n", namespace, "exec", pod, "-c", "triton", "--", "python3", "-c", script,
                               model).stdout)


def test_streamed_completions_are_each_models_offline_answer_from_real_pods(
        cluster: Cluster, node: RealNode, served: str, expected: Expected) -> None:
    plan = wait_serving(cluster, served)
    manifest = yaml.safe_load(MANIFEST.read_text())
    models = {v["name"]: v["tritonModel"] for v in manifest["spec"]["stages"][0]["variants"]}
    for variant in allocations(plan):
        for pod in worker_pods(cluster, served, variant):
            containers = {c["name"]: c for c in pod["spec"]["containers"]}
            assert {n: c["image"] for n, c in containers.items()} == {"triton": WORKER_IMAGE, "router": OPERATOR_IMAGE}
            loads = [a for a in containers["triton"]["args"] if a.startswith("--load-model=")]
            assert loads == [f"--load-model={models[variant]}", f"--load-model={SCORER}"], loads
            assert pod["spec"]["nodeName"] == node.name

    threshold = prompt_threshold(plan)
    assert {expected.model(p, threshold) for p in expected.prompts} == {"arith-small", "arith-large"}, threshold
    send(cluster, node, served, "completions", expected.prompts)
    report = pod_report(cluster, served, "completions", timeout_s=180)
    assert len(report["answers"]) == len(expected.prompts)
    print(summary(report))
    check_answers(report["answers"], expected, threshold)


def test_the_plans_batch_is_each_running_tritons_max_sequences(cluster: Cluster, served: str) -> None:
    """The sidecar applied the pod's knobs (worker.json: the plan's batch as ``maxSequences``) to its Triton."""
    plan = wait_serving(cluster, served)
    checked = 0
    for variant, alloc in allocations(plan).items():
        for pod in worker_pods(cluster, served, variant):
            if not pod_ready(pod):
                continue
            name, want = pod["metadata"]["name"], alloc["batch"]
            sequences = cluster.wait_for(
                lambda n=name, m=variant, w=want: (s := max_sequences(cluster, served, n, m)) == w and s,
                f"{name}: Triton's {variant} at max_sequences {want}", timeout=60)
            assert sequences == want
            assert all(s["restartCount"] == 0 for s in pod["status"]["containerStatuses"])
            checked += 1
    assert checked >= 2


def test_a_plan_change_under_running_streams_reloads_the_models_and_loses_no_stream(
        cluster: Cluster, node: RealNode, served: str, expected: Expected) -> None:
    """Streams run from a pod while the pipeline's batch sizes change to [4]: the new plan reaches both running
    Tritons as ``max_sequences`` 4 (a full reload of each generation model beside its running streams) while the
    client is still sending, and every request answers as before: none fails, none answers differently."""
    plan = wait_serving(cluster, served)
    assert {a["batch"] for a in allocations(plan).values()} == {1}  # the manifest's plan at low load
    pods = {v: sorted(p["metadata"]["name"] for p in worker_pods(cluster, served, v) if pod_ready(p))
            for v in allocations(plan)}
    send(cluster, node, served, "reload", expected.prompts, "--seconds", str(RELOAD_CLIENT_S))
    cluster.wait_for(lambda: cluster.get_json("-n", served, "pod", "reload").get("status", {}).get("phase")
                     == "Running", "the client pod running", timeout=60)
    cluster.kubectl("-n", served, "patch", "servingpipeline", PIPELINE, "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/spec/stages/0/batchSizes", "value": [4]}]))
    patched_at = time.time()
    for variant, names in pods.items():
        for name in names:
            cluster.wait_for(lambda n=name, m=variant: max_sequences(cluster, served, n, m) == 4,
                             f"{name}: Triton's {variant} reloaded at max_sequences 4", timeout=60)
    reloaded_at = time.time()
    report = pod_report(cluster, served, "reload", timeout_s=RELOAD_CLIENT_S + 90)
    print(summary(report), f"patch -> every Triton at max_sequences 4: {reloaded_at - patched_at:.1f} s, "
          f"{reloaded_at - report['started']:.1f} s after the client started")

    assert report["started"] < reloaded_at < report["ended"], report["seconds"]  # streams ran across the reloads
    assert len(report["answers"]) >= len(expected.prompts), len(report["answers"])
    now = wait_serving(cluster, served)
    assert {a["batch"] for a in allocations(now).values()} == {4}
    check_answers(report["answers"], expected, prompt_threshold(now))
    for variant, names in pods.items():  # the same pods and containers: the models reloaded inside Triton
        assert names == sorted(p["metadata"]["name"] for p in worker_pods(cluster, served, variant) if pod_ready(p))
        for pod in worker_pods(cluster, served, variant):
            assert all(s["restartCount"] == 0 for s in pod["status"]["containerStatuses"])
