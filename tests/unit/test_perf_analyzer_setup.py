"""perf_analyzer as the router benchmark's load generator: reading its report, and refusing ambiguous loads."""

from __future__ import annotations

import pytest

from paretoserve.research.benchmarks.perf_analyzer import PerfAnalyzer, measure, read_report

# perf_analyzer 2.60.0's `-f` CSV, as written against the router (times in microseconds)
REPORT = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "1,1121.3,44,355,1,0,482,0,0,828,971,1036,1383\n"
)


def test_the_report_gives_throughput_and_percentiles_in_ms() -> None:
    assert read_report(REPORT) == {"throughput_rps": 1121.3, "p50_ms": 0.828, "p90_ms": 0.971, "p99_ms": 1.383}
    assert read_report(REPORT.splitlines()[0]) == {"error": "perf_analyzer wrote no measurement"}


def test_a_measurement_is_closed_or_open_loop_never_both() -> None:
    pa = PerfAnalyzer(("perf_analyzer",), "test")
    with pytest.raises(ValueError, match="exactly one of concurrency and rate"):
        measure(pa, "127.0.0.1:1", "m", concurrency=1, rate=10.0)
    with pytest.raises(ValueError, match="exactly one of concurrency and rate"):
        measure(pa, "127.0.0.1:1", "m")
