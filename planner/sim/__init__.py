"""Trace-driven discrete-event simulation of a ServingPipeline under any controller.

The simulator (`engine.Simulator`) is both the `MetricsSource` and the `Actuator` of
`paretoserve.planner.control`: the same `ControlLoop` that runs in the operator drives it, tick by tick.
It is pure like the rest of the planner — no I/O and no clock; randomness comes from a seeded
`numpy.random.Generator` — so a run is a deterministic function of its inputs.

    workload.py     arrivals (per-second counts or timestamps), dynamic SLOs, confidence replay
    pools.py        one pool of replicas with Triton-style dynamic batching, one batch at a time
    tokens.py       one pool of a token-generating variant: continuous batching, KV-cache admission, TTFT/ITL
    engine.py       stages, routing, cascades, DAG fan-out/fan-in, cold starts and resizes
    records.py      per-request arrays, the summary (SLO attainment, p99, accuracy, cost), timelines
    controllers.py  ParetoServe and the baselines behind one `tick(now)` interface; `simulate`
"""

from paretoserve.planner.sim.controllers import Controller, ControllerFactory, run, simulate
from paretoserve.planner.sim.engine import SimConfig, Simulator
from paretoserve.planner.sim.records import COMPLETED, DROPPED, TIMED_OUT, SimResult, Summary, summarize, timeline
from paretoserve.planner.sim.workload import Prompts, Workload, arrivals_from_counts, arrivals_from_timestamps

__all__ = [
    "COMPLETED", "DROPPED", "TIMED_OUT", "Controller", "ControllerFactory", "Prompts", "SimConfig", "SimResult",
    "Simulator", "Summary", "Workload", "arrivals_from_counts", "arrivals_from_timestamps", "run", "simulate",
    "summarize", "timeline",
]
