"""Pure builders of the Kubernetes objects a ServingPipeline owns.

Per (stage, variant) the operator keeps one Deployment of Triton worker pods with the router sidecar,
one Service, one ConfigMap with the worker's Triton knobs (batch size, dynamic batching, instances,
threads) and, when it runs more than one replica, a PodDisruptionBudget. Variants the plan does not use
keep their Deployment at zero replicas, so switching variants is a scale, not a create. Every object
carries an ownerReference to the pipeline, so deleting the pipeline garbage-collects them.

Nothing here talks to the API server: `render_children` is a function of the pipeline's identity, its
spec, the plan and the operator settings, and the unit tests compare its output field by field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from paretoserve.planner.model import Allocation, Plan
from paretoserve.planner.spec import API_GROUP, API_VERSION, KIND, ServingPipelineSpec, Stage, Variant
from paretoserve.workers import plan_rendering
from paretoserve.workers.plan_rendering import served_models

LABEL_PIPELINE = f"{API_GROUP}/pipeline"
LABEL_STAGE = f"{API_GROUP}/stage"
LABEL_VARIANT = f"{API_GROUP}/variant"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGER = "paretoserve"
ANNOTATION_CPU = f"{API_GROUP}/desired-cpu"
MODELS_MOUNT = "/models"
TRITON_HTTP_PORT = 8000
TRITON_METRICS_PORT = 8002
ROUTER_PORT = 8080


@dataclass(frozen=True, slots=True)
class Owner:
    name: str
    namespace: str
    uid: str


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Operator-wide settings of the pods it creates (Helm values)."""

    triton_image: str = "nvcr.io/nvidia/tritonserver:24.08-py3"
    router_image: str = "ghcr.io/paretoserve/router:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    tolerations: tuple[dict[str, Any], ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    model_repository: str = "/models"
    """Triton's ``--model-repository``: a path in the Triton image (or on ``model_repository_claim``), or a
    cloud store Triton reads itself (``s3://``, ``gs://``, ``as://``). Each variant's ``tritonModel`` must be in it."""
    model_repository_claim: str | None = None
    """A PersistentVolumeClaim holding the model repository, mounted read-only at ``/models``."""
    router_cpu: str = "500m"
    """The router costs ~0.35 ms of CPU per request: 500m carries ~1,400 requests/s per pod."""
    router_memory: str = "128Mi"


def child_name(pipeline: str, stage: str, variant: str) -> str:
    """DNS-1123 name of a (stage, variant) child, at most 63 characters."""
    base = f"{pipeline}-{stage}-{variant}"
    if len(base) <= 63:
        return base
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{base[:54].rstrip('-')}-{digest}"


def labels(owner: Owner, stage: str, variant: str) -> dict[str, str]:
    return {LABEL_PIPELINE: owner.name, LABEL_STAGE: stage, LABEL_VARIANT: variant, LABEL_MANAGED: MANAGER}


def _metadata(owner: Owner, name: str, stage: str, variant: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, stage, variant),
        "ownerReferences": [{
            "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True,
        }],
    }


def allocation_for(plan: Plan | None, stage: str, variant: str) -> Allocation | None:
    if plan is None or not plan.status.has_plan:
        return None
    for sp in plan.stages:
        if sp.stage == stage:
            for a in sp.allocations:
                if a.variant == variant:
                    return a
    return None


def _cpu_quantity(cores: float) -> str:
    return f"{round(cores * 1000)}m"


def _resources(variant: Variant) -> dict[str, Any]:
    """The pod template's resources: the variant's base size. The planned CPU is applied to live pods
    through the resize subresource; changing the template would roll every pod (the Deployment trap)."""
    cpu = variant.resources.cpu
    amounts: dict[str, str] = {"cpu": _cpu_quantity(cpu), "memory": f"{round(variant.resources.memory_gib * 1024)}Mi"}
    limits = dict(amounts)
    for name, count in variant.resources.gpus.items():
        limits[name] = str(int(count))
        amounts[name] = str(int(count))
    return {"requests": amounts, "limits": limits}


