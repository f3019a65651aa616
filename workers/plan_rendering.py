"""What the workers should run for a plan: one rendering for both actuators (Kubernetes and local).

- Triton knobs (`triton_knobs`): per pod of a variant, the instance count, dynamic batching and CPU threads
  the plan's allocation asks for. The operator writes them into each worker pod's ConfigMap and pushes them
  to its sidecar (`worker_body`, the `POST /admin/worker` body); the one-machine runtime reloads its Triton
  models with them. Batching is on only where the planner charged for it (batch > 1): at batch 1 Triton
  must not hold requests back waiting for a batch. A token-generating model batches sequences itself: its
  pods get the plan's batch as ``maxSequences`` (the most sequences one instance runs at once) and no
  dynamic batching; its replicas are pods, as every variant's are. With ``slo.lateRequests: refuse`` every
  classifier pod's Triton also gets a queue timeout (policy ``REJECT``) of the SLO minus the pool's planned
  batch latency (`queueing.late_request_timeout_us`, the rule the simulator applies), so a request that can
  no longer be on time is refused instead of taking capacity from those that can. Changing it reloads the
  model (Triton updates only an instance count in place), and it changes with the pool's planned latency, so the
  sidecar keeps a loaded timeout within 10 % of the rendered one (`queueing.timeout_to_load`).
- Router settings (`router_config`, `router_update`): traffic splits from planned load shares, cascade
  thresholds from the chosen row, the discriminator or prompt-scorer model the spec names. The operator writes the whole
  config into the ConfigMap and pushes the live part; the local runtime starts its router with it.

It lives outside the sidecar package (`workers/router/`), which only parses and serves what this renders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from paretoserve.planner.model import Allocation, Plan
from paretoserve.planner.queueing import late_request_timeout_us
from paretoserve.planner.spec import SLO, LateRequests, RouterKind, ServingPipelineSpec, Stage, Variant

DEFAULT_DEADLINE_HEADER = "x-paretoserve-deadline-ms"


def variant_models(stage: Stage) -> dict[str, str]:
    """Variant name -> Triton model name."""
    return {v.name: v.triton_model for v in stage.variants}


def stage_models(spec: ServingPipelineSpec) -> dict[str, list[str]]:
    """Stage -> the Triton models of its variants (what the metrics of a stage are read from)."""
    return {s.name: sorted({v.triton_model for v in s.variants}) for s in spec.stages}


def discriminator_model(stage: Stage) -> str | None:
    cascade = stage.cascade
    if cascade is None or cascade.router not in (RouterKind.DISCRIMINATOR, RouterKind.HYBRID):
        return None
    return cascade.discriminator_model


def scorer_model(stage: Stage) -> str | None:
    """The model scoring a generation stage's prompts for its prompt router (None for every other stage)."""
    return stage.cascade.scorer_model if stage.cascade is not None else None


def served_models(stage: Stage, variant: Variant) -> tuple[str, ...]:
    """Triton models a variant's workers load: its own, plus the cascade router's model.

    A discriminator sits next to the cascade's light model (every row visits the light model first). A prompt
    scorer is loaded by every variant of its stage: each router asks it before choosing a model, so it answers
    from the pod's own Triton (no hop to another pod on every request), and a plan that keeps no light replica
    (threshold 0 with ``minReplicas: 0``) still leaves the scorer where the routers are. It costs a few KiB."""
    cascade = stage.cascade
    if cascade is None or variant.name not in (cascade.light, cascade.heavy):
        return (variant.triton_model,)
    scorer = scorer_model(stage)
    if scorer is not None:
        return (variant.triton_model, scorer)
    extra = discriminator_model(stage)
    if extra and cascade.light == variant.name:
        return (variant.triton_model, extra)
    return (variant.triton_model,)


@dataclass(frozen=True, slots=True)
class TritonKnobs:
    """The Triton settings of one pod (one replica) of a variant."""

    instances: int
    threads: int
    """CPU threads per instance: the replica's cores shared among its instances."""
    preferred_batch: int | None
    """Dynamic batching's preferred size; None when the plan runs batch 1 (no batching wait)."""
    max_queue_delay_us: int
    """How long Triton may hold a request to form a batch; 0 when the plan runs batch 1."""
    queue_timeout_us: int = 0
    """After how long waiting Triton refuses a request (``slo.lateRequests: refuse``; 0: never)."""


def triton_knobs(slo: SLO, stage: Stage, variant: Variant, alloc: Allocation | None) -> TritonKnobs:
    """The knobs for one pod of `variant` under `alloc` (None: not in the plan -> the variant's base size)."""
    if alloc is None:
        return TritonKnobs(1, max(1, round(variant.resources.cpu)), None, 0)
    batched = alloc.batch > 1
    return TritonKnobs(
        instances=alloc.instances,
        threads=max(1, round(alloc.cpu / max(1, alloc.instances))),
        preferred_batch=alloc.batch if batched else None,
        max_queue_delay_us=int(round(stage.max_queue_delay_ms * 1000)) if batched else 0,
        queue_timeout_us=late_request_timeout_us(slo, alloc.latency_ms) if stage.generation is None else 0,
    )


