"""`paretoserve bench agents`: the 8-agent workflow served for real, FIFO against least-slack-first, two plans.

The workflow of `manifests/examples/digits-agents.yaml` (trained here by `paretoserve agents build`, cached)
runs on one real Triton (CPU) behind the real router (`paretoserve router`, a subprocess), which executes the
DAG per request: branches concurrently, each node on what its ``inputs`` declare. Two plans are solved for the
benchmark's load, as the control loop would: today's (goal ``frontier``) and the latency plan (goal
``latency`` with the frontier plan's accuracy as its floor); Triton gets each plan's per-model settings (as
`paretoserve up` applies them) and the router its ``latencyMs`` per stage. For each plan, the same open-loop
load (the project's generator, :mod:`paretoserve.workers.runtime.loadgen`: Poisson arrivals, one image per
request, the SLO as deadline header) runs twice: with the router's queue in ``fifo`` and in ``slack`` order.
The router holds at most as many upstream calls in flight as the machine has cores, so calls queue in the
router, where the order decides which runs next; Triton itself queues FIFO. One router per order runs beside
the other, and the load alternates between them in ``ROUNDS`` rounds, so that the stalls of a shared machine
fall on both orders alike; each order's requests are pooled (``p99MsPerRound`` shows the spread).

Reported per run: end-to-end latency p50/p99 (client side), errors, the workflow's measured accuracy (its
answers against the held-out labels), and per node the median start and the p50/p99 duration from the
router's ``parameters.nodes``: the critical path and where the time went.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.model import Plan
from paretoserve.planner.solve import solve
from paretoserve.planner.spec import Goal, ServingPipeline, load_pipeline_text
from paretoserve.research.benchmarks.router import free_port, router_command, run_process, wait_ready
from paretoserve.research.experiments.agents import accuracy_floor, with_goal
from paretoserve.workers.agents.export import write_repository
from paretoserve.workers.agents.models import ensure_agents
from paretoserve.workers.models import ensure_trained, load_split
from paretoserve.workers.plan_rendering import router_config
from paretoserve.workers.runtime.actuator import LocalLimits, desired_spec, model_settings
from paretoserve.workers.runtime.loadgen import LoadSettings, RequestRecord, run_replay
from paretoserve.workers.runtime.report import node_timing
from paretoserve.workers.runtime.serving import (
    dedicated_cores,
    max_batch_size,
    model_specs,
    pipeline_models,
    running_triton,
)

MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "digits-agents.yaml"
RATE_RPS = 80.0
SECONDS = 15.0
ROUNDS = 4
QUICK_SECONDS = 6.0
ORDERS = ("fifo", "slack")


def _pipeline() -> ServingPipeline:
    if not MANIFEST.is_file():
        from paretoserve.research.benchmarks import BenchmarkUnavailable

        raise BenchmarkUnavailable(f"needs the example manifest {MANIFEST} (a repository checkout)")
    return load_pipeline_text(MANIFEST.read_text(encoding="utf-8"))


def plans(pipeline: ServingPipeline, rate_rps: float) -> dict[str, tuple[ServingPipeline, Plan]]:
    """Today's plan and the latency plan (floor: today's accuracy) for ``rate_rps``."""
    frontier = solve(compile_problem(pipeline, Observation(load_rps=rate_rps)))
    fastest = with_goal(pipeline, Goal.LATENCY, accuracy_floor(pipeline, rate_rps))
    latency = solve(compile_problem(fastest, Observation(load_rps=rate_rps)))
    if latency.accuracy is None:
        raise RuntimeError(f"no latency plan for {rate_rps:g} rps: {latency.status.value} {latency.message}")
    return {"frontier": (pipeline, frontier), "latency": (fastest, latency)}


def _describe(plan: Plan) -> dict[str, Any]:
    return {"status": plan.status.value, "plannedLatencyMs": round(plan.latency_ms or 0.0, 3),
            "accuracy": round(plan.accuracy or 0.0, 4), "cores": round(plan.cpu or 0.0, 3),
            "stages": {sp.stage: "+".join(f"{a.variant}x{a.replicas}@{a.cpu:g}" for a in sp.allocations)
                       for sp in plan.stages}}


def summarize(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """End-to-end percentiles, errors, measured accuracy and each node's start and duration."""
    done = [r for r in records if r.error is None and r.latency_ms is not None]
    latencies = [r.latency_ms for r in done if r.latency_ms is not None]
    errors: dict[str, int] = {}
    for r in records:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    return {"requests": len(records), "errors": errors,
            "p50Ms": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
            "p99Ms": round(float(np.percentile(latencies, 99)), 3) if latencies else None,
            "accuracy": round(sum(r.predicted == r.label for r in done) / len(done), 4) if done else None,
            "nodes": node_timing(records)}


