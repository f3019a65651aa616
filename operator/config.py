"""Operator settings, read once at start-up from the environment (set by the Helm chart's values).

A bad value stops the operator with one line naming the variable (`ConfigError`), never a traceback. The
secrets among them (the admin key the routers' tokens derive from, Prometheus' bearer token) come from
Kubernetes Secrets through the environment and are never logged or written to a status or an Event.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from paretoserve.operator.children import WorkerSettings

log = logging.getLogger("paretoserve.operator.config")
T = TypeVar("T")
QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?")
"""The CPU and memory quantities the operator writes into pods (a subset of Kubernetes' grammar)."""


class ConfigError(ValueError):
    """An environment variable the chart sets has a value the operator cannot use."""


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    prometheus_url: str | None = None
    """Where to read metrics; unset means every pipeline reports MetricsUnavailable and keeps its plan."""
    prometheus_ca_file: str | None = None
    """CA bundle to verify Prometheus' TLS certificate with; TLS is always verified (system CAs otherwise)."""
    prometheus_bearer_token: str | None = field(default=None, repr=False)
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
    watch_namespaces: tuple[str, ...] = ()
    """Namespace-scoped install (chart: operator.watchNamespaces): kopf watches these only and, holding no
    cluster-wide permission, must not scan CRDs cluster-wide. Empty: the whole cluster."""
    adaptation_workers: int = 4
    """Pipelines adapted at once; one slow pipeline occupies one worker, never the loop."""
    admin_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    """The key the routers' per-pipeline admin tokens derive from (chart: a generated Secret)."""
    workers: WorkerSettings = field(default_factory=WorkerSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        read = _Reader(env)
        defaults = WorkerSettings()
        workers = WorkerSettings(
            triton_image=env.get("PARETOSERVE_TRITON_IMAGE") or defaults.triton_image,
            router_image=env.get("PARETOSERVE_ROUTER_IMAGE") or defaults.router_image,
            image_pull_policy=read.choice("PARETOSERVE_IMAGE_PULL_POLICY", defaults.image_pull_policy,
                                          ("Always", "IfNotPresent", "Never")),
            router_cpu=read.quantity("PARETOSERVE_ROUTER_CPU", defaults.router_cpu),
            router_memory=read.quantity("PARETOSERVE_ROUTER_MEMORY", defaults.router_memory),
            drain_seconds=read.number("PARETOSERVE_DRAIN_SECONDS", defaults.drain_seconds, int, 0, 600),
            router_fastpath=read.flag("PARETOSERVE_ROUTER_FASTPATH", defaults.router_fastpath),
            model_repository=env.get("PARETOSERVE_MODEL_REPOSITORY") or defaults.model_repository,
            model_repository_claim=env.get("PARETOSERVE_MODEL_REPOSITORY_CLAIM") or None,
            model_repository_secret=env.get("PARETOSERVE_MODEL_REPOSITORY_SECRET") or None,
            triton_strict_model_config=read.flag("PARETOSERVE_TRITON_STRICT_MODEL_CONFIG",
                                                 defaults.triton_strict_model_config),
            service_account_name=env.get("PARETOSERVE_WORKER_SERVICE_ACCOUNT") or None,
            automount_service_account_token=read.flag("PARETOSERVE_WORKER_AUTOMOUNT_TOKEN", False),
            tolerations=tuple(read.json_list("PARETOSERVE_TOLERATIONS")),
            node_selector=read.json_object("PARETOSERVE_NODE_SELECTOR"),
            network_policies=read.flag("PARETOSERVE_NETWORK_POLICIES", True),
            client_peers=tuple(read.json_list("PARETOSERVE_CLIENT_PEERS")),
            operator_peers=tuple(read.json_list("PARETOSERVE_OPERATOR_PEERS")),
            prometheus_peers=tuple(read.json_list("PARETOSERVE_PROMETHEUS_PEERS")),
        )
        key = env.get("PARETOSERVE_ADMIN_KEY", "")
        if not key:
            log.warning("PARETOSERVE_ADMIN_KEY is not set: routers' admin tokens change when the operator restarts")
            key = secrets.token_hex(32)
        return cls(
            prometheus_url=env.get("PARETOSERVE_PROMETHEUS_URL") or None,
            prometheus_ca_file=env.get("PARETOSERVE_PROMETHEUS_CA_FILE") or None,
            prometheus_bearer_token=env.get("PARETOSERVE_PROMETHEUS_BEARER_TOKEN") or None,
            tick_seconds=read.number("PARETOSERVE_TICK_SECONDS", 2.0, float, 0.1, 3600),
            metrics_port=read.number("PARETOSERVE_METRICS_PORT", 9090, int, 1, 65535),
            rate_window_seconds=read.number("PARETOSERVE_RATE_WINDOW_SECONDS", 30, int, 1, 3600),
            step_seconds=read.number("PARETOSERVE_STEP_SECONDS", 5, int, 1, 3600),
            peering=env.get("PARETOSERVE_PEERING") or None,
            priority=read.number("PARETOSERVE_PRIORITY", 0, int, -(2**31), 2**31 - 1),
            identity=env.get("POD_ID", ""),
            peering_lifetime_seconds=read.number("PARETOSERVE_PEERING_LIFETIME_SECONDS", 60, int, 1, 3600),
            push_routers=read.flag("PARETOSERVE_PUSH_ROUTERS", True),
            watch_namespaces=tuple(n for n in env.get("PARETOSERVE_WATCH_NAMESPACES", "").split(",") if n),
            adaptation_workers=read.number("PARETOSERVE_ADAPTATION_WORKERS", 4, int, 1, 64),
            admin_key=key.encode(),
            workers=workers,
        )


@dataclass(frozen=True, slots=True)
class _Reader:
    env: Mapping[str, str]

    def number(self, name: str, default: T, kind: Callable[[str], T], low: float, high: float) -> T:
        raw = self.env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
        if not low <= float(value) <= high:  # type: ignore[arg-type]
            raise ConfigError(f"{name}: must be in [{low:g}, {high:g}], got {raw!r}")
        return value

    def quantity(self, name: str, default: str) -> str:
        raw = self.env.get(name) or default
        if not QUANTITY.fullmatch(raw):
            raise ConfigError(f"{name}: not a Kubernetes quantity (e.g. 500m, 1, 128Mi), got {raw!r}")
        return raw

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        raw = self.env.get(name) or default
        if raw not in allowed:
            raise ConfigError(f"{name}: must be one of {', '.join(allowed)}, got {raw!r}")
        return raw

    def flag(self, name: str, default: bool) -> bool:
        raw = self.env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes"):
            return True
        if raw in ("0", "false", "no"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")

    def _json(self, name: str, default: str) -> Any:
        try:
            return json.loads(self.env.get(name) or default)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name}: not JSON: {exc.msg}") from None

    def json_list(self, name: str) -> list[dict[str, Any]]:
        value = self._json(name, "[]")
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{name}: expected a JSON list of objects")
        return value

    def json_object(self, name: str) -> dict[str, str]:
        value = self._json(name, "{}")
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{name}: expected a JSON object of strings")
        return value
