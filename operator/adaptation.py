"""The adaptation loop of the operator: one background thread over all known pipelines.

Each due pipeline is adapted by a worker of a small pool, one at a time per pipeline, and any failure (a
solver error, a bad status, a slow push) stays with that pipeline: it is reported in its Degraded condition
and the others keep their intervals.

Why not a kopf timer: kopf puts a finalizer on every object that has a timer or daemon, so while the
operator is down nothing it manages can be deleted, and namespaces hang in Terminating. Instead a
watching handler (no finalizer) keeps `PipelineRegistry` current, and `AdaptationLoop` wakes every tick,
adapts each pipeline whose `spec.adaptation.intervalSeconds` is due (state in its status, so restarts
resume), and writes the status through the gateway.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from paretoserve.operator import pipeline_steps
from paretoserve.operator.config import OperatorConfig
from paretoserve.operator.k8s.gateway import Gateway, GatewayError
from paretoserve.operator.peering import is_active_peer
from paretoserve.operator.router_push import RouterPusher
from paretoserve.operator.status import adaptation_failed, due, read_status
from paretoserve.planner.control import MetricsSource
from paretoserve.planner.spec import ServingPipeline
from paretoserve.workers.observe.prometheus import PrometheusSource
from paretoserve.workers.plan_rendering import stage_models

log = logging.getLogger("paretoserve.operator.adaptation")


@dataclass
class PipelineRegistry:
    """The latest body of every ServingPipeline, fed by watch events."""

    _bodies: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, event_type: str | None, body: dict[str, Any]) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        with self._lock:
            if event_type == "DELETED" or body["metadata"].get("deletionTimestamp"):
                self._bodies.pop(key, None)
            else:
                self._bodies[key] = body

    def merge_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        with self._lock:
            body = self._bodies.get((namespace, name))
            if body is not None:
                body["status"] = {**(body.get("status") or {}), **status}

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(b) for b in self._bodies.values()]


def prometheus_client(config: OperatorConfig) -> httpx.Client:
    """The one HTTP client for Prometheus: TLS verified (the chart's CA bundle, else the system's), the
    bearer token from a Secret when one is configured."""
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=config.prometheus_ca_file) \
        if config.prometheus_ca_file else True
    headers = {"Authorization": f"Bearer {config.prometheus_bearer_token}"} if config.prometheus_bearer_token else {}
    return httpx.Client(timeout=httpx.Timeout(5.0, connect=2.0), verify=verify, headers=headers)


def prometheus_sources(config: OperatorConfig, client: httpx.Client) -> pipeline_steps.SourceFor:
    """Each pipeline's Prometheus source (one shared HTTP client), or None without a Prometheus URL."""
    url = config.prometheus_url
    if url is None:
        raise ValueError("prometheus_sources: no Prometheus URL configured")

    def source(namespace: str, pipeline: ServingPipeline) -> MetricsSource:
        return PrometheusSource(url, pipeline.metadata.name, namespace=namespace,
                                stage_models=stage_models(pipeline.spec),
                                window_s=pipeline.spec.adaptation.predictor.window_seconds,
                                step_s=config.step_seconds, rate_window_s=config.rate_window_seconds, client=client)

    return source


@dataclass
class AdaptationLoop:
    registry: PipelineRegistry
    gateway: Gateway
    sources: pipeline_steps.SourceFor | None
    config: OperatorConfig
    clock: Callable[[], float] = time.time
    pusher: RouterPusher | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _in_flight: set[tuple[str, str]] = field(default_factory=set)
    _checked: dict[tuple[str, str], float] = field(default_factory=dict)
    """When each pipeline's last load check held its plan (kept here, not written to its status: a check
    that changes nothing writes nothing; after a restart a pipeline is just checked once more)."""
    _pool: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.config.adaptation_workers,
                                        thread_name_prefix="paretoserve-adapt")

    def active(self) -> bool:
        """With peering, only the active kopf peer adapts (a stand-by's kopf handlers are paused too)."""
        if not self.config.peering:
            return True
        try:
            peering = self.gateway.get_cluster_object("ClusterKopfPeering", self.config.peering)
        except GatewayError as exc:
            log.warning("cannot read peering %s: %s", self.config.peering, exc)
            return False
        return is_active_peer(peering.get("status") or {}, self.config.identity, self.config.priority,
                              now=self.clock())

    def tick(self) -> int:
        """Hand every due pipeline to a worker (if this process is the active peer); returns how many.

        A pipeline whose previous adaptation still runs is skipped, so a slow one (a long solve, a stalled
        push) occupies one worker and delays nobody else's interval."""
        if not self.active():
            return 0
        submitted = 0
        bodies = self.registry.snapshot()
        with self._lock:  # forget the checks of deleted pipelines
            known = {(b["metadata"]["namespace"], b["metadata"]["name"]) for b in bodies}
            self._checked = {k: t for k, t in self._checked.items() if k in known}
        for body in bodies:
            now = self.clock()
            pipeline = pipeline_steps.parse_or_none(body)
            key = (body["metadata"]["namespace"], body["metadata"]["name"])
            if pipeline is None or not due(read_status(body), pipeline, now=now, last_check=self._checked.get(key)):
                continue
            with self._lock:
                if key in self._in_flight:
                    continue
                self._in_flight.add(key)
            self._pool.submit(self._adapt_one, body, pipeline, now)
            submitted += 1
        return submitted

    def _adapt_one(self, body: dict[str, Any], pipeline: ServingPipeline, now: float) -> None:
        """One pipeline's step; any failure stays with this pipeline (Degraded), never reaches the others."""
        meta = body["metadata"]
        try:
            update = pipeline_steps.adapt(self.gateway, self.sources, self.config, body, pipeline, now=now,
                                          pusher=self.pusher)
            if update.checked_only:
                with self._lock:
                    self._checked[(meta["namespace"], meta["name"])] = now
                return
            update.status.setdefault("policyState", {})["adaptedBy"] = self.config.identity
            # the loop adapts only a reconciled generation (`due`), so it never needs to write observedGeneration;
            # a step that overlapped a spec update and wrote it after the spec handler did would set it back and
            # keep the pipeline "not reconciled" (never due again) for good
            update.status.pop("observedGeneration", None)
            self._write(body, update.status)
            if update.event:
                self.gateway.post_event(body, "Adapted", update.event)
        except GatewayError as exc:
            log.warning("adapting %s/%s failed: %s", meta["namespace"], meta["name"], exc)
        except Exception as exc:  # noqa: BLE001 - one pipeline's bug must not stop the others
            log.exception("adapting %s/%s failed", meta["namespace"], meta["name"])
            try:
                self._write(body, adaptation_failed(read_status(body), f"{type(exc).__name__}: {exc}", now=now))
            except GatewayError as write_error:
                log.warning("cannot report the failure of %s/%s: %s", meta["namespace"], meta["name"], write_error)
        finally:
            with self._lock:
                self._in_flight.discard((meta["namespace"], meta["name"]))

    def _write(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.gateway.patch_status(meta["namespace"], meta["name"], status)
        self.registry.merge_status(meta["namespace"], meta["name"], status)

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Block until no adaptation is in flight (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._in_flight:
                    return True
            time.sleep(0.005)
        return False

    def _run(self) -> None:
        while not self._stop.wait(self.config.tick_seconds):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the loop must survive any single failure
                log.exception("adaptation tick failed")

    def start(self) -> AdaptationLoop:
        self._thread = threading.Thread(target=self._run, name="paretoserve-adaptation", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=False, cancel_futures=True)