def _offsets(rate_rps: float, seconds: float, seed: int = 0) -> list[float]:
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_rps, size=int(rate_rps * seconds * 1.2) + 10)
    times = np.cumsum(gaps)
    return [float(t) for t in times[times < seconds]]


def _serve(pipeline: ServingPipeline, plan: Plan, repository: Path, work: Path, rate_rps: float, seconds: float,
           rounds: int, concurrency: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """One plan on a fresh Triton, a router per order; the same load alternates between the orders ``rounds``
    times (so a stall of the shared machine hits both alike), and each order's samples are pooled."""
    catalog = ensure_trained()
    cores = dedicated_cores()
    specs = model_specs(pipeline_models(pipeline), catalog, max_batch=max_batch_size(pipeline), repository=repository)
    settings = model_settings(pipeline, plan, LocalLimits(cores, cores))
    specs = {name: desired_spec(spec, settings[name]) for name, spec in specs.items()}
    split = load_split()
    images, labels = split.x_test.astype(np.float32), split.y_test.astype(np.int64)
    slo = pipeline.spec.slo.latency_ms
    records: dict[str, list[RequestRecord]] = {order: [] for order in ORDERS}
    p99s: dict[str, list[float]] = {order: [] for order in ORDERS}
    with running_triton(specs, work / "triton", progress=progress) as triton, contextlib.ExitStack() as stack:
        upstreams = {name: [f"http://{triton.http_url}"] for name in specs}
        loads: dict[str, LoadSettings] = {}
        for order in ORDERS:
            config = {**router_config(pipeline.metadata.name, pipeline.spec, upstreams, plan),
                      "queue": {"concurrency": concurrency, "maxSize": 4096, "order": order}}
            port = free_port()
            log = work / f"router-{order}.log"
            pid = stack.enter_context(run_process(router_command(config, work, port), None, None, log))
            url = f"http://127.0.0.1:{port}"
            wait_ready(f"{url}/v2/health/ready", pid, log)
            loads[order] = LoadSettings(url=url, pipeline=pipeline.metadata.name,
                                        deadline_header=config["deadlineHeader"], deadline_ms=slo)
            run_replay(loads[order], _offsets(rate_rps, 3.0, seed=1), images, labels)  # warm-up
        for round_ in range(rounds):
            for order in ORDERS:
                progress(f"round {round_ + 1}/{rounds}, {order}: {rate_rps:g} rps for {seconds:g} s")
                got = run_replay(loads[order], _offsets(rate_rps, seconds, seed=round_), images, labels)
                records[order] += got
                ok = [r.latency_ms for r in got if r.error is None and r.latency_ms is not None]
                p99s[order].append(round(float(np.percentile(ok, 99)), 3) if ok else float("nan"))
    return {order: {**summarize(records[order]), "p99MsPerRound": p99s[order]} for order in ORDERS}


def bench_agents(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark (``quick``: shorter runs) and return the JSON report."""
    pipeline = _pipeline()
    rate = float(os.environ.get("PARETOSERVE_BENCH_AGENTS_RPS", RATE_RPS))
    seconds = QUICK_SECONDS if quick else SECONDS
    concurrency = dedicated_cores()
    models = ensure_agents()
    chosen = plans(pipeline, rate)

    def progress(message: str) -> None:
        print(f"[bench agents] {message}", flush=True, file=sys.stderr)

    report: dict[str, Any] = {
        "rateRps": rate, "secondsPerRound": seconds, "rounds": 1 if quick else ROUNDS,
        "routerConcurrency": concurrency, "sloMs": pipeline.spec.slo.latency_ms,
        "loadGenerator": "paretoserve.workers.runtime.loadgen (open loop, Poisson arrivals, one image per request)",
        "plans": {name: _describe(plan) for name, (_, plan) in chosen.items()}, "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="paretoserve-bench-agents-") as tmp:
        work = Path(tmp)
        repository = work / "repository"
        repository.mkdir()
        write_repository(models, repository)
        for name, (planned, plan) in chosen.items():
            runs = _serve(planned, plan, repository, work / name, rate, seconds, 1 if quick else ROUNDS, concurrency,
                          progress)
            for order, summary in runs.items():
                report["runs"][f"{name}/{order}"] = summary
    report["gain"] = _gains(report["runs"])
    return report


def _gains(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """p50/p99 of each run relative to FIFO with today's plan."""
    base = runs.get("frontier/fifo", {})
    out: dict[str, Any] = {}
    for name, run in runs.items():
        if name == "frontier/fifo" or not base.get("p99Ms") or run.get("p99Ms") is None:
            continue
        out[name] = {"p50": round(run["p50Ms"] / base["p50Ms"] - 1, 4),
                     "p99": round(run["p99Ms"] / base["p99Ms"] - 1, 4)}
    return out
