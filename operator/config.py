"""Operator settings, read once at start-up from the environment (set by the Helm chart's values)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from paretoserve.operator.children import WorkerSettings


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    prometheus_url: str | None = None
    """Where to read metrics; unset means every pipeline reports MetricsUnavailable and keeps its plan."""
    tick_seconds: float = 2.0
    """How often the adaptation timer wakes; each pipeline adapts at its own spec interval."""
    metrics_port: int = 9090
    rate_window_seconds: int = 30
    """PromQL rate() window for the request rate; shorter reacts faster, longer is smoother."""
    step_seconds: int = 5
    """Resolution of the load history read from Prometheus."""
    peering: str | None = None
    """kopf ClusterKopfPeering name (chart: operator.peering.name); None when running --standalone."""
    priority: int = 0
    identity: str = ""
    """This process's kopf peer id (POD_ID); the adaptation loop runs only while it is the active peer."""
    peering_lifetime_seconds: int = 60
    push_routers: bool = True
    """POST live thresholds and splits to the router sidecars (off where pods run no containers, e.g. kwok)."""
    workers: WorkerSettings = field(default_factory=WorkerSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        tolerations = tuple(json.loads(env.get("PARETOSERVE_TOLERATIONS", "[]")))
        node_selector = dict(json.loads(env.get("PARETOSERVE_NODE_SELECTOR", "{}")))
        defaults = WorkerSettings()
        workers = WorkerSettings(
            triton_image=env.get("PARETOSERVE_TRITON_IMAGE", defaults.triton_image),
            router_image=env.get("PARETOSERVE_ROUTER_IMAGE", defaults.router_image),
            model_repository=env.get("PARETOSERVE_MODEL_REPOSITORY") or defaults.model_repository,
            model_repository_claim=env.get("PARETOSERVE_MODEL_REPOSITORY_CLAIM") or None,
            tolerations=tolerations,
            node_selector=node_selector,
        )
        return cls(
            prometheus_url=env.get("PARETOSERVE_PROMETHEUS_URL") or None,
            tick_seconds=float(env.get("PARETOSERVE_TICK_SECONDS", "2")),
            metrics_port=int(env.get("PARETOSERVE_METRICS_PORT", "9090")),
            rate_window_seconds=int(env.get("PARETOSERVE_RATE_WINDOW_SECONDS", "30")),
            step_seconds=int(env.get("PARETOSERVE_STEP_SECONDS", "5")),
            peering=env.get("PARETOSERVE_PEERING") or None,
            priority=int(env.get("PARETOSERVE_PRIORITY", "0")),
            identity=env.get("POD_ID", ""),
            peering_lifetime_seconds=int(env.get("PARETOSERVE_PEERING_LIFETIME_SECONDS", "60")),
            push_routers=env.get("PARETOSERVE_PUSH_ROUTERS", "true").lower() not in ("0", "false", "no"),
            workers=workers,
        )
