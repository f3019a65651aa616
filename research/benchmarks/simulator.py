"""`paretoserve bench simulator`: simulated requests per second of wall time on one core."""

from __future__ import annotations

import time
from typing import Any

from paretoserve.research.benchmarks.planner import REPO
from paretoserve.workers.solver_banner import silence_solver_banner


def bench_simulator(quick: bool = False) -> dict[str, Any]:
    """Simulated requests per second of wall time on one core (`paretoserve bench simulator`).

    Three workloads at a constant Poisson-like load, each served by a plan made once (so the number is the
    simulator's, not the solver's): the IPA video chain with dynamic batching (1 M requests), InfAdapter's
    batch-1 M/D/c replicas (1 M) and DiffServe's cascade (400 k). `requests_per_s` pools them; a fourth run
    drives the IPA chain with the real control loop every 10 s and reports its rate including the solves; a
    fifth (`token_level`, not pooled) serves the arithmetic LLM split at 3,000 requests/s token by token
    (iteration-level batching, `sim/tokens.py`), 1.2 M requests.
    """
    import numpy as np

    from paretoserve.planner.sim import SimConfig, Workload, arrivals_from_counts, controllers, summarize
    from paretoserve.planner.spec import load_pipeline_text

    silence_solver_banner()
    scale = 0.2 if quick else 1.0
    cases = [("ipa-video", 500.0, 2000), ("infadapter-resnet", 250.0, 4000), ("diffserve-cascade", 20.0, 20000)]
    out: dict[str, Any] = {}
    total_requests, total_s = 0, 0.0
    for name, load, seconds in cases:
        pipeline = load_pipeline_text((REPO / "manifests" / "examples" / f"{name}.yaml").read_text())
        duration = int(seconds * scale)
        arrivals = arrivals_from_counts(np.full(duration, load), np.random.default_rng(7))
        workload = Workload(arrivals, float(duration), prelude_counts=np.full(60, load))
        factory = controllers.static(name, pipeline, load * 1.1)
        started = time.perf_counter()
        result = controllers.run(pipeline, workload, factory, SimConfig(seed=7, noise_cv=0.05, timeout_s=60.0))
        elapsed = time.perf_counter() - started
        summary = summarize(result)
        out[name] = {"requests": len(arrivals), "seconds": round(elapsed, 3),
                     "requests_per_s": round(len(arrivals) / elapsed),
                     "slo_attainment": round(summary.slo_attainment, 4)}
        total_requests += len(arrivals)
        total_s += elapsed
    pipeline = load_pipeline_text((REPO / "manifests" / "examples" / "ipa-video.yaml").read_text())
    duration = int(1200 * scale)
    arrivals = arrivals_from_counts(np.full(duration, 200.0), np.random.default_rng(7))
    workload = Workload(arrivals, float(duration), prelude_counts=np.full(120, 200.0))
    started = time.perf_counter()
    controllers.run(pipeline, workload, controllers.loop("paretoserve", pipeline), SimConfig(seed=7))
    elapsed = time.perf_counter() - started
    token_level = _token_level(scale)
    return {
        "requests_per_s": round(total_requests / total_s),
        "requests": total_requests,
        "cases": out,
        "with_control_loop": {"pipeline": "ipa-video", "interval_s": 10, "requests": len(arrivals),
                              "requests_per_s": round(len(arrivals) / elapsed)},
        "token_level": token_level,
    }


def _token_level(scale: float, load: float = 3000.0, seconds: int = 400) -> dict[str, Any]:
    import numpy as np

    from paretoserve.planner.sim import SimConfig, Workload, arrivals_from_counts, controllers
    from paretoserve.planner.spec import load_pipeline_text

    pipeline = load_pipeline_text((REPO / "manifests" / "examples" / "arith-llm.yaml").read_text())
    duration = int(seconds * scale)
    arrivals = arrivals_from_counts(np.full(duration, load), np.random.default_rng(7))
    workload = Workload(arrivals, float(duration), prelude_counts=np.full(60, load))
    started = time.perf_counter()
    controllers.run(pipeline, workload, controllers.static("arith-llm", pipeline, load * 1.1), SimConfig(seed=7))
    elapsed = time.perf_counter() - started
    return {"pipeline": "arith-llm", "load_rps": load, "requests": len(arrivals),
            "requests_per_s": round(len(arrivals) / elapsed)}
