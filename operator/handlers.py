"""kopf handlers for ServingPipeline: thin glue between kopf, the pure planner and the gateway.

Run with `python -m paretoserve.operator` (= `kopf run -m paretoserve.operator.handlers`). Reconciliation
happens in kopf's change handlers; adaptation in `AdaptationLoop`, a background thread fed by a watching
handler, because kopf timers would put a finalizer on every pipeline (see loop.py). No handler here needs
a finalizer, so deleting a pipeline never waits for the operator: ownerReferences garbage-collect it.
"""

from __future__ import annotations

import time
from typing import Any

import kopf

from paretoserve.operator import pipeline_steps, telemetry
from paretoserve.operator.adaptation import AdaptationLoop, PipelineRegistry, prometheus_client, prometheus_sources
from paretoserve.operator.config import ConfigError, OperatorConfig
from paretoserve.operator.k8s.gateway import GatewayError, KubernetesGateway
from paretoserve.operator.router_push import RouterPusher
from paretoserve.operator.status import plain
from paretoserve.operator.telemetry import start_metrics_server
from paretoserve.planner.spec import API_GROUP, API_VERSION
from paretoserve.workers.solver_banner import silence_solver_banner

RESOURCE = (API_GROUP, API_VERSION, "servingpipelines")
RETRY_BACKOFF_S = 5.0
"""Seconds before kopf retries a reconcile the API server failed (kopf's default, 60 s, left a spec change
unapplied for minutes after one timeout on a busy control plane)."""


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    try:
        config = OperatorConfig.from_env()
    except ConfigError as exc:  # one line naming the variable; the operator stops
        raise kopf.PermanentError(f"invalid setting: {exc}") from None
    memo.config = config
    memo.gateway = KubernetesGateway.from_environment()
    memo.prometheus = prometheus_client(config)
    sources = prometheus_sources(config, memo.prometheus) if config.prometheus_url else None
    memo.registry = PipelineRegistry()
    memo.pusher = RouterPusher() if config.push_routers else None
    memo.loop = AdaptationLoop(memo.registry, memo.gateway, sources, config, pusher=memo.pusher).start()
    settings.posting.level = 20  # INFO and above become Kubernetes Events
    settings.peering.lifetime = config.peering_lifetime_seconds
    settings.scanning.disabled = bool(config.watch_namespaces)  # no cluster-wide CRD watch in namespaced mode
    start_metrics_server(config.metrics_port)
    silence_solver_banner()


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.loop.stop()
    memo.prometheus.close()
    if memo.pusher is not None:
        memo.pusher.close()


@kopf.on.event(*RESOURCE)
def track(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.registry.observe(event.get("type"), plain(event["object"]))
    if event.get("type") == "DELETED":
        meta = event["object"]["metadata"]
        telemetry.forget(meta["namespace"], meta["name"])


@kopf.on.resume(*RESOURCE, backoff=RETRY_BACKOFF_S)
@kopf.on.create(*RESOURCE, backoff=RETRY_BACKOFF_S)
@kopf.on.update(*RESOURCE, field="spec", backoff=RETRY_BACKOFF_S)
def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    pipeline = pipeline_steps.parse_or_fail(body, patch, now=time.time())
    try:
        update = pipeline_steps.reconcile(memo.gateway, memo.config, body, pipeline, now=time.time(),
                                          pusher=memo.pusher)
    except GatewayError:
        raise  # the API server: kopf retries with backoff
    except Exception as exc:  # a bug for this spec: visible in its status, and no endless retries
        pipeline_steps.fail_permanently(body, patch, f"{type(exc).__name__}: {exc}", now=time.time())
    patch.status.update(update.status)
    memo.registry.merge_status(body["metadata"]["namespace"], body["metadata"]["name"], update.status)
    if update.event:
        kopf.info(body, reason="Reconciled", message=update.event)
