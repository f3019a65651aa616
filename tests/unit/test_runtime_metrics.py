"""Metrics text -> `Observed` without Prometheus: the router's contract, Triton's queue time per stage; and the
warm-up of `paretoserve up --prometheus` (the Prometheus reader itself: tests/unit/test_observe.py)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from paretoserve.planner.control import Observed
from paretoserve.workers.observe.queries import MetricsUnavailable, NoLoadSamples
from paretoserve.workers.router.metrics import RouterMetrics
from paretoserve.workers.runtime.metrics import (
    LocalMetricsSource,
    PrometheusWarmup,
    RateHistory,
    RouterSnapshot,
    parse_router_metrics,
    stage_queue_delays,
)
from paretoserve.workers.triton.control import parse_metrics

FIXTURE = Path(__file__).parent / "fixtures" / "triton_metrics_2.51.txt"


def router_text(requests: int, *, deadline_ms: float | None = None, pipeline: str = "digits") -> str:
    """Exposition text produced by the router's own metrics code (the contract, not a copy of it)."""
    registry = CollectorRegistry()
    metrics = RouterMetrics(pipeline, registry, lambda: (0, deadline_ms))
    for _ in range(requests):
        metrics.request_started()
    metrics.rows("classify", "tiny_linear", "light", 3)
    metrics.rows("classify", "cnn_large", "heavy", 2)
    metrics.deferred("classify", 2)
    metrics.error("classify", "upstream_timeout")
    return generate_latest(registry).decode()


def test_router_metrics_from_the_routers_own_exposition() -> None:
    snapshot = parse_router_metrics(router_text(7, deadline_ms=42.5), "digits")
    assert snapshot.pipeline_requests == 7
    assert snapshot.min_deadline_ms == 42.5
    assert snapshot.deferrals == 2
    assert snapshot.errors == {"upstream_timeout": 1}
    assert snapshot.routes == {("classify", "tiny_linear", "light"): 3, ("classify", "cnn_large", "heavy"): 2}


def test_router_metrics_ignore_other_pipelines_and_absent_gauges() -> None:
    text = router_text(5, pipeline="other") + router_text(2).split("# HELP", 1)[0]
    assert parse_router_metrics(text, "digits").pipeline_requests == 0
    assert parse_router_metrics(router_text(3), "digits").min_deadline_ms is None


def test_untyped_counters_keep_their_suffix_and_still_parse() -> None:
    text = 'paretoserve_pipeline_requests_total{pipeline="digits"} 11\n'
    assert parse_router_metrics(text, "digits").pipeline_requests == 11


def _triton(queue_us: float, success: float, model: str = "tiny_linear") -> str:
    return (f'nv_inference_request_success{{model="{model}",version="1"}} {success}\n'
            f'nv_inference_queue_duration_us{{model="{model}",version="1"}} {queue_us}\n')


def test_stage_queue_delay_is_the_worst_models_mean_queue_time_since_the_last_scrape() -> None:
    before = parse_metrics(_triton(1000, 10) + _triton(0, 0, "cnn_large"))
    after = parse_metrics(_triton(5000, 20) + _triton(30000, 5, "cnn_large"))
    stages = {"classify": ["tiny_linear", "cnn_large"], "idle": ["mlp_small"]}
    assert stage_queue_delays(before, after, stages) == {"classify": 6.0}  # cnn_large: 30 ms / 5 requests
    # the configured batching wait is the planner's batch-formation delay, not queueing
    assert stage_queue_delays(before, after, stages, lambda m: 5.0 if m == "cnn_large" else 0.0) == {"classify": 1.0}
    assert stage_queue_delays(after, after, stages) == {}  # nothing served: no evidence


def test_queue_delay_from_the_real_triton_fixture() -> None:
    metrics = parse_metrics(FIXTURE.read_text())
    delays = stage_queue_delays({}, metrics, {"classify": ["tiny_linear", "cnn_large"]})
    assert delays["classify"] == pytest.approx(165065 / 440 / 1000, abs=1e-3)


def test_rate_history_is_per_second_and_survives_a_counter_reset() -> None:
    history = RateHistory(window=3)
    assert history.push(10.0, 100) is None
    assert history.push(11.0, 120) == 20
    assert history.push(13.0, 160) == 20  # two seconds, 40 requests
    assert history.push(14.0, 5) == 5  # the router restarted
    assert history.push(15.0, 15) == 10
    assert history.rates() == (20, 5, 10)  # the window keeps the newest three
    assert [t for t, _ in history.timeline()] == [13.0, 14.0, 15.0]


