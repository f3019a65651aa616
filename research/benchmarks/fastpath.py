"""`paretoserve bench fastpath`: is the plain model proxy's added latency within its bar *run after run*?

Issue 13's bar for the router's plain proxy path is an added p99 of at most 1 ms at 1,000 requests/s, stable
across at least five runs, and at least 10,000 requests/s through one router core. One run of ``bench router``
measures it once (its ``model_proxy`` section); this benchmark repeats that measurement ``RUNS`` times against
the same Triton, each run starting both fronts afresh (the Python router alone, and the compiled fast path
``native/fastpath`` in front of it: :func:`.router.model_proxy`), and reports every run plus, per front and
rate, the worst, median and best added p99 and how many runs met the bar. The added p99 is the pooled one
(router p99 minus direct p99 over all samples of the run, the stricter figure); the paired-window figure is
reported beside it. Placement and priorities are ``bench router``'s (the router on its own core).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from paretoserve.research.benchmarks.router import (
    FRONTS,
    NICE,
    PROXY_RATES,
    TARGET_ADDED_P99_MS,
    TARGET_RPS_PER_CORE,
    _can_raise_priority,
    _placement,
    light_triton,
    model_proxy,
    write_bodies,
)
from paretoserve.workers.triton.server import TritonServer

RUNS = 5


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per front and rate: worst/median/best added p99 over the runs, and how many met the bar."""
    summary: dict[str, Any] = {}
    for front in FRONTS:
        rates: dict[str, Any] = {}
        for rate in PROXY_RATES:
            key = f"{rate:g}"
            pooled = [run[front]["open_loop"][key]["added_p99_ms"] for run in runs]
            paired = [run[front]["open_loop"][key]["added_p99_ms_paired_windows"] for run in runs]
            rates[key] = {"added_p99_ms_worst": max(pooled), "added_p99_ms_median": statistics.median(pooled),
                          "added_p99_ms_best": min(pooled), "added_p99_ms_paired_median": statistics.median(paired),
                          "runs_within_target": sum(value <= TARGET_ADDED_P99_MS for value in pooled)}
        ceilings = [run[front]["ceiling_one_core"]["rps_one_core"] or 0 for run in runs]
        summary[front] = {"open_loop": rates, "rps_one_core_worst": min(ceilings),
                          "rps_one_core_median": statistics.median(ceilings)}
    at_rate = summary["fastpath"]["open_loop"][f"{max(PROXY_RATES):g}"]
    summary["fastpath_meets_added_p99_every_run"] = at_rate["runs_within_target"] == len(runs)
    summary["fastpath_meets_rps_per_core_every_run"] = summary["fastpath"]["rps_one_core_worst"] >= TARGET_RPS_PER_CORE
    return summary


def bench_fastpath(quick: bool = False) -> dict[str, Any]:
    """``RUNS`` runs (2 when ``quick``) of the model-proxy measurement, each with fresh routers."""
    runs_wanted = 2 if quick else RUNS
    router_cpus, other_cpus = _placement()
    nice = NICE if _can_raise_priority() else None
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="paretoserve-bench-fastpath-") as tmp:
        work = Path(tmp)
        bodies = write_bodies(work / "bodies.jsonl")
        with TritonServer(light_triton(work)) as triton:
            for index in range(runs_wanted):
                run_dir = work / f"run-{index}"
                run_dir.mkdir()
                runs.append(model_proxy(triton.http_url, run_dir, bodies, router_cpus, other_cpus, nice, quick,
                                        duration=6.0 if quick else 10.0, with_perf_analyzer=False))
    return {
        "summary": _summary(runs),
        "runs": runs,
        "targets": {"added_p99_ms_at_1000": TARGET_ADDED_P99_MS, "rps_per_core": TARGET_RPS_PER_CORE},
        "load_generator": "the project's own (router_loadgen: open loop, alternating 1 s windows direct/router; "
                          "closed loop at 16 in flight against an instant stub for the ceiling)",
        "placement": {"router_cpus": sorted(router_cpus) if router_cpus else None,
                      "other_cpus": sorted(other_cpus) if other_cpus else None,
                      "priority": f"nice {nice}" if nice is not None else "default"},
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
        "seconds": round(time.monotonic() - started, 1),
    }
