"""kopf handlers for ServingPipeline: thin glue between kopf, the pure planner and the gateway.

Run with `kopf run -m paretoserve.operator.handlers` (the Helm chart does, with `--liveness`). Each
handler parses the body, calls pure functions (`plan_step`, `render_children` via `actuate`,
`set_conditions`), lets the gateway change the cluster, and writes `patch.status`. The applied plan and
the policy state live in the status, so a restarted operator continues where it stopped.
"""

from __future__ import annotations

import time
from typing import Any

import kopf

from paretoserve.operator import adapt
from paretoserve.operator.config import OperatorConfig
from paretoserve.operator.k8s.gateway import KubernetesGateway
from paretoserve.operator.metrics import PrometheusSource
from paretoserve.operator.telemetry import start_metrics_server
from paretoserve.planner.spec import API_GROUP, API_VERSION

RESOURCE = (API_GROUP, API_VERSION, "servingpipelines")


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = OperatorConfig.from_env()
    memo.config = config
    memo.gateway = KubernetesGateway.from_environment()
    memo.source = PrometheusSource(config.prometheus_url) if config.prometheus_url else None
    settings.posting.level = 20  # INFO and above become Kubernetes Events
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    start_metrics_server(config.metrics_port)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    pipeline = adapt.parse_or_fail(body, patch, now=time.time())
    update = adapt.reconcile(memo.gateway, memo.config, body, pipeline, now=time.time())
    patch.status.update(update.status)
    if update.event:
        kopf.info(body, reason="Reconciled", message=update.event)


@kopf.timer(*RESOURCE, interval=OperatorConfig.from_env().tick_seconds, initial_delay=1.0)
def adapt_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    now = time.time()
    pipeline = adapt.parse_or_none(body)
    if pipeline is None or not adapt.due(body, pipeline, now=now):
        return
    update = adapt.adapt(memo.gateway, memo.source, memo.config, body, pipeline, now=now)
    patch.status.update(update.status)
    if update.event:
        kopf.info(body, reason="Adapted", message=update.event)
