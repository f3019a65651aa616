"""Observations for the control loop on one machine: router and Triton metrics, or a Prometheus server.

`ControlLoop` asks a `MetricsSource` for an `Observed`: the pipeline's request rate, one sample per second
(the predictors need a per-second history), the queueing delay per stage (DiffServe's term that the
planner adds to a stage's latency) and the tightest remaining per-request deadline (Sponge). Locally
there is no Prometheus, so `LocalMetricsSource` scrapes the router's ``/metrics`` once a second in a
thread (counter deltas → rates) and Triton's ``/metrics`` at each observation (queue time per request of
each stage's models since the previous observation). With ``--prometheus URL`` the same three signals
come from PromQL (`PrometheusMetricsSource`), as the operator reads them on a cluster.

Parsing is pure (`parse_router_metrics`, `stage_queue_delays`, `prometheus_*`) and unit-tested on text.
Triton's queue time includes the dynamic-batching wait, which the planner already charges as the batch
formation delay; that configured wait is subtracted so it is not counted twice.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from paretoserve.planner.control import Observed
from paretoserve.workers.triton.control import ModelMetrics, parse_metrics

PIPELINE_REQUESTS = "paretoserve_pipeline_requests"
ROUTER_REQUESTS = "paretoserve_router_requests"
ROUTER_ERRORS = "paretoserve_router_errors"
ROUTER_DEFERRALS = "paretoserve_router_deferrals"
MIN_DEADLINE = "paretoserve_router_min_deadline_remaining_ms"


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
            if sample.name.endswith("_created") or sample.labels.get("pipeline", pipeline) != pipeline:
                continue
            value = float(sample.value)
            if name == PIPELINE_REQUESTS:
                requests += value
            elif name == ROUTER_DEFERRALS:
                deferrals += value
            elif name == ROUTER_ERRORS:
                reason = sample.labels.get("reason", "unknown")
                errors[reason] = errors.get(reason, 0.0) + value
            elif name == ROUTER_REQUESTS:
                key = (sample.labels.get("stage", ""), sample.labels.get("model", ""), sample.labels.get("route", ""))
                routes[key] = routes.get(key, 0.0) + value
            elif name == MIN_DEADLINE and math.isfinite(value):
                deadline = value if deadline is None else min(deadline, value)
    return RouterSnapshot(requests, deadline, deferrals, errors, routes)


def stage_queue_delays(
    before: Mapping[str, ModelMetrics],
    after: Mapping[str, ModelMetrics],
    stage_models: Mapping[str, Sequence[str]],
    batching_delay_ms: Callable[[str], float] = lambda _: 0.0,
) -> dict[str, float]:
    """Per stage, the worst mean Triton queue time (ms per request) of its models between two scrapes.

    Stages whose models served nothing in between are left out (no evidence of queueing).
    """
    delays: dict[str, float] = {}
    for stage, models in stage_models.items():
        worst: float | None = None
        for model in models:
            if model not in after:
                continue
            delta = after[model].since(before[model]) if model in before else after[model]
            if delta.request_success <= 0:
                continue
            queue_ms = delta.queue_duration_us / delta.request_success / 1000.0
            queue_ms = max(0.0, queue_ms - batching_delay_ms(model))
            worst = queue_ms if worst is None else max(worst, queue_ms)
        if worst is not None:
            delays[stage] = round(worst, 3)
    return delays


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
                 batching_delay_ms: Callable[[str], float] = lambda _: 0.0, timeout_s: float = 2.0,
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


# --- Prometheus --------------------------------------------------------------------------------------


def prometheus_range_values(payload: Mapping[str, Any]) -> list[float]:
    """Values of the first series of a ``query_range`` answer, oldest first (pure)."""
    if payload.get("status") != "success":
        raise ValueError(f"prometheus query failed: {payload.get('error', payload.get('status'))}")
    result = payload.get("data", {}).get("result", [])
    if not result:
        return []
    return [float(value) for _, value in result[0].get("values", []) if value not in ("NaN", "+Inf", "-Inf")]


def prometheus_vector(payload: Mapping[str, Any], label: str | None = None) -> dict[str, float]:
    """An instant-vector answer keyed by ``label`` (``""`` for an unlabelled scalar-like result; pure)."""
    if payload.get("status") != "success":
        raise ValueError(f"prometheus query failed: {payload.get('error', payload.get('status'))}")
    out: dict[str, float] = {}
    for series in payload.get("data", {}).get("result", []):
        raw = series.get("value", [0, "NaN"])[1]
        if raw in ("NaN", "+Inf", "-Inf"):
            continue
        key = series.get("metric", {}).get(label, "") if label else ""
        out[key] = float(raw)
    return out


class PrometheusMetricsSource:
    """`MetricsSource` reading the same signals from a Prometheus server that scrapes router and Triton."""

    def __init__(self, url: str, pipeline: str, stage_models: Mapping[str, Sequence[str]], *, window_s: int,
                 timeout_s: float = 5.0, transport: httpx.BaseTransport | None = None) -> None:
        self._url = url.rstrip("/")
        self._pipeline = pipeline
        self._stage_models = {k: list(v) for k, v in stage_models.items()}
        self._window_s = max(1, window_s)
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 2.0)), transport=transport)

    def __enter__(self) -> PrometheusMetricsSource:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._client.close()

    def _get(self, path: str, params: Mapping[str, str | float]) -> dict[str, Any]:
        response = self._client.get(f"{self._url}{path}", params=dict(params))
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def observe(self, now: float) -> Observed:
        selector = f'{{pipeline="{self._pipeline}"}}'
        history = prometheus_range_values(self._get("/api/v1/query_range", {
            "query": f"sum(rate({PIPELINE_REQUESTS}_total{selector}[5s]))",
            "start": now - self._window_s, "end": now, "step": 1}))
        per_model = prometheus_vector(self._get("/api/v1/query", {
            "query": "sum by (model) (rate(nv_inference_queue_duration_us[30s])) / "
                     "sum by (model) (rate(nv_inference_request_success[30s]))", "time": now}), "model")
        queue = {stage: round(max(per_model[m] for m in models if m in per_model) / 1000.0, 3)
                 for stage, models in self._stage_models.items() if any(m in per_model for m in models)}
        deadline = prometheus_vector(self._get("/api/v1/query", {
            "query": f"min({MIN_DEADLINE}{selector})", "time": now}))
        return Observed(load_history=tuple(history), queue_delay_ms=queue,
                        min_remaining_budget_ms=deadline.get(""))
