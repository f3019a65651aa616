"""Token-generating pipelines served by the operator on real pods: streamed completions through the pipeline's
Service, each answered by the model its request's score chose, token for token as that model answers offline.
Two families, one pipeline at a time (the module's tests run per family, ``family``):

- ``arith``: ``manifests/examples/arith-llm-cluster.yaml``, arith-small / arith-large behind a query-aware prompt
  router (scorer arith-scorer, the prompt's text);
- ``mm``: ``manifests/examples/mm-llm-cluster.yaml``, mm-low / mm-high answering a question about an 8x8 digits
  image, behind the router whose scorer mm-scorer reads the question and the image; requests are
  ``generate_stream`` bodies ``{"PROMPT": "+37=", "IMAGE": [64 floats]}`` (completions are text only).

The real-node tier (`real_tier.py`): the chart installs the operator as a pod, ``kubectl apply`` of the family's
manifest (both models at a fixed threshold, 0.5-core pods) makes worker pods of the CPU worker image, which carries
every generation model and both scorers at /models (``paretoserve models export``). Covers, per family:

- each worker pod's Triton loads its model and the family's scorer (the router beside it scores from its own
  Triton) and passes its real readiness probe; the images are the ones ``images/build.sh`` built;
- streamed requests (arith: ``/v1/completions`` with ``stream: true`` and ``/v2/models/{pipeline}/generate_stream``;
  mm: ``generate_stream`` with the image) sent from a pod to the pipeline's Service (DNS, kube-proxy, any pod's
  router): every request answered (200, the stream ended properly, no error event), by the model the score chose
  against the planned threshold (the router's ``x-paretoserve-variant`` header), with that model's offline greedy
  answer for that request (the numpy engine on the host, as ``tests/integration/test_router_prompt_cascade.py``
  and ``test_router_mm_cascade.py`` check in process), both models used;
- the plan's batch reached each running Triton as its generation model's ``max_sequences`` (the sidecar's knobs
  from the pod's ConfigMap: a reload, since the export's default is 8);
- (arith only: the reload path is the same code for both families) a plan change while streams run
  (``batchSizes`` [4]: 4 sequences at once) reaches both running Tritons, a full reload of each generation model
  (never Triton's in-place update, which stalled streams), and no stream sent meanwhile fails or answers
  differently.

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
PROMPTS = 40
"""Held-out test requests sent per family, 4 at a time (arith: half as completions, half as generate streams)."""


@dataclass(frozen=True)
class Family:
    """A generation family's cluster example: its manifest, pipeline, models and what its clients send."""

    name: str
    pipeline: str
    light: str
    heavy: str
    scorer: str
    endpoints: tuple[str, ...]

    @property
    def manifest(self) -> Path:
        return REPO_ROOT / "manifests" / "examples" / f"{self.pipeline}.yaml"

    @property
    def models(self) -> tuple[str, str]:
        return self.light, self.heavy


FAMILIES = {
    "arith": Family("arith", "arith-llm-cluster", "arith-small", "arith-large", "arith-scorer",
                    ("completions", "generate_stream")),
    "mm": Family("mm", "mm-llm-cluster", "mm-low", "mm-high", "mm-scorer", ("generate_stream",)),
}
RELOAD_CLIENT_S = 20
"""How long the client streams while the plan changes: the change reached both pods 3.3 s after the patch here
(the operator's next plan within its 5 s interval, its push, a ~2 s reload), 10 s at worst."""
ROUTER_RESOURCES = {"cpu": "100m", "memory": "192Mi"}


@pytest.fixture(scope="module")
def node(cluster: Cluster) -> RealNode:
    return real_node_or_skip(cluster)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> Family:
    """The family under test: one pipeline served at a time (the module's tests are grouped by it)."""
    return FAMILIES[request.param]


_RUNNING: dict[str, Any] = {}
"""The cluster, namespace and pipeline under test, for `failure_context`."""


