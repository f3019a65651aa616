"""Observations for the adaptation loop, read from Prometheus with prometheus-api-client.

What the loop needs per pipeline: the recent request rate (one sample per second over the predictor's
window), the queueing delay Triton reports per stage, and the tightest remaining per-request deadline
the routers see (dynamic SLOs). The PromQL and the parsing of its answers are pure functions, tested
without a server; `PrometheusSource` is the thin I/O edge. Any failure to read becomes
`MetricsUnavailable`, which the handler turns into the MetricsUnavailable condition while the last plan
stays applied.

Metric contract (exposed by the router sidecar and Triton, labelled with the pod's pipeline and stage by
the scrape configuration in the Helm chart):
- `paretoserve_pipeline_requests_total{namespace, pipeline}`: requests entering the pipeline;
- `nv_inference_queue_duration_us`, `nv_inference_request_success` `{namespace, pipeline, stage}`;
- `paretoserve_router_min_deadline_remaining_ms{namespace, pipeline}`: the tightest queued deadline.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_api_client import PrometheusConnect

from paretoserve.planner.control import Observed


class MetricsUnavailable(RuntimeError):
    """Prometheus could not be read, or has no data for the pipeline yet."""


def _selector(namespace: str, pipeline: str) -> str:
    return f'namespace="{namespace}",pipeline="{pipeline}"'


def load_query(namespace: str, pipeline: str, rate_window_s: int) -> str:
    return f"sum(rate(paretoserve_pipeline_requests_total{{{_selector(namespace, pipeline)}}}[{rate_window_s}s]))"


def queue_delay_query(namespace: str, pipeline: str, rate_window_s: int) -> str:
    sel = _selector(namespace, pipeline)
    return (f"sum by (stage) (rate(nv_inference_queue_duration_us{{{sel}}}[{rate_window_s}s])) / "
            f"sum by (stage) (rate(nv_inference_request_success{{{sel}}}[{rate_window_s}s])) / 1000")


def deadline_query(namespace: str, pipeline: str) -> str:
    return f"min(paretoserve_router_min_deadline_remaining_ms{{{_selector(namespace, pipeline)}}})"


def history_from_range(result: Sequence[dict[str, Any]], *, step_s: int, window_s: int) -> tuple[float, ...]:
    """Per-second samples from a range query: each step's value repeated `step_s` times, newest last."""
    if not result:
        return ()
    samples: list[float] = []
    for _, value in result[0].get("values", []):
        rate = float(value)
        samples.extend([rate if rate == rate else 0.0] * step_s)  # NaN (no data) counts as no load
    return tuple(samples[-window_s:])


def by_stage(result: Sequence[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for series in result:
        stage = series.get("metric", {}).get("stage")
        value = float(series.get("value", [0, "nan"])[1])
        if stage and value == value:
            out[stage] = value
    return out


def scalar(result: Sequence[dict[str, Any]]) -> float | None:
    if not result:
        return None
    value = float(result[0].get("value", [0, "nan"])[1])
    return value if value == value else None


@dataclass
class PrometheusSource:
    url: str
    timeout_s: int = 5
    step_s: int = 5
    rate_window_s: int = 30

    def __post_init__(self) -> None:
        self._prom = PrometheusConnect(url=self.url, disable_ssl=True, timeout=self.timeout_s)

    def observe(self, namespace: str, pipeline: str, *, window_s: int, now: float) -> Observed:
        end = dt.datetime.fromtimestamp(now, tz=dt.UTC)
        start = end - dt.timedelta(seconds=max(window_s, self.step_s))
        try:
            loads = self._prom.custom_query_range(load_query(namespace, pipeline, self.rate_window_s),
                                                  start_time=start, end_time=end, step=f"{self.step_s}s")
            delays = self._prom.custom_query(queue_delay_query(namespace, pipeline, self.rate_window_s))
            deadline = self._prom.custom_query(deadline_query(namespace, pipeline))
        except Exception as exc:  # noqa: BLE001 - requests/urllib3/JSON errors all mean "no metrics"
            raise MetricsUnavailable(f"Prometheus at {self.url}: {type(exc).__name__}: {exc}") from exc
        history = history_from_range(loads, step_s=self.step_s, window_s=window_s)
        if not history:
            raise MetricsUnavailable(f"no request-rate samples for {namespace}/{pipeline} yet")
        return Observed(load_history=history, queue_delay_ms=by_stage(delays),
                        min_remaining_budget_ms=scalar(deadline))
