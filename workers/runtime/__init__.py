"""The one-machine runtime: profile variants, serve a pipeline with the real Triton, replay a trace.

A ServingPipeline is planned from profiles and adapted by the one control loop
(`paretoserve.planner.control.ControlLoop`). On a cluster the operator feeds that loop from Prometheus
and applies plans to pods; this package is the same loop on one machine, so a laptop runs the whole
system end to end: `profiler` measures the profile points the planner reads, `local` starts Triton and
the router and drives the loop, `metrics` turns the router's and Triton's metrics into `Observed`,
`actuator` turns plans into Triton instance counts, threads and batching plus router weights and
thresholds, `trace` and `loadgen` replay a per-second trace, and `report` summarises a run.

Modules import torch, tritonclient, httpx or matplotlib at their top; import them only where needed.
"""