class Responses:
    """A MockTransport handler serving successive texts per URL."""

    def __init__(self, texts: dict[str, list[str]]) -> None:
        self.texts = texts

    def __call__(self, request: httpx.Request) -> httpx.Response:
        queue = self.texts[str(request.url)]
        return httpx.Response(200, text=queue.pop(0) if len(queue) > 1 else queue[0])


def test_local_source_turns_scrapes_into_an_observation() -> None:
    router, triton = "http://router/metrics", "http://triton/metrics"
    responses = Responses({router: [router_text(0), router_text(5, deadline_ms=30.0), router_text(15)],
                           triton: [_triton(0, 0), _triton(8000, 4)]})
    times = iter([100.0, 101.0, 102.0])
    source = LocalMetricsSource("digits", router, triton, {"classify": ["tiny_linear"]}, window_s=10,
                                clock=lambda: next(times), transport=httpx.MockTransport(responses))
    assert source.sample_once() is None
    assert source.sample_once() == 5.0
    assert source.observe(102.5) == Observed(load_history=(5.0,), queue_delay_ms={}, min_remaining_budget_ms=30.0)
    assert source.sample_once() == 10.0
    observed = source.observe(103.0)
    assert observed.load_history == (5.0, 10.0)
    assert observed.queue_delay_ms == {"classify": 2.0}
    assert observed.min_remaining_budget_ms is None
    source.__exit__(None, None, None)


def test_local_source_samples_in_a_thread_while_entered() -> None:
    responses = Responses({"http://r/metrics": [router_text(1), router_text(2), router_text(3)]})
    source = LocalMetricsSource("digits", "http://r/metrics", "http://t/metrics", {}, window_s=5,
                                interval_s=0.01, transport=httpx.MockTransport(responses))
    with source:
        for _ in range(2000):  # a guard against hanging, not a timing assertion
            if len(source.history.rates()) >= 2:
                break
            time.sleep(0.005)
    assert len(source.history.rates()) >= 2 and all(rate > 0 for rate in source.history.rates()[:2])
    assert not source._thread.is_alive()


def test_local_source_counts_failed_scrapes() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    source = LocalMetricsSource("digits", "http://r/metrics", "http://t/metrics", {}, window_s=5,
                                transport=httpx.MockTransport(down))
    assert source.sample_once() is None
    assert source.observe(0.0) == Observed(load_history=())
    assert source.scrape_failures == 2
    source.__exit__(None, None, None)


class Scripted:
    """A MetricsSource answering (or raising) from a script, one entry per observation."""

    def __init__(self, *script: Observed | Exception) -> None:
        self.script = list(script)

    def observe(self, now: float) -> Observed:
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def test_prometheus_warmup_plans_for_no_load_until_the_first_samples() -> None:
    seen = Observed(load_history=(4.0,))
    logged: list[str] = []
    warmup = PrometheusWarmup(Scripted(NoLoadSamples("no request-rate samples"), seen, NoLoadSamples("gone")),
                              logged.append)
    assert warmup.observe(100.0) == Observed(load_history=())
    assert logged and "no request-rate samples" in logged[0]
    assert warmup.observe(101.0) == seen
    with pytest.raises(NoLoadSamples, match="gone"):  # after data was seen, missing data is an error again
        warmup.observe(102.0)


def test_prometheus_warmup_has_a_grace_period_and_never_hides_other_failures() -> None:
    warmup = PrometheusWarmup(Scripted(NoLoadSamples("a"), NoLoadSamples("b")), lambda _: None, grace_s=30.0)
    assert warmup.observe(100.0) == Observed(load_history=())
    with pytest.raises(NoLoadSamples, match="b"):  # e.g. the scrape config lacks the `pipeline` label
        warmup.observe(131.0)
    down = PrometheusWarmup(Scripted(MetricsUnavailable("Prometheus at http://p: ConnectError")), lambda _: None)
    with pytest.raises(MetricsUnavailable, match="ConnectError"):
        down.observe(100.0)


def test_snapshot_defaults() -> None:
    assert RouterSnapshot().pipeline_requests == 0 and RouterSnapshot().min_deadline_ms is None
