"""Pure builders of the Kubernetes objects a ServingPipeline owns.

Per (stage, variant) the operator keeps one Deployment of Triton worker pods with the router sidecar,
one Service, one ConfigMap with the worker's Triton knobs (batch size, dynamic batching, instances,
threads; for a token-generating model its instances and most sequences at once) and, when it runs more
than one replica, a PodDisruptionBudget. Which models a pod's Triton loads and which knobs it gets are
`workers/plan_rendering.py`'s rules, shared with `paretoserve up` (a prompt cascade's scorer in every
variant's pods). Variants the plan does not use
keep their Deployment at zero replicas, so switching variants is a scale, not a create. Per pipeline it
keeps the front-door Service, the Secret holding the routers' admin token and the NetworkPolicies
(`network_policies.py`). Every object carries an ownerReference to the pipeline, so deleting the pipeline
garbage-collects them.

Worker pods meet PodSecurity "restricted" (non-root, no privilege escalation, all capabilities dropped,
RuntimeDefault seccomp, read-only root filesystem with emptyDirs where Triton and the router write) and
mount no ServiceAccount token. Triton's HTTP and gRPC endpoints listen on the pod's loopback only, so its
model-repository API is reachable by its own sidecar alone; only its metrics port listens on the pod IP.
The router serves inference on `ROUTER_PORT` and its admin API (bearer token) and metrics on
`ROUTER_ADMIN_PORT`; cross-stage calls go to the other variants' routers, never to their Triton.

Nothing here talks to the API server: `render_children` is a function of the pipeline's identity, its
spec, the plan and the operator settings, and the unit tests compare its output field by field.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from paretoserve import __version__
from paretoserve.operator.naming import (
    ADMIN_TOKEN_DIR,
    ADMIN_TOKEN_KEY,
    ANNOTATION_CPU,
    LABEL_PIPELINE,
    MODELS_MOUNT,
    ROUTER_ADMIN_PORT,
    ROUTER_PORT,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    WORKER_UID,
    Owner,
    admin_secret_name,
    child_name,
    labels,
    metadata,
    pipeline_labels,
)
from paretoserve.operator.network_policies import render_network_policy
from paretoserve.planner.model import Allocation, Plan
from paretoserve.planner.spec import ServingPipelineSpec, Stage, Variant
from paretoserve.workers import plan_rendering
from paretoserve.workers.plan_rendering import served_models


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Operator-wide settings of the pods it creates (Helm values)."""

    triton_image: str = f"ghcr.io/paretoserve/worker-cpu:{__version__}"
    """The CPU worker image (``images/Dockerfile.worker``: Triton with the native ``paretoserve_onnx`` backend, the
    Python backend, ONNX Runtime and the model repository at ``/models``); NVIDIA's Triton image with a mounted
    repository works as well once ``paretoserve_onnx`` is in its backends directory (images/README.md)."""
    router_image: str = f"ghcr.io/paretoserve/paretoserve:{__version__}"
    image_pull_policy: str = "IfNotPresent"
    tolerations: tuple[dict[str, Any], ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    model_repository: str = "/models"
    """Triton's ``--model-repository``: a path in the Triton image (or on ``model_repository_claim``), or a
    cloud store Triton reads itself (``s3://``, ``gs://``, ``as://``). Each variant's ``tritonModel`` must be in it."""
    model_repository_claim: str | None = None
    """A PersistentVolumeClaim holding the model repository, mounted read-only at ``/models``."""
    triton_strict_model_config: bool = True
    """Triton serves each model's config as written (``--disable-auto-complete-config``): the exported
    repositories' configs are complete, and auto-completion makes the Python backend start one more stub process
    per model load, ~1.3 s and its start-up CPU on every reload a knob change makes. False for a repository whose
    configs leave out what Triton can fill in (an ONNX model without inputs and outputs, say)."""
    model_repository_secret: str | None = None
    """A Secret whose keys become the Triton container's environment (cloud store credentials such as
    AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS or AZURE_STORAGE_*), never logged or put in status."""
    service_account_name: str | None = None
    """The worker pods' ServiceAccount (for workload identity, e.g. IRSA); its token is still not mounted
    unless the cloud identity needs it (``automount_service_account_token``)."""
    automount_service_account_token: bool = False
    router_cpu: str = "500m"
    """The router costs ~0.35 ms of CPU per request: 500m carries ~1,400 requests/s per pod."""
    router_memory: str = "128Mi"
    drain_seconds: int = 5
    """How long a terminating worker pod's router drains (``--drain-seconds``): it keeps answering, each
    connection closed after its answer, while the endpoint removal reaches every node's proxy; its Triton's
    preStop sleeps longer, so it serves the router's last requests."""
    router_max_body_bytes: int = 4 * 1024 * 1024
    router_fastpath: bool = False
    """Serve the router's data port through the compiled fast path in the router image (``--fastpath=auto``):
    model requests at proxy speed, but pipeline requests take one more hop (docs/data-plane.md), so it is off
    unless clients call models directly (tritonclient, perf_analyzer)."""
    network_policies: bool = True
    """Render the pipeline's NetworkPolicies (`network_policies.py`)."""
    client_peers: tuple[dict[str, Any], ...] = ()
    """NetworkPolicy peers allowed on the routers' inference port; empty: every pod of the pipeline's namespace."""
    operator_peers: tuple[dict[str, Any], ...] = ()
    """Peers allowed on the routers' admin port (the operator's pods); empty: no rule for it, so only
    `prometheus_peers` (scraping `/metrics` there) may reach it, and with neither no pod may."""
    prometheus_peers: tuple[dict[str, Any], ...] = ()
    """Peers allowed to scrape the routers' and Triton's metrics ports."""


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


TRITON_DRAIN_EXTRA_S = 5
"""Seconds Triton's preStop sleep outlasts the router's drain."""
TERMINATION_SLACK_S = 30
"""Grace after Triton's preStop sleep: Triton's --exit-timeout-secs finishes in-flight inferences within it."""

RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
"""PodSecurity "restricted" for every container the operator creates."""


def render_deployment(owner: Owner, stage: Stage, variant: Variant, alloc: Allocation | None,
                      settings: WorkerSettings) -> dict[str, Any]:
    name = child_name(owner.name, stage.name, variant.name)
    pod_labels = labels(owner, stage.name, variant.name)
    cpu = alloc.cpu if alloc else variant.resources.cpu
    triton_mounts: list[dict[str, Any]] = [{"name": "knobs", "mountPath": "/etc/paretoserve"},
                                           {"name": "triton-tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [
        {"name": "knobs", "configMap": {"name": name}},
        {"name": "admin-token", "secret": {"secretName": admin_secret_name(owner.name), "defaultMode": 0o440}},
        {"name": "triton-tmp", "emptyDir": {}},
        {"name": "router-tmp", "emptyDir": {}},
    ]
    if settings.model_repository_claim:
        triton_mounts.append({"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True})
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": settings.model_repository_claim,
                                                                    "readOnly": True}})
    triton = {
        "name": "triton",
        "image": settings.triton_image,
        "imagePullPolicy": settings.image_pull_policy,
        # HTTP and gRPC (with the model-repository API) on loopback: only the sidecar reaches them.
        "args": ["tritonserver", f"--model-repository={settings.model_repository}", "--model-control-mode=explicit",
                 *(["--disable-auto-complete-config"] if settings.triton_strict_model_config else []),
                 *(f"--load-model={m}" for m in served_models(stage, variant)),
                 "--http-address=127.0.0.1", f"--http-port={TRITON_HTTP_PORT}",
                 "--grpc-address=127.0.0.1", f"--grpc-port={TRITON_GRPC_PORT}",
                 "--metrics-address=0.0.0.0", f"--metrics-port={TRITON_METRICS_PORT}"],
        "ports": [{"name": "metrics", "containerPort": TRITON_METRICS_PORT}],
        "resources": _resources(variant),
        # CPU is resized in place; GPUs cannot be (they change through replicas).
        "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"},
                         {"resourceName": "memory", "restartPolicy": "NotRequired"}],
        "securityContext": RESTRICTED,
        "volumeMounts": triton_mounts,
        # outlive the router's drain: its last requests still reach this Triton
        "lifecycle": {"preStop": {"sleep": {"seconds": settings.drain_seconds + TRITON_DRAIN_EXTRA_S}}},
    }
    if settings.model_repository_secret:
        triton["envFrom"] = [{"secretRef": {"name": settings.model_repository_secret}}]
    router = {
        "name": "router",
        "image": settings.router_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["paretoserve", "router", "--host=0.0.0.0", f"--port={ROUTER_PORT}",
                 "--admin-host=0.0.0.0", f"--admin-port={ROUTER_ADMIN_PORT}",
                 f"--admin-token-file={ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_KEY}",
                 f"--triton-url=http://127.0.0.1:{TRITON_HTTP_PORT}", f"--triton-grpc-url=127.0.0.1:{TRITON_GRPC_PORT}",
                 # JSON decoding takes several times a body's size: 4 MiB fits the sidecar's memory limit
                 f"--max-body-bytes={settings.router_max_body_bytes}",
                 f"--drain-seconds={settings.drain_seconds}",
                 "--config=/etc/paretoserve/router.json", "--worker-knobs=/etc/paretoserve/worker.json",
                 *(["--fastpath=auto"] if settings.router_fastpath else [])],
        "ports": [{"name": "router", "containerPort": ROUTER_PORT},
                  {"name": "router-admin", "containerPort": ROUTER_ADMIN_PORT}],
        "resources": {"requests": {"cpu": settings.router_cpu, "memory": settings.router_memory},
                      "limits": {"cpu": settings.router_cpu, "memory": settings.router_memory}},
        # Ready when the router runs and this pod's Triton reports every model it serves ready.
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "router"},
                           "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "router"},
                          "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "securityContext": RESTRICTED,
        "volumeMounts": [{"name": "knobs", "mountPath": "/etc/paretoserve"},
                         {"name": "admin-token", "mountPath": ADMIN_TOKEN_DIR, "readOnly": True},
                         {"name": "router-tmp", "mountPath": "/tmp"}],
    }
    pod_spec: dict[str, Any] = {
        "containers": [triton, router], "volumes": volumes,
        "automountServiceAccountToken": settings.automount_service_account_token,
        "terminationGracePeriodSeconds": settings.drain_seconds + TRITON_DRAIN_EXTRA_S + TERMINATION_SLACK_S,
        "securityContext": {"runAsNonRoot": True, "runAsUser": WORKER_UID, "runAsGroup": WORKER_UID,
                            "fsGroup": WORKER_UID, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if settings.service_account_name:
        pod_spec["serviceAccountName"] = settings.service_account_name
    if settings.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**metadata(owner, name, stage.name, variant.name),
                     "annotations": {ANNOTATION_CPU: _cpu_quantity(cpu)}},
        "spec": {
            "replicas": alloc.replicas if alloc else 0,
            "selector": {"matchLabels": pod_labels},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }


def render_admin_secret(owner: Owner, token: str) -> dict[str, Any]:
    """The routers' admin token (`admin_token`), mounted by every worker pod of the pipeline."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {**metadata(owner, admin_secret_name(owner.name), "", ""),
                         "labels": pipeline_labels(owner)},
            "stringData": {ADMIN_TOKEN_KEY: token}}


def admin_token(key: bytes, owner: Owner) -> str:
    """The pipeline's router admin token: derived from the operator's key, so the operator never reads it
    back and a recreated pipeline (new uid) gets a new one."""
    if not key:
        raise ValueError("admin_token: an empty key would make every pipeline's token computable by anyone")
    return hmac.new(key, f"{owner.namespace}/{owner.name}/{owner.uid}".encode(), hashlib.sha256).hexdigest()


def render_children(owner: Owner, spec: ServingPipelineSpec, plan: Plan | None,
                    settings: WorkerSettings, *, admin_key: bytes) -> list[dict[str, Any]]:
    """Every object the pipeline owns, in apply order (ConfigMaps and the Secret before the Deployments
    that mount them)."""
    objects: list[dict[str, Any]] = [render_admin_secret(owner, admin_token(admin_key, owner))]
    for stage in spec.stages:
        for variant in stage.variants:
            alloc = allocation_for(plan, stage.name, variant.name)
            name = child_name(owner.name, stage.name, variant.name)
            router_cfg = json.dumps(router_config(owner, spec, plan, local_models=served_models(stage, variant)),
                                    sort_keys=True)
            objects.append({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": metadata(owner, name, stage.name, variant.name),
                "data": {"worker.json": json.dumps(plan_rendering.worker_body(spec.slo, stage, variant, alloc),
                                                   sort_keys=True),
                         "router.json": router_cfg},
            })
            objects.append(render_deployment(owner, stage, variant, alloc, settings))
            objects.append({
                "apiVersion": "v1", "kind": "Service",
                "metadata": metadata(owner, name, stage.name, variant.name),
                "spec": {"selector": labels(owner, stage.name, variant.name),
                         "ports": [{"name": "router", "port": ROUTER_PORT, "targetPort": "router"}]},
            })
            if alloc is not None and alloc.replicas > 1:
                objects.append({
                    "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                    "metadata": metadata(owner, name, stage.name, variant.name),
                    "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(owner, stage.name, variant.name)}},
                })
    objects.append({  # the pipeline's front door: any worker pod's router serves the whole pipeline
        "apiVersion": "v1", "kind": "Service",
        "metadata": {**metadata(owner, owner.name, "", ""),
                     "labels": pipeline_labels(owner)},
        "spec": {"selector": {LABEL_PIPELINE: owner.name},
                 "ports": [{"name": "router", "port": ROUTER_PORT, "targetPort": "router"}]},
    })
    if settings.network_policies:
        objects.append(render_network_policy(owner, client_peers=settings.client_peers,
                                             operator_peers=settings.operator_peers,
                                             prometheus_peers=settings.prometheus_peers))
    return objects


def _service_url(owner: Owner, stage: str, variant: str) -> str:
    """Another variant's models, through its routers' model proxy (its Triton listens on loopback only)."""
    return f"http://{child_name(owner.name, stage, variant)}.{owner.namespace}.svc:{ROUTER_PORT}"


def router_config(owner: Owner, spec: ServingPipelineSpec, plan: Plan | None, *,
                  local_models: tuple[str, ...]) -> dict[str, Any]:
    """A sidecar's config: the whole pipeline (any pod's router can serve it), models this pod's Triton
    loads on localhost, every other model through the routers of the (stage, variant) that loads it."""
    upstreams: dict[str, list[str]] = {}
    for stage in spec.stages:
        for variant in stage.variants:
            url = _service_url(owner, stage.name, variant.name)
            for model in served_models(stage, variant):
                local = f"http://127.0.0.1:{TRITON_HTTP_PORT}"
                upstreams.setdefault(model, [local if model in local_models else url])
    return plan_rendering.router_config(owner.name, spec, upstreams,
                                     plan if plan is not None and plan.status.has_plan else None)
