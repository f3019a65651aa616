"""One rendering of a plan for the workers: the Kubernetes and the local actuator give Triton the same knobs.

Both actuators turn a plan's allocation (variant, batch, instances) into Triton settings: on Kubernetes the
operator writes them into each worker pod's ConfigMap and pushes them to its sidecar (`POST /admin/worker`);
locally the runtime reloads the model with them. If the two rules differ, a pipeline behaves differently on a
cluster than on the machine it was tried on: at batch 1 a pod would hold requests in Triton's queue waiting
for batches the planner never charged for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from paretoserve.operator.children import Owner, WorkerSettings, render_children
from paretoserve.planner.model import Allocation, Plan, SolveStatus, StagePlan
from paretoserve.planner.spec import ServingPipeline, load_pipeline_text, parse_pipeline
from paretoserve.workers.plan_rendering import router_config, router_update, served_models
from paretoserve.workers.router.config import parse_config
from paretoserve.workers.runtime.actuator import LocalLimits, model_settings

KEY = b"test-key"
EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"


def _pipeline(late_requests: str = "serve") -> ServingPipeline:
    variant = {"name": "large", "tritonModel": "cnn_large", "accuracy": 0.99,
               "profile": {"points": [{"batch": 1, "latencyMs": 2.0}, {"batch": 8, "latencyMs": 6.0}]}}
    return parse_pipeline({"apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline",
                           "metadata": {"name": "digits"},
                           "spec": {"slo": {"latencyMs": 50, "lateRequests": late_requests}, "stages": [
                               {"name": "classify", "batchSizes": [1, 2, 4, 8], "maxQueueDelayMs": 5,
                                "variants": [variant]}]}})


def _plan(allocation: Allocation) -> Plan:
    return Plan(SolveStatus.OPTIMAL, (StagePlan("classify", (allocation,), 0.0, 2.0, 0.99),))


def _kubernetes(pipeline: ServingPipeline, allocation: Allocation) -> dict[str, Any]:
    """What the operator puts in the worker pods' ConfigMap (worker.json, also pushed to the sidecar)."""
    children = render_children(
        Owner("digits", "ns", "uid"), pipeline.spec, _plan(allocation), WorkerSettings(),
        admin_key=KEY)
    config_map = next(o for o in children if o["kind"] == "ConfigMap" and "worker.json" in o.get("data", {}))
    knobs: dict[str, Any] = json.loads(config_map["data"]["worker.json"])["models"]["cnn_large"]
    return {"instances": knobs["instanceCount"],
            "preferred_batch": knobs.get("preferredBatchSize") if (knobs.get("preferredBatchSize") or 1) > 1 else None,
            "max_queue_delay_us": knobs.get("maxQueueDelayMicroseconds", 0),
            "queue_timeout_us": knobs.get("queueTimeoutMicroseconds")}


def _local(pipeline: ServingPipeline, allocation: Allocation) -> dict[str, Any]:
    """What the one-machine runtime reloads its Triton model with."""
    limits = LocalLimits(cores=64, max_instances_per_model=64)
    settings = model_settings(pipeline, _plan(allocation), limits)["cnn_large"]
    return {"instances": settings.instances,
            "preferred_batch": settings.preferred_batch[0] if settings.preferred_batch else None,
            "max_queue_delay_us": settings.max_queue_delay_us or 0,
            "queue_timeout_us": settings.queue_timeout_us}


@pytest.mark.parametrize("batch", [1, 2, 8])
@pytest.mark.parametrize("instances", [1, 3])
@pytest.mark.parametrize("late_requests", ["serve", "refuse"])
def test_both_actuators_give_triton_the_same_knobs_for_one_pod(batch: int, instances: int, late_requests: str) -> None:
    pipeline = _pipeline(late_requests)
    allocation = Allocation("large", batch, float(instances), instances, 1, 10.0, 2.0 * batch, 0.0, "main")
    assert _kubernetes(pipeline, allocation) == _local(pipeline, allocation)


def test_refusing_late_requests_gives_each_pod_the_slo_minus_its_batch_latency_as_queue_timeout() -> None:
    """50 ms SLO, the plan's batch of 8 takes 6.25 ms: Triton refuses a request once it has waited 43.75 ms (it
    could not be on time even with nothing after it); a pipeline that serves late requests sends no timeout, so
    its models keep the queue policy they were exported with."""
    allocation = Allocation("large", 8, 2.0, 1, 3, 100.0, 6.25, 0.0, "main")
    assert _kubernetes(_pipeline("refuse"), allocation)["queue_timeout_us"] == 43_750
    assert _local(_pipeline("refuse"), allocation)["queue_timeout_us"] == 43_750
    assert _kubernetes(_pipeline("serve"), allocation)["queue_timeout_us"] is None
    assert _local(_pipeline("serve"), allocation)["queue_timeout_us"] is None
    too_slow = Allocation("large", 8, 2.0, 1, 3, 100.0, 50.0, 0.0, "main")  # the batch alone takes the SLO
    assert _kubernetes(_pipeline("refuse"), too_slow)["queue_timeout_us"] == 0  # never refuse everything


