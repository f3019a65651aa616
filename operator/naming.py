"""Names, labels and ports of what a ServingPipeline owns: the identity every operator module agrees on.

Children are found again by these labels (orphan deletion, push targets, NetworkPolicies) and named
deterministically from the pipeline, stage and variant, so a restarted operator finds exactly what it made.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from paretoserve.planner.spec import API_GROUP, API_VERSION, KIND

LABEL_PIPELINE = f"{API_GROUP}/pipeline"
LABEL_STAGE = f"{API_GROUP}/stage"
LABEL_VARIANT = f"{API_GROUP}/variant"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGER = "paretoserve"
ANNOTATION_CPU = f"{API_GROUP}/desired-cpu"
MODELS_MOUNT = "/models"
TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
ROUTER_PORT = 8080
ROUTER_ADMIN_PORT = 8081
ADMIN_TOKEN_DIR = "/var/run/paretoserve/admin"
ADMIN_TOKEN_KEY = "token"
WORKER_UID = 1000


@dataclass(frozen=True, slots=True)
class Owner:
    """The pipeline that owns an object."""

    name: str
    namespace: str
    uid: str


def child_name(pipeline: str, stage: str, variant: str) -> str:
    """DNS-1123 name of a (stage, variant) child, at most 63 characters."""
    base = f"{pipeline}-{stage}-{variant}"
    if len(base) <= 63:
        return base
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{base[:54].rstrip('-')}-{digest}"


def labels(owner: Owner, stage: str, variant: str) -> dict[str, str]:
    return {LABEL_PIPELINE: owner.name, LABEL_STAGE: stage, LABEL_VARIANT: variant, LABEL_MANAGED: MANAGER}


def metadata(owner: Owner, name: str, stage: str, variant: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, stage, variant),
        "ownerReferences": [{
            "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True,
        }],
    }


def pipeline_labels(owner: Owner) -> dict[str, str]:
    """The labels every pod and pipeline-level object of the pipeline carries."""
    return {LABEL_PIPELINE: owner.name, LABEL_MANAGED: MANAGER}


def admin_secret_name(pipeline: str) -> str:
    """The Secret with the routers' admin token (a Secret, so no name clash with the per-variant children)."""
    return f"{pipeline}-router-admin"
