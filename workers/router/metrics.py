"""The router's Prometheus metrics: a contract with the operator and the Grafana dashboard.

Names and labels are fixed (the names are `paretoserve.workers.observe.contract`'s constants: the control
loop's Prometheus queries and ``charts/.../grafana-dashboard.json`` read them; the scrape configuration
adds ``namespace``)::

    paretoserve_pipeline_requests_total{pipeline}                     requests entering the pipeline
    paretoserve_pipeline_request_duration_seconds{pipeline}           end to end, errors included
    paretoserve_router_requests_total{pipeline,stage,model,route}     rows answered, by how (Route)
    paretoserve_router_deferrals_total{pipeline,stage}                rows deferred light -> heavy
    paretoserve_router_fallbacks_total{pipeline,stage}                rows answered by a fallback
    paretoserve_router_errors_total{pipeline,stage,reason}            requests answered with an error
    paretoserve_router_request_duration_seconds{pipeline,stage,model} each upstream call, queueing included
    paretoserve_router_upstream_failures_total{pipeline,model,reason} failed attempts, retried or not
    paretoserve_router_queue_length{pipeline}                         calls waiting in the EDF queue
    paretoserve_router_min_deadline_remaining_ms{pipeline}            tightest remaining deadline (ms)
    paretoserve_router_ttft_seconds{pipeline,model}                   generation: request received -> 1st token sent
    paretoserve_router_inter_token_seconds{pipeline,model}            generation: between two tokens sent

``requests``, ``deferrals`` and ``fallbacks`` count *rows* (images) of a stage, so
``deferrals / requests`` is the deferred share f(t) whatever the batch size; pipeline-level
requests and errors count HTTP requests. Errors that are not tied to a stage use ``stage="-"``;
the transparent model proxy uses ``stage="proxy"``. The two gauges are computed at scrape time by
a collector (no per-request gauge updates); the deadline gauge covers the requests the router is
serving (queued or in flight) and is absent when none has a deadline. Everything registers in
the registry passed in, so tests use a fresh ``CollectorRegistry`` each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from paretoserve.workers.observe import contract as c

NO_STAGE = c.NO_STAGE
PROXY_STAGE = c.PROXY_STAGE
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf,
)

TOKEN_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, math.inf,
)
"""Token latencies (the generation endpoints, :mod:`.streaming`): finer at the low end than :data:`LATENCY_BUCKETS`."""

QueueProbe = Callable[[], tuple[int, float | None]]
"""Returns ``(queue length, min remaining deadline in ms or None)`` at scrape time."""


class _QueueCollector(Collector):
    def __init__(self, pipeline: str, probe: QueueProbe) -> None:
        self._pipeline = pipeline
        self._probe = probe

    def collect(self) -> Iterable[Metric]:
        length, remaining_ms = self._probe()
        queue = GaugeMetricFamily(
            c.ROUTER_QUEUE_LENGTH, "Upstream calls waiting in the EDF queue.", labels=[c.PIPELINE]
        )
        queue.add_metric([self._pipeline], float(length))
        yield queue
        deadline = GaugeMetricFamily(
            c.MIN_DEADLINE_REMAINING,
            "Milliseconds left to the tightest deadline among the requests the router is serving.",
            labels=[c.PIPELINE],
        )
        if remaining_ms is not None:
            deadline.add_metric([self._pipeline], remaining_ms)
        yield deadline


class RouterMetrics:
    """Every router metric for one pipeline, with label children cached for the hot path."""

    def __init__(self, pipeline: str, registry: CollectorRegistry, probe: QueueProbe) -> None:
        self.pipeline = pipeline
        self.pipeline_requests = Counter(
            c.PIPELINE_REQUESTS, "Requests entering the pipeline.", [c.PIPELINE], registry=registry
        )
        self.pipeline_duration = Histogram(
            c.PIPELINE_REQUEST_DURATION, "End-to-end pipeline request duration.",
            [c.PIPELINE], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.requests = Counter(
            c.ROUTER_REQUESTS, "Rows answered per stage, model and route.",
            [c.PIPELINE, c.STAGE, c.MODEL, c.ROUTE], registry=registry,
        )
        self.deferrals = Counter(
            c.ROUTER_DEFERRALS, "Rows the cascade deferred from the light to the heavy model.",
            [c.PIPELINE, c.STAGE], registry=registry,
        )
        self.fallbacks = Counter(
            c.ROUTER_FALLBACKS, "Rows answered by a fallback model after a backend failure.",
            [c.PIPELINE, c.STAGE], registry=registry,
        )
        self.errors = Counter(
            c.ROUTER_ERRORS, "Requests answered with an explicit error.",
            [c.PIPELINE, c.STAGE, c.REASON], registry=registry,
        )
        self.call_duration = Histogram(
            c.ROUTER_REQUEST_DURATION, "Duration of one upstream call, EDF queueing included.",
            [c.PIPELINE, c.STAGE, c.MODEL], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.upstream_failures = Counter(
            c.ROUTER_UPSTREAM_FAILURES, "Failed upstream attempts (retried or not).",
            [c.PIPELINE, c.MODEL, c.REASON], registry=registry,
        )
        self.ttft = Histogram(
            c.ROUTER_TTFT, "Generation: time from receiving the request to sending its first token to the client.",
            [c.PIPELINE, c.MODEL], buckets=TOKEN_BUCKETS, registry=registry,
        )
        self.inter_token = Histogram(
            c.ROUTER_INTER_TOKEN, "Generation: time between two consecutive tokens sent to the client.",
            [c.PIPELINE, c.MODEL], buckets=TOKEN_BUCKETS, registry=registry,
        )
        registry.register(_QueueCollector(pipeline, probe))
        self._pipeline_requests = self.pipeline_requests.labels(pipeline)
        self._pipeline_duration = self.pipeline_duration.labels(pipeline)
        self._rows: dict[tuple[str, str, str], Counter] = {}
        self._calls: dict[tuple[str, str], Histogram] = {}

    def request_started(self) -> None:
        self._pipeline_requests.inc()

    def request_finished(self, seconds: float) -> None:
        self._pipeline_duration.observe(seconds)

    def rows(self, stage: str, model: str, route: str, count: int = 1) -> None:
        key = (stage, model, route)
        child = self._rows.get(key)
        if child is None:
            child = self._rows[key] = self.requests.labels(self.pipeline, stage, model, route)
        child.inc(count)

    def call(self, stage: str, model: str, seconds: float) -> None:
        key = (stage, model)
        child = self._calls.get(key)
        if child is None:
            child = self._calls[key] = self.call_duration.labels(self.pipeline, stage, model)
        child.observe(seconds)

    def add_observations(self, stage: str, model: str, buckets: tuple[int, ...], seconds: float) -> None:
        """Calls timed elsewhere (the compiled fast path, :mod:`.fastpath`): ``buckets`` counts per bucket of
        :data:`LATENCY_BUCKETS` (not cumulative), ``seconds`` their sum. prometheus_client has no public way to
        add a histogram's counts in bulk; its children keep one non-cumulative value per bucket and a sum."""
        if len(buckets) != len(LATENCY_BUCKETS):
            raise ValueError(f"{len(buckets)} bucket counts for {len(LATENCY_BUCKETS)} buckets")
        key = (stage, model)
        child = self._calls.get(key)
        if child is None:
            child = self._calls[key] = self.call_duration.labels(self.pipeline, stage, model)
        for value, count in zip(child._buckets, buckets, strict=True):
            if count:
                value.inc(count)
        child._sum.inc(seconds)

    def token_histograms(self, model: str) -> tuple[Histogram, Histogram]:
        """The (TTFT, inter-token) histogram children of ``model``."""
        return self.ttft.labels(self.pipeline, model), self.inter_token.labels(self.pipeline, model)

    def deferred(self, stage: str, count: int) -> None:
        self.deferrals.labels(self.pipeline, stage).inc(count)

    def fell_back(self, stage: str, count: int) -> None:
        self.fallbacks.labels(self.pipeline, stage).inc(count)

    def error(self, stage: str | None, reason: str, count: int = 1) -> None:
        self.errors.labels(self.pipeline, stage or NO_STAGE, reason).inc(count)

    def upstream_failure(self, model: str, reason: str, count: int = 1) -> None:
        self.upstream_failures.labels(self.pipeline, model, reason).inc(count)
