"""Observations for the control loop on one machine without Prometheus: the router's and Triton's /metrics.

`ControlLoop` asks a `MetricsSource` for an `Observed`: the pipeline's request rate, one sample per second
(the predictors need a per-second history), the queueing delay per stage (DiffServe's term that the
planner adds to a stage's latency) and the tightest remaining per-request deadline (Sponge). Locally
there need not be a Prometheus, so `LocalMetricsSource` (the default of ``paretoserve up``) scrapes the
router's ``/metrics`` once a second in a thread (counter deltas → rates) and Triton's ``/metrics`` at each
observation (queue time per request of each model since the previous observation). With
``--prometheus URL`` the same three signals come from
`paretoserve.workers.observe.prometheus.PrometheusSource`, the reader the operator uses on a cluster.

Parsing is pure (`parse_router_metrics`, `stage_queue_delays`) and unit-tested on text; metric names come
from `paretoserve.workers.observe.contract`, and a stage's delay is the worst of its models'
(`paretoserve.workers.observe.queries.worst_per_stage`, as on the Prometheus path). Triton's queue time
includes the dynamic-batching wait, which the planner already charges as the batch formation delay; that
configured wait is subtracted so it is not counted twice.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import httpx
from prometheus_client.parser import text_string_to_metric_families

from paretoserve.planner.control import MetricsSource, Observed
from paretoserve.workers.observe import contract as c
from paretoserve.workers.observe.queries import BatchingDelay, NoLoadSamples, worst_per_stage
from paretoserve.workers.triton.control import ModelMetrics, parse_metrics


@dataclass(frozen=True)
class RouterSnapshot:
    """The router counters ParetoServe reads, for one pipeline."""

    pipeline_requests: float = 0.0
    min_deadline_ms: float | None = None
    deferrals: float = 0.0
    errors: Mapping[str, float] = field(default_factory=dict)
    """By ``reason``."""
    routes: Mapping[tuple[str, str, str], float] = field(default_factory=dict)
    """By (stage, model, route)."""


def parse_router_metrics(text: str, pipeline: str) -> RouterSnapshot:
    """Pure: the router's exposition text → its counters for ``pipeline`` (other pipelines ignored)."""
    requests = deferrals = 0.0
    deadline: float | None = None
    errors: dict[str, float] = {}
    routes: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        name = family.name.removesuffix("_total")  # untyped exposition keeps the suffix in the family name
        for sample in family.samples:
            if sample.name.endswith("_created") or sample.labels.get(c.PIPELINE, pipeline) != pipeline:
                continue
            value = float(sample.value)
            if name == c.PIPELINE_REQUESTS:
                requests += value
            elif name == c.ROUTER_DEFERRALS:
                deferrals += value
            elif name == c.ROUTER_ERRORS:
                reason = sample.labels.get(c.REASON, "unknown")
                errors[reason] = errors.get(reason, 0.0) + value
            elif name == c.ROUTER_REQUESTS:
                key = (sample.labels.get(c.STAGE, ""), sample.labels.get(c.MODEL, ""), sample.labels.get(c.ROUTE, ""))
                routes[key] = routes.get(key, 0.0) + value
            elif name == c.MIN_DEADLINE_REMAINING and math.isfinite(value):
                deadline = value if deadline is None else min(deadline, value)
    return RouterSnapshot(requests, deadline, deferrals, errors, routes)


def stage_queue_delays(
    before: Mapping[str, ModelMetrics],
    after: Mapping[str, ModelMetrics],
    stage_models: Mapping[str, Sequence[str]],
    batching_delay_ms: BatchingDelay | None = None,
) -> dict[str, float]:
    """Per stage, the worst mean Triton queue time (ms per request) of its models between two scrapes.

    Models that served nothing in between have no mean (no evidence of queueing), so stages whose models
    all served nothing are left out.
    """
    per_model: dict[str, float] = {}
    for model, current in after.items():
        delta = current.since(before[model]) if model in before else current
        if delta.request_success > 0:
            per_model[model] = delta.queue_duration_us / delta.request_success / 1000.0
    return worst_per_stage(per_model, stage_models, batching_delay_ms)