@pytest.mark.parametrize(("example", "light_name", "heavy_name", "scorer"), [
    ("arith-llm.yaml", "arith-small", "arith-large", "arith-scorer"),
    ("mm-llm.yaml", "mm-low", "mm-high", "mm-scorer"),
])
def test_a_generation_prompt_cascade_renders_its_scorer_in_every_variants_pods(
        example: str, light_name: str, heavy_name: str, scorer: str) -> None:
    """arith-llm and mm-llm alike: the pods of both models load the scorer beside their model (each router scores
    from its own Triton, and a plan without light replicas keeps it), and every router's config names it as the
    cascade's scorer, on localhost, with the chosen row's prompt threshold (what the router applies per request);
    the multimodal scorer's extra IMAGE input changes nothing here (the router reads it from the scorer's config)."""
    pipeline = load_pipeline_text((EXAMPLES / example).read_text())
    stage = pipeline.spec.stages[0]
    light, heavy = (next(v for v in stage.variants if v.name == name) for name in (light_name, heavy_name))
    assert served_models(stage, light) == (light_name, scorer)
    assert served_models(stage, heavy) == (heavy_name, scorer)
    row = stage.cascade.rows[3] if stage.cascade is not None else None
    assert row is not None
    plan = Plan(SolveStatus.OPTIMAL, (StagePlan("answer", (), 0.0, 1.0, row.quality or 0.0, threshold=row.threshold),))
    children = render_children(Owner("llm", "ns", "uid"), pipeline.spec, plan, WorkerSettings(), admin_key=KEY)
    loads = {tuple(a for a in c["args"] if a.startswith("--load-model="))
             for o in children if o["kind"] == "Deployment"
             for c in o["spec"]["template"]["spec"]["containers"] if c["name"] == "triton"}
    assert loads == {(f"--load-model={light_name}", f"--load-model={scorer}"),
                     (f"--load-model={heavy_name}", f"--load-model={scorer}")}
    for config_map in (o for o in children if o["kind"] == "ConfigMap" and "router.json" in o.get("data", {})):
        config = parse_config(json.loads(config_map["data"]["router.json"]))
        cascade = config.stages[0].cascade
        assert cascade is not None and cascade.scorer == scorer
        assert cascade.pre_route_threshold == row.prompt_threshold
        assert [u.startswith("http://127.0.0.1:") for u in config.upstreams[scorer]] == [True]
    update = router_update(pipeline.spec, plan)["stages"][0]["cascade"]
    assert update == {"threshold": row.threshold, "preRouteThreshold": row.prompt_threshold}
    provisional = router_config(pipeline.metadata.name, pipeline.spec, {light_name: ["http://l"], heavy_name: [
        "http://h"], scorer: ["http://s"]}, None)["stages"][0]["cascade"]  # before a plan: the best row, threshold 0
    assert (provisional["scorer"], provisional["preRouteThreshold"], provisional["light"], provisional["heavy"]) == (
        scorer, 0.0, light_name, heavy_name)


def test_a_discriminator_stays_next_to_the_light_model_only() -> None:
    pipeline = load_pipeline_text((EXAMPLES / "diffserve-cascade.yaml").read_text())
    stage = pipeline.spec.stages[0]
    assert stage.cascade is not None and stage.cascade.discriminator_model
    by_name = {v.name: v for v in stage.variants}
    assert served_models(stage, by_name[stage.cascade.light]) == (
        by_name[stage.cascade.light].triton_model, stage.cascade.discriminator_model)
    assert served_models(stage, by_name[stage.cascade.heavy]) == (by_name[stage.cascade.heavy].triton_model,)


@pytest.mark.parametrize("batch", [1, 4, 8])
def test_a_generation_pod_gets_the_plans_batch_as_max_sequences_and_no_batching(batch: int) -> None:
    """The plan's batch of a token-generating variant is its scheduler's most sequences at once, on a pod as in
    `paretoserve up` (one replica: one instance); no dynamic batching knob reaches a decoupled model."""
    pipeline = load_pipeline_text((EXAMPLES / "arith-llm.yaml").read_text())
    allocation = Allocation("arith-large", batch, 1.0, 1, 1, 10.0, 2.0, 0.0, "main")
    plan = Plan(SolveStatus.OPTIMAL, (StagePlan("answer", (allocation,), 0.0, 2.0, 0.7865, threshold=0.0),))
    children = render_children(Owner("arith-llm", "ns", "uid"), pipeline.spec, plan, WorkerSettings(), admin_key=KEY)
    bodies = {o["metadata"]["name"]: json.loads(o["data"]["worker.json"]) for o in children if o["kind"] == "ConfigMap"}
    assert bodies["arith-llm-answer-arith-large"] == {"models": {"arith-large": {"instanceCount": 1,
                                                                                 "maxSequences": batch}}}
    assert bodies["arith-llm-answer-arith-small"] == {"models": {"arith-small": {"instanceCount": 1}}}  # not planned
    local = model_settings(pipeline, plan, LocalLimits(cores=64, max_instances_per_model=64))["arith-large"]
    assert (local.instances, local.max_sequences) == (1, batch)
