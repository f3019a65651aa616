"""`paretoserve bench generation --quick` end to end: the real Triton, the router as its own process, open-loop
streams. Checks the report's structure and what follows from the inputs, never a timing."""

from __future__ import annotations

import os

from paretoserve.research.benchmarks.generation import MM_MODELS, MODELS, bench_generation


def test_bench_generation_reports_latency_curves_router_overhead_and_served_cost() -> None:
    cpus = os.sched_getaffinity(0)
    report = bench_generation(quick=True)
    assert os.sched_getaffinity(0) == cpus  # the client was pinned while it measured, and only then
    for model in MODELS:
        curve = report["curves"][model]
        assert len(curve) == 2
        for point in curve.values():
            assert point["requests"] > 0 and point["errors"] == 0
            assert point["ttft_p50_ms"] > 0 and point["ttft_p99_ms"] >= point["ttft_p50_ms"]
        cost = report["served_cost"][model]
        assert cost["errors"] == 0 and cost["triton_cpu_ms_per_request"] > 0 and cost["engine_ms_per_request"] > 0
        assert cost["request_overhead_ms"] >= 0
    for model in MM_MODELS:  # the multimodal family's requests carry their IMAGE
        cost = report["served_cost"][model]
        assert cost["requests"] > 0 and cost["errors"] == 0 and cost["engine_ms_per_request"] > 0
    # the large model costs more to compute than the small one
    assert report["served_cost"]["arith-large"]["engine_ms_per_request"] > \
        report["served_cost"]["arith-small"]["engine_ms_per_request"]
    for point in report["router"].values():
        assert point["direct"]["errors"] == 0 and point["router"]["errors"] == 0
        assert point["router"]["requests"] > 0 and point["added_ttft_p50_ms"] is not None