def render_deployment(owner: Owner, stage: Stage, variant: Variant, alloc: Allocation | None,
                      settings: WorkerSettings) -> dict[str, Any]:
    name = child_name(owner.name, stage.name, variant.name)
    pod_labels = labels(owner, stage.name, variant.name)
    cpu = alloc.cpu if alloc else variant.resources.cpu
    triton_mounts: list[dict[str, Any]] = [{"name": "knobs", "mountPath": "/etc/paretoserve"}]
    volumes: list[dict[str, Any]] = [{"name": "knobs", "configMap": {"name": name}}]
    if settings.model_repository_claim:
        triton_mounts.append({"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True})
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": settings.model_repository_claim,
                                                                    "readOnly": True}})
    triton = {
        "name": "triton",
        "image": settings.triton_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["tritonserver", f"--model-repository={settings.model_repository}", "--model-control-mode=explicit",
                 *(f"--load-model={m}" for m in served_models(stage, variant)), f"--http-port={TRITON_HTTP_PORT}",
                 f"--metrics-port={TRITON_METRICS_PORT}"],
        "ports": [{"name": "http", "containerPort": TRITON_HTTP_PORT},
                  {"name": "metrics", "containerPort": TRITON_METRICS_PORT}],
        "resources": _resources(variant),
        # CPU is resized in place; GPUs cannot be (they change through replicas).
        "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"},
                         {"resourceName": "memory", "restartPolicy": "NotRequired"}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": TRITON_HTTP_PORT}},
        "volumeMounts": triton_mounts,
    }
    router = {
        "name": "router",
        "image": settings.router_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["paretoserve", "router", "--host=0.0.0.0", f"--port={ROUTER_PORT}",
                 "--config=/etc/paretoserve/router.json", "--worker-knobs=/etc/paretoserve/worker.json"],
        "ports": [{"name": "router", "containerPort": ROUTER_PORT}],
        "resources": {"requests": {"cpu": settings.router_cpu, "memory": settings.router_memory},
                      "limits": {"cpu": settings.router_cpu, "memory": settings.router_memory}},
        "volumeMounts": [{"name": "knobs", "mountPath": "/etc/paretoserve"}],
    }
    pod_spec: dict[str, Any] = {"containers": [triton, router], "volumes": volumes}
    if settings.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**_metadata(owner, name, stage.name, variant.name),
                     "annotations": {ANNOTATION_CPU: _cpu_quantity(cpu)}},
        "spec": {
            "replicas": alloc.replicas if alloc else 0,
            "selector": {"matchLabels": pod_labels},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }


def render_children(owner: Owner, spec: ServingPipelineSpec, plan: Plan | None,
                    settings: WorkerSettings) -> list[dict[str, Any]]:
    """Every object the pipeline owns, in apply order (ConfigMaps before the Deployments that mount them)."""
    objects: list[dict[str, Any]] = []
    for stage in spec.stages:
        for variant in stage.variants:
            alloc = allocation_for(plan, stage.name, variant.name)
            name = child_name(owner.name, stage.name, variant.name)
            router_cfg = json.dumps(router_config(owner, spec, plan, local_models=served_models(stage, variant)),
                                    sort_keys=True)
            objects.append({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": _metadata(owner, name, stage.name, variant.name),
                "data": {"worker.json": json.dumps(plan_rendering.worker_body(stage, variant, alloc), sort_keys=True),
                         "router.json": router_cfg},
            })
            objects.append(render_deployment(owner, stage, variant, alloc, settings))
            objects.append({
                "apiVersion": "v1", "kind": "Service",
                "metadata": _metadata(owner, name, stage.name, variant.name),
                "spec": {"selector": labels(owner, stage.name, variant.name),
                         "ports": [{"name": "router", "port": ROUTER_PORT, "targetPort": "router"},
                                   {"name": "http", "port": TRITON_HTTP_PORT, "targetPort": "http"},
                                   {"name": "metrics", "port": TRITON_METRICS_PORT, "targetPort": "metrics"}]},
            })
            if alloc is not None and alloc.replicas > 1:
                objects.append({
                    "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                    "metadata": _metadata(owner, name, stage.name, variant.name),
                    "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(owner, stage.name, variant.name)}},
                })
    objects.append({  # the pipeline's front door: any worker pod's router serves the whole pipeline
        "apiVersion": "v1", "kind": "Service",
        "metadata": {**_metadata(owner, owner.name, "", ""),
                     "labels": {LABEL_PIPELINE: owner.name, LABEL_MANAGED: MANAGER}},
        "spec": {"selector": {LABEL_PIPELINE: owner.name},
                 "ports": [{"name": "router", "port": ROUTER_PORT, "targetPort": "router"}]},
    })
    return objects


def _service_url(owner: Owner, stage: str, variant: str) -> str:
    return f"http://{child_name(owner.name, stage, variant)}.{owner.namespace}.svc:{TRITON_HTTP_PORT}"


def router_config(owner: Owner, spec: ServingPipelineSpec, plan: Plan | None, *,
                  local_models: tuple[str, ...]) -> dict[str, Any]:
    """A sidecar's config: the whole pipeline (any pod's router can serve it), models this pod's Triton
    loads on localhost, every other model through the Service of the (stage, variant) that loads it."""
    upstreams: dict[str, list[str]] = {}
    for stage in spec.stages:
        for variant in stage.variants:
            url = _service_url(owner, stage.name, variant.name)
            for model in served_models(stage, variant):
                local = f"http://127.0.0.1:{TRITON_HTTP_PORT}"
                upstreams.setdefault(model, [local if model in local_models else url])
    return plan_rendering.router_config(owner.name, spec, upstreams,
                                     plan if plan is not None and plan.status.has_plan else None)