def worker_body(slo: SLO, stage: Stage, variant: Variant, alloc: Allocation | None) -> dict[str, Any]:
    """The sidecar's `POST /admin/worker` body (and the ConfigMap's worker.json) for a variant's pods.

    The pod's CPU comes from the resize subresource, not from here; batch 1 is sent as preferred size 1,
    which the sidecar renders as "no preferred size". ``queueTimeoutMicroseconds`` is sent only when the SLO
    refuses late requests, so a pipeline that serves them keeps whatever queue policy its models were exported with.
    """
    knobs = triton_knobs(slo, stage, variant, alloc)
    if stage.generation is not None:
        return {"models": {variant.triton_model: generation_knobs(variant, alloc)}}
    body: dict[str, Any] = {
        "instanceCount": knobs.instances,
        "preferredBatchSize": knobs.preferred_batch or 1,
        "maxQueueDelayMicroseconds": knobs.max_queue_delay_us,
    }
    if slo.late_requests is LateRequests.REFUSE:
        body["queueTimeoutMicroseconds"] = knobs.queue_timeout_us
    return {"models": {variant.triton_model: body}}


def generation_knobs(variant: Variant, alloc: Allocation | None) -> dict[str, int]:
    """A token-generating model's knobs for one pod: its instances (schedulers) and the plan's batch as
    ``maxSequences``; no dynamic batching (its scheduler batches sequences between decode steps) and no threads
    (it runs on one BLAS thread). Without an allocation, one instance and the served ``max_sequences`` kept."""
    if alloc is None:
        return {"instanceCount": 1}
    return {"instanceCount": alloc.instances, "maxSequences": alloc.batch}


def cascade_entry(stage: Stage, threshold: float | None) -> dict[str, Any] | None:
    cascade = stage.cascade
    if cascade is None:
        return None
    models = variant_models(stage)
    if threshold is None:  # no plan yet: the manifest's fixed threshold, else the best row
        threshold = (float(cascade.threshold) if cascade.threshold != "auto"
                     else max(cascade.rows, key=lambda r: (r.heavy_fraction if r.quality is None else r.quality,
                                                           -r.threshold)).threshold)
    row = min(cascade.rows, key=lambda r: abs(r.threshold - threshold))
    return {
        "light": models[cascade.light],
        "heavy": models[cascade.heavy],
        "router": cascade.router.value,
        "threshold": threshold,
        "discriminator": discriminator_model(stage),
        "preRouteThreshold": row.prompt_threshold,
        "scorer": scorer_model(stage),
    }


def router_stages(spec: ServingPipelineSpec, plan: Plan | None) -> list[dict[str, Any]]:
    """The router's ``stages`` entries for ``plan`` (or a provisional routing before the first plan).

    Weights are the planned load share of each variant (traffic split), 1 for the single chosen variant,
    0 for idle ones (the router keeps those as fallbacks). A cascade stage lists no weights: every row
    goes to its light model and rows scoring below ``threshold`` also to its heavy model.
    """
    planned = {sp.stage: sp for sp in plan.stages} if plan is not None else {}
    entries = []
    for stage in spec.stages:
        models = variant_models(stage)
        weights = dict.fromkeys(models.values(), 0.0) if stage.cascade is None else {}
        sp = planned.get(stage.name)
        if stage.cascade is not None:
            pass  # the cascade decides: every row goes to the light model, deferred rows also to the heavy one
        elif sp is not None and sp.allocations:
            loads = {models[a.variant]: a.load_rps for a in sp.allocations if a.role == "main"}
            total = sum(loads.values())
            for model, load in loads.items():
                weights[model] = round(load / total, 6) if total > 0 else round(1.0 / len(loads), 6)
        else:
            best = max(stage.variants, key=stage.accuracy_of)
            weights[best.triton_model] = 1.0
        entries.append({
            "name": stage.name,
            "dependsOn": list(stage.depends_on),
            "inputs": list(stage.inputs),
            "latencyMs": round(sp.latency_ms, 3) if sp is not None else None,
            "variants": weights,
            "cascade": cascade_entry(stage, sp.threshold if sp is not None else None),
        })
    return entries


def router_update(spec: ServingPipelineSpec, plan: Plan | None) -> dict[str, Any]:
    """The live ``POST /admin/config`` body for ``plan``: only what the router changes live.

    Every stage gets its planned latency (the router's slack order), non-cascade stages their weight map,
    cascade stages their threshold (and pre-route threshold);
    topology, models and timeouts need a router restart and never change during a run.
    """
    stages = []
    for entry in router_stages(spec, plan):
        update: dict[str, Any] = {"name": entry["name"], "latencyMs": entry["latencyMs"]}
        if entry["cascade"] is None:
            update["variants"] = entry["variants"]
        else:
            update["cascade"] = {"threshold": entry["cascade"]["threshold"],
                                 "preRouteThreshold": entry["cascade"]["preRouteThreshold"]}
        stages.append(update)
    return {"stages": stages}


def router_config(pipeline: str, spec: ServingPipelineSpec, upstreams: Mapping[str, Sequence[str]],
                  plan: Plan | None) -> dict[str, Any]:
    """The router's whole JSON config (the file `paretoserve router --config` reads)."""
    dynamic = spec.slo.dynamic
    return {
        "pipeline": pipeline,
        "stages": router_stages(spec, plan),
        "upstreams": {model: list(urls) for model, urls in upstreams.items()},
        "deadlineHeader": dynamic.header if dynamic is not None else DEFAULT_DEADLINE_HEADER,
        "sloMs": spec.slo.latency_ms,  # the router caps client deadline headers at the SLO
    }