class RateHistory:
    """Per-second rates from successive readings of a counter (resets count from zero)."""

    def __init__(self, window: int) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(1, window))
        self._last: tuple[float, float] | None = None
        self._lock = threading.Lock()

    def push(self, at: float, counter: float) -> float | None:
        """Record a reading; return the rate since the previous one (None for the first)."""
        with self._lock:
            last, self._last = self._last, (at, counter)
            if last is None or at <= last[0]:
                return None
            delta = counter - last[1] if counter >= last[1] else counter  # the router restarted
            rate = delta / (at - last[0])
            self._samples.append((at, rate))
            return rate

    def rates(self) -> tuple[float, ...]:
        with self._lock:
            return tuple(rate for _, rate in self._samples)

    def timeline(self) -> list[tuple[float, float]]:
        with self._lock:
            return list(self._samples)


class LocalMetricsSource:
    """`MetricsSource` scraping the router (every second, in a thread) and Triton (at each observation).

    A context manager: the sampler thread runs inside the ``with`` block. ``observe`` is called from the
    control-loop thread only.
    """

    def __init__(self, pipeline: str, router_metrics_url: str, triton_metrics_url: str,
                 stage_models: Mapping[str, Sequence[str]], *, window_s: int, interval_s: float = 1.0,
                 batching_delay_ms: BatchingDelay | None = None, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.time, transport: httpx.BaseTransport | None = None) -> None:
        self._pipeline = pipeline
        self._router_url = router_metrics_url
        self._triton_url = triton_metrics_url
        self._stage_models = {k: list(v) for k, v in stage_models.items()}
        self._interval_s = interval_s
        self._batching_delay_ms = batching_delay_ms
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 1.0))
        self._clock = clock
        self.history = RateHistory(window_s)
        self.router: RouterSnapshot = RouterSnapshot()
        self.scrape_failures = 0
        self._triton_before: dict[str, ModelMetrics] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_forever, name="paretoserve-metrics", daemon=True)
        # One client per thread: the sampler thread scrapes the router, the loop thread scrapes Triton.
        self._router_client = httpx.Client(timeout=self._timeout, transport=transport)
        self._triton_client = httpx.Client(timeout=self._timeout, transport=transport)

    def __enter__(self) -> LocalMetricsSource:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._router_client.close()
        self._triton_client.close()

    def sample_once(self) -> float | None:
        """Scrape the router once; return the request rate since the previous sample (None: first or failed)."""
        try:
            response = self._router_client.get(self._router_url)
            response.raise_for_status()
            self.router = parse_router_metrics(response.text, self._pipeline)
        except (httpx.HTTPError, ValueError):
            self.scrape_failures += 1
            return None
        return self.history.push(self._clock(), self.router.pipeline_requests)

    def _sample_forever(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.sample_once()
            next_at += self._interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def observe(self, now: float) -> Observed:
        queue: dict[str, float] = {}
        try:
            response = self._triton_client.get(self._triton_url)
            response.raise_for_status()
            after = parse_metrics(response.text)
            queue = stage_queue_delays(self._triton_before, after, self._stage_models, self._batching_delay_ms)
            self._triton_before = after
        except (httpx.HTTPError, ValueError):
            self.scrape_failures += 1
        return Observed(load_history=self.history.rates(), queue_delay_ms=queue,
                        min_remaining_budget_ms=self.router.min_deadline_ms)


class PrometheusWarmup:
    """``paretoserve up --prometheus``: no load, rather than an error, until Prometheus has the router's rate.

    The router starts seconds before the first loop tick and ``rate()`` needs two scrapes of it, so at
    first Prometheus has no request-rate samples for the pipeline (`NoLoadSamples`). Until its first
    samples, or for ``grace_s`` after the first observation, that is an empty history (the first plan is in
    force before any traffic, as with `LocalMetricsSource` before its second scrape); afterwards it is an
    error again, which the loop runner logs (e.g. a scrape config without the static ``pipeline`` label).
    Every other `MetricsUnavailable` (unreachable server, error answer) is an error from the start.
    """

    def __init__(self, source: MetricsSource, log: Callable[[str], None], *, grace_s: float = 60.0) -> None:
        self._source = source
        self._log = log
        self._grace_s = grace_s
        self._until: float | None = None
        self._seen = False

    def observe(self, now: float) -> Observed:
        if self._until is None:
            self._until = now + self._grace_s
        try:
            observed = self._source.observe(now)
        except NoLoadSamples as exc:
            if self._seen or now > self._until:
                raise
            self._log(f"{exc}; planning for no load until Prometheus has scraped the router twice")
            return Observed(load_history=())
        self._seen = True
        return observed
