"""Plan -> local actions: Triton instances/threads/batching, router config and live updates, apply order."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import httpx
import pytest

from paretoserve.planner.model import Allocation, Plan, SolveStatus, StagePlan
from paretoserve.planner.spec import ServingPipeline, parse_pipeline
from paretoserve.workers.router.config import apply_update, parse_config
from paretoserve.workers.runtime.actuator import (
    LocalActuator,
    LocalLimits,
    ModelSettings,
    RouterAdmin,
    change_kind,
    desired_spec,
    model_settings,
    router_config,
    router_stages,
    router_update,
)
from paretoserve.workers.triton.repository import TritonModelSpec


def _variant(name: str, model: str, accuracy: float) -> dict[str, Any]:
    return {"name": name, "tritonModel": model, "accuracy": accuracy,
            "profile": {"points": [{"batch": 1, "latencyMs": 2.0}, {"batch": 4, "latencyMs": 4.0}]}}


def pipeline(*, cascade: bool = True, router: str = "confidence") -> ServingPipeline:
    stages: list[dict[str, Any]] = [{
        "name": "classify", "batchSizes": [1, 4], "maxQueueDelayMs": 5,
        "variants": [_variant("tiny", "tiny_linear", 0.88), _variant("large", "cnn_large", 0.99)],
    }]
    if cascade:
        stages[0]["cascade"] = {"light": "tiny", "heavy": "large", "router": router,
                                **({"discriminatorModel": "discriminator"} if router in ("discriminator", "hybrid")
                                   else {}),
                                "rows": [{"threshold": 0.5, "heavyFraction": 0.2, "quality": 0.95},
                                         {"threshold": 0.9, "heavyFraction": 0.7, "quality": 0.99}]}
    else:
        stages[0]["multiVariant"] = True
    stages.append({"name": "check", "dependsOn": ["classify"], "variants": [_variant("mlp", "mlp_small", 0.97)]})
    return parse_pipeline({"apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline",
                           "metadata": {"name": "digits"}, "spec": {"slo": {"latencyMs": 50}, "stages": stages}})


def alloc(variant: str, *, batch: int = 1, cpu: float = 1.0, instances: int = 1, replicas: int = 1,
          load: float = 10.0, role: str = "main") -> Allocation:
    return Allocation(variant, batch, cpu, instances, replicas, load, 2.0, 0.0, role)


def cascade_plan(threshold: float = 0.9, *, heavy_replicas: int = 1, light_batch: int = 1) -> Plan:
    return Plan(SolveStatus.OPTIMAL, (
        StagePlan("classify", (alloc("tiny", role="light", batch=light_batch),
                               alloc("large", role="heavy", replicas=heavy_replicas)), 0.0, 4.0, 0.99,
                  threshold=threshold, heavy_fraction=0.7, cascade_row=1),
        StagePlan("check", (alloc("mlp", cpu=2.0, instances=2, replicas=2),), 4.0, 2.0, 0.97),
    ), cost=5.0, cpu=5.0)


LIMITS = LocalLimits(cores=2, max_instances_per_model=2)


def test_instances_are_replicas_times_instances_capped_at_the_machine() -> None:
    settings = model_settings(pipeline(), cascade_plan(heavy_replicas=2), LIMITS)
    assert settings["tiny_linear"] == ModelSettings("tiny_linear", 1, 1, (), 0)
    assert settings["cnn_large"].instances == 2 and not settings["cnn_large"].capped
    mlp = settings["mlp_small"]  # 2 replicas x 2 instances = 4 -> capped at 2; 2 cores / 2 instances = 1 thread
    assert (mlp.instances, mlp.threads, mlp.capped) == (2, 1, True)


def test_cores_per_replica_become_threads_per_instance() -> None:
    plan = Plan(SolveStatus.OPTIMAL, (StagePlan("check", (alloc("mlp", cpu=2.0),), 0.0, 2.0, 0.97),))
    settings = model_settings(pipeline(), plan, LocalLimits(cores=2, max_instances_per_model=2))
    assert (settings["mlp_small"].instances, settings["mlp_small"].threads) == (1, 2)
    one_core = model_settings(pipeline(), plan, LocalLimits(cores=1, max_instances_per_model=1))
    assert one_core["mlp_small"].threads == 1 and one_core["mlp_small"].capped


def test_batch_size_becomes_preferred_batch_and_the_stage_queue_delay() -> None:
    settings = model_settings(pipeline(), cascade_plan(light_batch=4), LIMITS)
    assert settings["tiny_linear"].preferred_batch == (4,)
    assert settings["tiny_linear"].max_queue_delay_us == 5000
    assert settings["cnn_large"].preferred_batch == () and settings["cnn_large"].max_queue_delay_us == 0


def test_unplanned_variants_stay_loaded_with_one_instance_and_keep_their_settings() -> None:
    plan = Plan(SolveStatus.OPTIMAL, (StagePlan("check", (alloc("mlp"),), 0.0, 2.0, 0.97),))
    settings = model_settings(pipeline(), plan, LIMITS)
    assert settings["cnn_large"] == ModelSettings("cnn_large", instances=1)
    spec = TritonModelSpec("cnn_large", "cnn_large", "/w", instance_count=2, cpu_threads_per_instance=2,
                           preferred_batch_sizes=(8,), max_queue_delay_us=700)
    assert desired_spec(spec, settings["cnn_large"]) == replace(spec, instance_count=1)


def test_discriminator_router_keeps_the_discriminator_loaded() -> None:
    settings = model_settings(pipeline(router="discriminator"), cascade_plan(), LIMITS)
    assert settings["discriminator"] == ModelSettings("discriminator", instances=1)


def test_change_kind_tells_in_place_updates_from_reloads() -> None:
    spec = TritonModelSpec("m", "tiny_linear", "/w")
    assert change_kind(spec, spec) == "none"
    assert change_kind(spec, replace(spec, instance_count=2)) == "instances"
    assert change_kind(spec, replace(spec, instance_count=2, cpu_threads_per_instance=2)) == "reload"
    assert change_kind(spec, replace(spec, preferred_batch_sizes=(4,))) == "reload"


def test_a_queue_timeout_from_the_plan_is_the_models_reject_policy_and_a_reload() -> None:
    """``slo.lateRequests: refuse`` on one machine: Triton's model gets the timeout as its default queue policy
    (action REJECT, the rest of the policy kept); a change of it is a reload, not an in-place instance change;
    without a timeout in the settings the running policy stays."""
    spec = TritonModelSpec("m", "tiny_linear", "/w")
    refusing = desired_spec(spec, ModelSettings("m", instances=1, queue_timeout_us=43_750))
    assert isinstance(refusing, TritonModelSpec)
    assert (refusing.queue_policy.timeout_us, refusing.queue_policy.timeout_action) == (43_750, "REJECT")
    assert change_kind(spec, refusing) == "reload"
    assert desired_spec(refusing, ModelSettings("m", instances=2)) == replace(refusing, instance_count=2)
    near = desired_spec(refusing, ModelSettings("m", instances=2, queue_timeout_us=41_000))  # within 10 %
    assert near == replace(refusing, instance_count=2) and change_kind(refusing, near) == "instances"
    threads = desired_spec(refusing, ModelSettings("m", instances=1, threads=2, queue_timeout_us=41_000))
    assert isinstance(threads, TritonModelSpec) and threads.queue_policy.timeout_us == 41_000  # reloads anyway


def test_router_config_is_accepted_by_the_router() -> None:
    upstreams = {m: ["http://127.0.0.1:8000"] for m in ("tiny_linear", "cnn_large", "mlp_small")}
    for pipe in (pipeline(), pipeline(cascade=False)):
        for plan in (None, cascade_plan() if pipe.spec.stages[0].cascade else None):
            parsed = parse_config(router_config(pipe.metadata.name, pipe.spec, upstreams, plan))
            assert parsed.pipeline == "digits" and parsed.order == ("classify", "check")


def test_provisional_routing_uses_the_best_row_and_the_most_accurate_variant() -> None:
    stages = {s["name"]: s for s in router_stages(pipeline().spec, None)}
    assert stages["classify"]["cascade"]["threshold"] == 0.9  # the row with the best quality
    assert stages["classify"]["variants"] == {}
    assert stages["check"]["variants"] == {"mlp_small": 1.0}
    split = {s["name"]: s for s in router_stages(pipeline(cascade=False).spec, None)}
    assert split["classify"]["variants"] == {"tiny_linear": 0.0, "cnn_large": 1.0}


def test_traffic_split_weights_follow_the_planned_loads() -> None:
    plan = Plan(SolveStatus.OPTIMAL, (
        StagePlan("classify", (alloc("tiny", load=30.0), alloc("large", load=10.0)), 0.0, 2.0, 0.91),
        StagePlan("check", (alloc("mlp"),), 2.0, 2.0, 0.97),
    ))
    update = router_update(pipeline(cascade=False).spec, plan)
    assert update == {"stages": [
        {"name": "classify", "latencyMs": 2.0, "variants": {"tiny_linear": 0.75, "cnn_large": 0.25}},
        {"name": "check", "latencyMs": 2.0, "variants": {"mlp_small": 1.0}},
    ]}


def test_live_update_changes_only_live_fields_and_the_router_accepts_it() -> None:
    upstreams = {m: ["http://127.0.0.1:8000"] for m in ("tiny_linear", "cnn_large", "mlp_small")}
    config = parse_config(router_config("p", pipeline().spec, upstreams, None))
    update = router_update(pipeline().spec, cascade_plan(threshold=0.5))
    assert update["stages"][0] == {"name": "classify", "latencyMs": 4.0,
                                   "cascade": {"threshold": 0.5, "preRouteThreshold": None}}
    updated = apply_update(config, update)
    assert updated.stage("classify").latency_ms == 4.0 and updated.ahead_ms["classify"] == 4.0 + 2.0
    assert updated.stage("classify").cascade is not None
    assert updated.stage("classify").cascade.threshold == 0.5  # type: ignore[union-attr]


class FakeLoader:
    def __init__(self, log: list[str], fail_on: str | None = None) -> None:
        self.log = log
        self.fail_on = fail_on

    def apply_spec(self, spec: TritonModelSpec) -> None:
        if spec.name == self.fail_on:
            raise RuntimeError("load failed")
        self.log.append(f"triton {spec.name} x{spec.instance_count}")


def _admin(log: list[str]) -> RouterAdmin:
    def handler(request: httpx.Request) -> httpx.Response:
        log.append("router " + json.dumps(json.loads(request.content), sort_keys=True))
        return httpx.Response(200, json={})

    return RouterAdmin("http://router", transport=httpx.MockTransport(handler))


def _specs() -> dict[str, TritonModelSpec]:
    return {m: TritonModelSpec(m, m, "/w", instance_count=2 if m == "mlp_small" else 1, max_queue_delay_us=0)
            for m in ("tiny_linear", "cnn_large", "mlp_small")}


def test_apply_grows_first_then_routes_then_shrinks() -> None:
    log: list[str] = []
    applied: list[Any] = []
    with _admin(log) as admin:
        actuator = LocalActuator(pipeline(), _specs(), FakeLoader(log), admin, LIMITS, on_apply=applied.append)
        two_heavy = cascade_plan(heavy_replicas=2)
        plan = replace(two_heavy, stages=two_heavy.stages[:1])  # mlp idle: 2 -> 1 instance
        actuator.apply(plan, now=100.0)
    assert log[0] == "triton cnn_large x2"
    assert log[1].startswith("router ") and '"threshold": 0.9' in log[1]
    assert log[2:] == ["triton mlp_small x1"]
    assert actuator.applied() is plan
    record = applied[0]
    assert record.time == 100.0 and record.error is None
    assert [(m, k) for m, k, _ in record.triton_changes] == [("cnn_large", "instances"), ("mlp_small", "instances")]
    assert actuator.running_specs()["cnn_large"].instance_count == 2
    assert actuator.batching_delay_ms("cnn_large") == 0.0


class FakeQuota:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def set_cores(self, cores: float) -> None:
        self.log.append(f"quota {cores:g}")


def test_the_plans_cores_become_the_cpu_quota_raised_first_and_lowered_last() -> None:
    log: list[str] = []
    with _admin(log) as admin:
        actuator = LocalActuator(pipeline(), _specs(), FakeLoader(log), admin, LIMITS, cores=FakeQuota(log))
        big = replace(cascade_plan(heavy_replicas=2), cpu=6.0)
        actuator.apply(big, now=1.0)
        assert log[0] == "quota 6" and log[1] == "triton cnn_large x2"
        assert actuator.records[-1].cpu_quota == 6.0
        log.clear()
        small = replace(cascade_plan(heavy_replicas=1), cpu=3.5)
        actuator.apply(small, now=2.0)
        assert log[0] == "quota 9.5"  # old and new cores while Triton changes, as pods beside pods
        assert log[-1] == "quota 3.5" and "triton cnn_large x1" in log[1:-1]
        assert actuator.records[-1].cpu_quota == 3.5
        log.clear()
        actuator.apply(small, now=3.0)
    assert not any(line.startswith("quota") for line in log)  # unchanged cores: the quota is not rewritten


def test_a_failed_apply_is_recorded_and_the_old_plan_stays_applied() -> None:
    log: list[str] = []
    with _admin(log) as admin:
        actuator = LocalActuator(pipeline(), _specs(), FakeLoader(log, fail_on="cnn_large"), admin, LIMITS)
        with pytest.raises(RuntimeError, match="load failed"):
            actuator.apply(cascade_plan(heavy_replicas=2), now=1.0)
    assert actuator.applied() is None
    assert actuator.records[0].error == "RuntimeError: load failed"
    assert not any(line.startswith("router") for line in log)


def test_router_rejection_is_an_error_naming_the_body() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "stages[0].name: no stage", "field": "stages[0].name"})

    with RouterAdmin("http://router", transport=httpx.MockTransport(handler)) as admin, \
            pytest.raises(RuntimeError, match=r"router rejected .*400.*stages\[0\]\.name"):
        admin.update({"stages": []})


def test_limits_validate() -> None:
    with pytest.raises(ValueError, match="cores"):
        LocalLimits(cores=0, max_instances_per_model=1)
    with pytest.raises(ValueError, match="max_instances_per_model"):
        LocalLimits(cores=1, max_instances_per_model=0)