def failure_context(lines: int = 60) -> str:
    """The operator's last log lines and the worker pods' state and router logs: added to a failed test's report."""
    cluster: Cluster | None = _RUNNING.get("cluster")
    if cluster is None:
        return "(the operator was not installed)"
    parts = [operator_logs(cluster, RELEASE_NS, lines)]
    namespace, pipeline = _RUNNING.get("namespace"), _RUNNING.get("pipeline")
    if namespace:
        parts.append(cluster.kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False).stdout)
        for container in ("router", "triton"):
            parts.append(cluster.kubectl("-n", namespace, "logs", "-l", f"paretoserve.io/pipeline={pipeline}",
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
def served(cluster: Cluster, release: str, family: Family) -> Iterator[str]:
    """The family's pipeline applied in a PodSecurity-restricted namespace; yields the namespace. Deleted (pods
    gone) before the next family's is applied, so one pipeline's pods run on the node at a time."""
    namespace = restricted_namespace(cluster, f"e2e-{family.name}")
    _RUNNING.update(namespace=namespace, pipeline=family.pipeline)
    cluster.kubectl("-n", namespace, "apply", "-f", str(family.manifest))
    yield namespace
    cluster.kubectl("-n", namespace, "delete", "servingpipeline", family.pipeline, "--wait=true", "--timeout=60s",
                    check=False)
    cluster.kubectl("-n", namespace, "delete", "pods", "--all", "--wait=true", "--timeout=60s", check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
    _RUNNING.pop("namespace", None)


def worker_pods(cluster: Cluster, namespace: str, family: Family, variant: str) -> list[dict[str, Any]]:
    return real_tier.worker_pods(cluster, namespace, family.pipeline, variant)


def wait_serving(cluster: Cluster, namespace: str, family: Family) -> dict[str, Any]:
    """The plan, once it runs both models and every planned replica is a Ready pod (real readiness probes)."""
    return wait_planned_pods_ready(cluster, namespace, family.pipeline, variants=set(family.models))


@dataclass(frozen=True)
class Expected:
    """What the pods must answer, per request of the list the client sends (by its index): each model's offline
    greedy answer and the request's score as the router reads it (Triton's FP32 ``SCORE`` of the cached scorer fit
    the image carries)."""

    family: Family
    requests: list[str | dict[str, Any]]
    """What ``incluster/completions.py`` sends: prompts, or ``{"prompt", "image"}`` for the multimodal family."""
    answers: dict[str, list[str]]
    scores: list[float]

    def model(self, index: int, threshold: float) -> str:
        return self.family.heavy if self.scores[index] >= threshold else self.family.light


def arith_expected(family: Family) -> Expected:
    """The text family on held-out test prompts: the numpy engine's greedy answers, the prompt scorer's score."""
    import numpy as np

    from paretoserve.workers.llm.cache import ensure_llms, ensure_scorer
    from paretoserve.workers.llm.tasks import make_splits
    from paretoserve.workers.llm.tokenizer import decode, encode_prompt

    prompts = [problem.prompt for problem in make_splits().test[:PROMPTS]]
    catalog = ensure_llms()
    answers = {}
    for model in family.models:
        engine = catalog.engine(model)
        max_new = int(catalog.metadata[model]["max_new_tokens"])
        answers[model] = [decode(engine.generate([encode_prompt(p)], max_new)[0]) for p in prompts]
    score = ensure_scorer().score()
    return Expected(family, list(prompts), answers, [float(np.float32(score(p))) for p in prompts])


def mm_expected(family: Family) -> Expected:
    """The multimodal family on held-out test problems (a question about a digits image): each engine's greedy
    answer for that image and question, the scorer's score of both (as ``test_router_mm_cascade.py``)."""
    import numpy as np

    from paretoserve.workers.llm.cache import ensure_mm_scorer
    from paretoserve.workers.llm.multimodal import ensure_multimodal, make_multimodal_splits
    from paretoserve.workers.llm.tokenizer import decode, encode_prompt

    splits = make_multimodal_splits()
    problems = splits.test[:PROMPTS]
    images = [np.asarray(p, dtype=np.float32).reshape(-1) for p in splits.pixels(problems)]
    questions = [problem.prompt for problem in problems]
    catalog = ensure_multimodal()
    answers = {}
    for model in family.models:
        engine = catalog.engine(model)
        max_new = int(catalog.metadata[model]["max_new_tokens"])
        answers[model] = [decode(engine.generate_multimodal([image], [encode_prompt(q)], max_new)[0])
                          for image, q in zip(images, questions, strict=True)]
    score = ensure_mm_scorer().score()
    requests: list[str | dict[str, Any]] = [{"prompt": q, "image": image.tolist()}
                                            for image, q in zip(images, questions, strict=True)]
    return Expected(family, requests, answers,
                    [float(np.float32(score(image, q))) for image, q in zip(images, questions, strict=True)])


@pytest.fixture(scope="module")
def expected(family: Family) -> Expected:
    want = (arith_expected if family.name == "arith" else mm_expected)(family)
    light, heavy = (want.answers[m] for m in family.models)
    assert light != heavy  # the answers tell the two models apart
    return want


def prompt_threshold(family: Family, plan: dict[str, Any]) -> float:
    """The promptThreshold of the plan's row: what the routers compare each score with."""
    rows = yaml.safe_load(family.manifest.read_text())["spec"]["stages"][0]["cascade"]["rows"]
    return float(min(rows, key=lambda r: abs(r["threshold"] - plan["stages"][0]["threshold"]))["promptThreshold"])


def send(cluster: Cluster, node: RealNode, namespace: str, name: str, expected: Expected, *args: str) -> None:
    """Start a client pod sending the streamed requests to the pipeline's Service (``incluster/completions.py``)."""
    family = expected.family
    url = f"http://{family.pipeline}.{namespace}.svc.cluster.local:8080"
    for obj in script_pod(namespace, name, node, "completions.py", {"prompts.json": json.dumps(expected.requests)},
                          ["--url", url, "--pipeline", family.pipeline, "--prompts", "/load/prompts.json",
                           "--endpoints", ",".join(family.endpoints), *args]):
        cluster.apply(obj)


def check_answers(got: list[dict[str, Any]], expected: Expected, threshold: float) -> None:
    """Every request answered (200, its stream ended properly), by the model its score chose, with that model's
    offline greedy answer for that request, scored by the pods' own scorer (no fallback), on every endpoint."""
    failed = [a for a in got if a["status"] != 200 or not a.get("ended")]
    assert failed == [], failed
    wrong_model = [(a["index"], a["prompt"], a["variant"], a["route"], expected.scores[a["index"]]) for a in got
                   if a["variant"] != expected.model(a["index"], threshold)]
    assert wrong_model == [], (threshold, wrong_model)
    wrong_text = [(a["index"], a["prompt"], a["variant"], a["text"], expected.answers[a["variant"]][a["index"]])
                  for a in got if a["text"] != expected.answers[a["variant"]][a["index"]]]
    assert wrong_text == [], wrong_text
    assert {a["variant"] for a in got} == set(expected.family.models)
    assert {a["route"] for a in got} == {"light", "prerouted"}
    assert {a["endpoint"] for a in got} == set(expected.family.endpoints)


def summary(report: dict[str, Any], family: Family) -> str:
    """One line for the test's output: requests, models, statuses, the client's time and latency."""
    answers = report["answers"]
    by_model = {m: sum(a.get("variant") == m for a in answers) for m in family.models}
    times = sorted(a.get("seconds", 0.0) for a in answers)
    statuses = {str(s): sum(a["status"] == s for a in answers) for s in {a["status"] for a in answers}}
    return (f"{family.pipeline}: {len(answers)} requests in {report['seconds']} s, by model {by_model}, statuses "
            f"{statuses}, latency p50 {times[len(times) // 2] * 1000:.1f} ms max {times[-1] * 1000:.1f} ms")


def max_sequences(cluster: Cluster, namespace: str, pod: str, model: str) -> int:
    """The generation model's ``max_sequences`` as the pod's running Triton serves it."""
    script = ("import json, sys, urllib.request as u\n"
              "c = json.load(u.urlopen(f'http://127.0.0.1:8000/v2/models/{sys.argv[1]}/config', timeout=5))\n"
              "print(c['parameters']['max_sequences']['string_value'])\n")
    return int(cluster.kubectl("-n", namespace, "exec", pod, "-c", "triton", "--", "python3", "-c", script,
                               model).stdout)


def test_streamed_completions_are_each_models_offline_answer_from_real_pods(
        cluster: Cluster, node: RealNode, served: str, family: Family, expected: Expected) -> None:
    plan = wait_serving(cluster, served, family)
    manifest = yaml.safe_load(family.manifest.read_text())
    models = {v["name"]: v["tritonModel"] for v in manifest["spec"]["stages"][0]["variants"]}
    for variant in allocations(plan):
        for pod in worker_pods(cluster, served, family, variant):
            containers = {c["name"]: c for c in pod["spec"]["containers"]}
            assert {n: c["image"] for n, c in containers.items()} == {"triton": WORKER_IMAGE, "router": OPERATOR_IMAGE}
            loads = [a for a in containers["triton"]["args"] if a.startswith("--load-model=")]
            assert loads == [f"--load-model={models[variant]}", f"--load-model={family.scorer}"], loads
            assert pod["spec"]["nodeName"] == node.name

    threshold = prompt_threshold(family, plan)
    assert {expected.model(i, threshold) for i in range(len(expected.requests))} == set(family.models), threshold
    send(cluster, node, served, "completions", expected)
    report = pod_report(cluster, served, "completions", timeout_s=180)
    assert len(report["answers"]) == len(expected.requests)
    print(summary(report, family))
    check_answers(report["answers"], expected, threshold)


def test_the_plans_batch_is_each_running_tritons_max_sequences(cluster: Cluster, served: str, family: Family) -> None:
    """The sidecar applied the pod's knobs (worker.json: the plan's batch as ``maxSequences``) to its Triton."""
    plan = wait_serving(cluster, served, family)
    checked = 0
    for variant, alloc in allocations(plan).items():
        for pod in worker_pods(cluster, served, family, variant):
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


@pytest.mark.parametrize("family", ["arith"], indirect=True)
def test_a_plan_change_under_running_streams_reloads_the_models_and_loses_no_stream(
        cluster: Cluster, node: RealNode, served: str, family: Family, expected: Expected) -> None:
    """Streams run from a pod while the pipeline's batch sizes change to [4]: the new plan reaches both running
    Tritons as ``max_sequences`` 4 (a full reload of each generation model beside its running streams) while the
    client is still sending, and every request answers as before: none fails, none answers differently. The text
    family only: a multimodal model reloads through the same sidecar and backend code, and the tier's time is
    kept small."""
    plan = wait_serving(cluster, served, family)
    assert {a["batch"] for a in allocations(plan).values()} == {1}  # the manifest's plan at low load
    pods = {v: sorted(p["metadata"]["name"] for p in worker_pods(cluster, served, family, v) if pod_ready(p))
            for v in allocations(plan)}
    send(cluster, node, served, "reload", expected, "--seconds", str(RELOAD_CLIENT_S))
    cluster.wait_for(lambda: cluster.get_json("-n", served, "pod", "reload").get("status", {}).get("phase")
                     == "Running", "the client pod running", timeout=60)
    cluster.kubectl("-n", served, "patch", "servingpipeline", family.pipeline, "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/spec/stages/0/batchSizes", "value": [4]}]))
    patched_at = time.time()
    for variant, names in pods.items():
        for name in names:
            cluster.wait_for(lambda n=name, m=variant: max_sequences(cluster, served, n, m) == 4,
                             f"{name}: Triton's {variant} reloaded at max_sequences 4", timeout=60)
    reloaded_at = time.time()
    report = pod_report(cluster, served, "reload", timeout_s=RELOAD_CLIENT_S + 90)
    print(summary(report, family), f"patch -> every Triton at max_sequences 4: {reloaded_at - patched_at:.1f} s, "
          f"{reloaded_at - report['started']:.1f} s after the client started")

    assert report["started"] < reloaded_at < report["ended"], report["seconds"]  # streams ran across the reloads
    assert len(report["answers"]) >= len(expected.requests), len(report["answers"])
    now = wait_serving(cluster, served, family)
    assert {a["batch"] for a in allocations(now).values()} == {4}
    check_answers(report["answers"], expected, prompt_threshold(family, now))
    for variant, names in pods.items():  # the same pods and containers: the models reloaded inside Triton
        assert names == sorted(p["metadata"]["name"] for p in worker_pods(cluster, served, family, variant)
                               if pod_ready(p))
        for pod in worker_pods(cluster, served, family, variant):
            assert all(s["restartCount"] == 0 for s in pod["status"]["containerStatuses"])
