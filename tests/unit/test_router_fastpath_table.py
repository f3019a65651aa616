"""The router's side of the compiled fast path, pure parts: the table it publishes, the counters it folds in.

The binary itself is driven end to end against a real Triton in ``tests/integration/test_router_fastpath.py``.
"""

from __future__ import annotations

import math

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from paretoserve.workers.router.config import parse_config
from paretoserve.workers.router.fastpath import FastPathStats, ModelFigures, fastpath_table, min_remaining, stats_delta
from paretoserve.workers.router.limits import RequestLimits
from paretoserve.workers.router.metrics import LATENCY_BUCKETS, PROXY_STAGE, RouterMetrics

CONFIG = {
    "pipeline": "digits",
    "stages": [{"name": "classify", "variants": {"light": 1}}],
    "upstreams": {"light": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"], "secure": ["https://10.0.0.3:8443"]},
    "sloMs": 250,
    "queue": {"concurrency": 8, "maxSize": 32},
    "timeouts": {"connectMs": 200, "readMs": 1500, "defaultDeadlineMs": 100},
}


def test_the_table_is_the_config_and_limits_the_python_side_applies() -> None:
    config = parse_config(CONFIG)
    limits = RequestLimits(max_body_bytes=1024, max_requests_per_connection=7, max_deadline_ms=9000.0)
    table = fastpath_table(config, limits)
    # https replicas stay with the Python side (the fast path speaks plain HTTP); the pipeline's name too
    assert table["models"] == {"light": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]}
    assert table["pipeline"] == "digits"
    assert table["max_deadline_ms"] == 250  # the SLO caps the header, as parse_deadline_ms is given it
    assert table["default_deadline_ms"] == 100
    assert (table["queue_concurrency"], table["queue_max_size"]) == (8, 32)
    assert (table["connect_ms"], table["read_ms"]) == (200, 1500)
    assert (table["max_body_bytes"], table["max_requests_per_connection"]) == (1024, 7)
    assert table["deadline_header"] == config.deadline_header.lower()
    without_slo = fastpath_table(parse_config({**CONFIG, "sloMs": None}), limits)
    assert without_slo["max_deadline_ms"] == 9000.0
    orjson.dumps(table)  # what is sent: plain JSON


def test_the_pipelines_own_name_is_never_in_the_table() -> None:
    config = parse_config({**CONFIG, "pipeline": "light"})
    assert "light" not in fastpath_table(config, RequestLimits())["models"]


def _snapshot(rows: int, buckets: list[int], seconds: float, errors: int, failures: int, queue: int,
              remaining: float | None) -> FastPathStats:
    return FastPathStats.parse(orjson.dumps({
        "proxied": {"light": {"rows": rows, "duration": {"buckets": buckets, "sum": seconds, "count": sum(buckets)}}},
        "errors": {"deadline_exceeded": errors}, "upstream_failures": {"light": {"upstream_unavailable": failures}},
        "queue_length": queue, "in_flight": 0, "min_deadline_remaining_ms": remaining, "requests": rows,
        "fallback_requests": 0}))


def test_deltas_between_snapshots_and_the_latest_gauges() -> None:
    width = len(LATENCY_BUCKETS)
    first = _snapshot(10, [4, 6] + [0] * (width - 2), 0.004, 1, 2, 3, 12.5)
    second = _snapshot(25, [4, 16, 5] + [0] * (width - 3), 0.020, 4, 2, 0, None)
    delta = stats_delta(first, second)
    assert delta.proxied["light"] == ModelFigures(15, (0, 10, 5) + (0,) * (width - 3), pytest.approx(0.016))
    assert delta.errors == {"deadline_exceeded": 3}
    assert delta.upstream_failures == {("light", "upstream_unavailable"): 0}
    assert (delta.queue_length, delta.min_deadline_remaining_ms) == (0, None)
    assert stats_delta(FastPathStats(), first).proxied["light"].rows == 10  # a model seen for the first time


def test_folded_observations_render_as_if_observed_here() -> None:
    """What the fast path timed lands in the same histogram series as the Python proxy's own calls."""
    values = [0.0003, 0.0004, 0.0015, 0.004, 0.2, 30.0]
    observed, folded = CollectorRegistry(), CollectorRegistry()
    direct = RouterMetrics("digits", observed, lambda: (0, None))
    for value in values:
        direct.call(PROXY_STAGE, "light", value)
    counts = [0] * len(LATENCY_BUCKETS)
    for value in values:
        counts[next(i for i, bound in enumerate(LATENCY_BUCKETS) if value <= bound)] += 1
    RouterMetrics("digits", folded, lambda: (0, None)).add_observations(PROXY_STAGE, "light", tuple(counts),
                                                                       sum(values))

    def series(registry: CollectorRegistry) -> list[str]:
        return [line for line in generate_latest(registry).decode().splitlines()
                if line.startswith("paretoserve_router_request_duration_seconds") and "_created" not in line]

    assert series(folded) == series(observed)
    assert any('le="+Inf"' in line and line.endswith(" 6.0") for line in series(folded))
    with pytest.raises(ValueError, match="bucket counts"):
        RouterMetrics("x", CollectorRegistry(), lambda: (0, None)).add_observations(PROXY_STAGE, "m", (1, 2), 0.1)


def test_the_tightest_known_deadline_wins() -> None:
    assert min_remaining(None, 5.0, 3.0) == 3.0
    assert min_remaining(None, None) is None
    assert min_remaining(math.nan, 2.0) == 2.0
