"""`paretoserve bench planner`: solve times of the integer program at the sizes the issue names.

Speed targets live here, as a command that prints JSON, never in timed tests. Instances:
- ipa: 5-stage chain × 5 variants × batch {1,2,4,8,16} × replicas ≤ 100, product accuracy (IPA-size);
- diffserve: one cascade, 2 models × 6 batch sizes × 201 thresholds (f(t) from the DiffServe example,
  interpolated to DiffServe's 0.005 grid);
- dag30: a 30-node agent DAG with fan-out and fan-in × 6 variants × 6 batch sizes;
- infadapter: InfAdapter's own program (`manifests/examples/infadapter-resnet.yaml`: 5 ResNets × 19 core
  sizes from its measured capacity table, a traffic split under a 20-core budget, the loading-cost term)
  solved as the control loop does, against the plan applied at the previous load. It is also solved with
  the split's other encoding (one integer replica count per option, what larger splits use): both are
  exact, so their optima must agree, and the times show what the pool encoding buys.
Each is solved at `n` different loads; the brute-force oracle solves one IPA instance once.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paretoserve.planner import milp
from paretoserve.planner.bruteforce import brute_force
from paretoserve.planner.model import (
    Aggregation,
    Budget,
    Cascade,
    CascadeRow,
    Objective,
    Option,
    Plan,
    Problem,
    SolveLimits,
    Stage,
)
from paretoserve.planner.solve import solve
from paretoserve.workers.solver_banner import silence_solver_banner

REPO = Path(__file__).resolve().parents[2]
DIFFSERVE_EXAMPLE = REPO / "manifests" / "examples" / "diffserve-cascade.yaml"
INFADAPTER_EXAMPLE = REPO / "manifests" / "examples" / "infadapter-resnet.yaml"


def _options(variant: str, accuracy: float, base_ms: float, batches: list[int], gpu: bool = False) -> list[Option]:
    out = []
    for b in batches:
        latency = base_ms * (0.6 + 0.4 * b)
        out.append(Option(variant, accuracy, b, 1.0, latency, b * 1000.0 / latency,
                          gpus=(("nvidia.com/gpu", 1.0),) if gpu else ()))
    return out


def ipa_instance(load: float) -> Problem:
    batches = [1, 2, 4, 8, 16]
    stages = []
    for s in range(5):
        opts: list[Option] = []
        for v in range(5):
            opts += _options(f"s{s}v{v}", 0.55 + 0.08 * v + 0.01 * s, 8.0 * (1.6 ** v), batches)
        stages.append(Stage(f"stage{s}", tuple(opts), load, depends_on=(f"stage{s - 1}",) if s else (),
                            max_replicas=100, max_queue_delay_ms=20.0))
    return Problem("ipa-bench", tuple(stages), slo_ms=600.0,
                   objective=Objective(accuracy=2.0, cost=0.01, batch=1e-6, aggregation=Aggregation.PRODUCT))


def _diffserve_rows() -> list[tuple[float, float, float]]:
    """(t, f(t), quality) on the 0.005 grid, interpolated from the example's f(t) rows."""
    points: list[tuple[float, float, float]] = []
    if DIFFSERVE_EXAMPLE.exists():
        from paretoserve.planner.spec import load_pipeline_text

        pipeline = load_pipeline_text(DIFFSERVE_EXAMPLE.read_text())
        stage = next(s for s in pipeline.spec.stages if s.cascade is not None)
        assert stage.cascade is not None
        points = sorted((r.threshold, r.heavy_fraction, r.quality if r.quality is not None else r.heavy_fraction)
                        for r in stage.cascade.rows)
    if len(points) < 2:  # a smooth stand-in when the example is not next to the code
        points = [(t / 20, (t / 20) ** 0.5, -18.0 - 4.0 * (1 - (t / 20) ** 0.5)) for t in range(21)]
    grid = []
    for i in range(201):
        t = i * 0.005
        for (t0, f0, q0), (t1, f1, q1) in zip(points, points[1:], strict=False):
            if t0 <= t <= t1:
                w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                grid.append((t, f0 + w * (f1 - f0), q0 + w * (q1 - q0)))
                break
    return grid


LIGHT_MS = {1: 100.0, 2: 150.0, 4: 220.0, 8: 410.0, 16: 770.0, 32: 1560.0}  # sdturbo, DiffServe profile
HEAVY_MS = {1: 1780.0, 2: 2160.0, 4: 3680.0, 8: 6790.0, 16: 12880.0, 32: 25350.0}  # sdv15


def diffserve_instance(load: float, rows: list[tuple[float, float, float]]) -> Problem:
    opts = [Option("sdturbo", -22.77, b, 4.0, ms, b * 1000.0 / ms, gpus=(("nvidia.com/gpu", 1.0),))
            for b, ms in LIGHT_MS.items()]
    opts += [Option("sdv15", -18.55, b, 4.0, ms, b * 1000.0 / ms, gpus=(("nvidia.com/gpu", 1.0),))
             for b, ms in HEAVY_MS.items()]
    cascade = Cascade("sdturbo", "sdv15", tuple(CascadeRow(t, f, q) for t, f, q in rows), "discriminator")
    stage = Stage("generate", tuple(opts), load, cascade=cascade, max_replicas=15, max_queue_delay_ms=500.0)
    return Problem("diffserve-bench", (stage,), slo_ms=5000.0, budget=Budget(gpus=(("nvidia.com/gpu", 15.0),)),
                   objective=Objective(accuracy=1.0, cost=0.001, aggregation=Aggregation.SUM,
                                       prices=(("nvidia.com/gpu", 1.0),)))


def dag30_instance(load: float, seed: int = 7) -> Problem:
    rng = random.Random(seed)
    batches = [1, 2, 4, 8, 16, 32]
    stages = []
    for i in range(30):
        if i == 0:
            deps: tuple[str, ...] = ()
        else:
            k = 1 if rng.random() < 0.6 else rng.randint(2, 3)  # fan-in
            deps = tuple(sorted({f"n{rng.randrange(max(0, i - 6), i)}" for _ in range(k)}))
        opts: list[Option] = []
        for v in range(6):
            opts += _options(f"n{i}v{v}", 0.7 + 0.05 * v, rng.uniform(2, 6) * (1.5 ** v), batches, gpu=v >= 4)
        stages.append(Stage(f"n{i}", tuple(opts), load * rng.choice([1.0, 1.0, 2.0]), depends_on=deps,
                            max_replicas=100, max_queue_delay_ms=10.0))
    return Problem("dag30-bench", tuple(stages), slo_ms=1500.0,
                   objective=Objective(accuracy=1.0, cost=0.002, aggregation=Aggregation.NORMALIZED_SUM))


def _timed(problem: Problem) -> tuple[float, str]:
    ms, plan = _timed_plan(problem)
    return ms, plan.status.value


def _timed_plan(problem: Problem) -> tuple[float, Plan]:
    started = time.perf_counter()
    plan = solve(problem, limits=SolveLimits(time_limit_s=30.0))
    return (time.perf_counter() - started) * 1000.0, plan


def bench_infadapter(loads: list[float]) -> dict[str, Any]:
    """InfAdapter's program along a load sweep, each solve against the previous plan (see the module notes)."""
    from paretoserve.planner.compile import Observation, compile_problem
    from paretoserve.planner.control import current_allocations
    from paretoserve.planner.spec import load_pipeline_text

    pipeline = load_pipeline_text(INFADAPTER_EXAMPLE.read_text())
    problems = []
    applied = solve(compile_problem(pipeline, Observation(load_rps=loads[0])))
    for load in loads:
        problem = compile_problem(pipeline, Observation(load_rps=load, current=current_allocations(applied)))
        problems.append(problem)
        applied = solve(problem)
    result: dict[str, Any] = {"options": len(problems[0].stages[0].options)}
    objectives: dict[str, list[float | None]] = {}
    for encoding, pool_limit in (("pools", milp.POOL_LIMIT), ("counts", 0)):
        saved, milp.POOL_LIMIT = milp.POOL_LIMIT, pool_limit
        try:
            timed = [_timed_plan(problem) for problem in problems]
        finally:
            milp.POOL_LIMIT = saved
        result[encoding] = _summary([ms for ms, _ in timed], [plan.status.value for _, plan in timed])
        objectives[encoding] = [plan.objective for _, plan in timed]
    result["optima_agree"] = all(a is not None and b is not None and abs(a - b) <= 1e-7
                                 for a, b in zip(objectives["pools"], objectives["counts"], strict=True))
    return result


def _summary(samples: list[float], statuses: list[str]) -> dict[str, Any]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered), 2), "p95_ms": round(p95, 2), "max_ms": round(ordered[-1], 2),
            "n": len(ordered),
            "statuses": {s: statuses.count(s) for s in sorted(set(statuses))}}


def bench_planner(quick: bool = False) -> dict[str, Any]:
    silence_solver_banner()
    n = 8 if quick else 30
    loads = [5.0 + i * (145.0 / max(1, n - 1)) for i in range(n)]
    result: dict[str, Any] = {}
    rows = _diffserve_rows()
    kinds: dict[str, Callable[[float], Problem]] = {
        "ipa": lambda load: ipa_instance(load),
        "diffserve": lambda load: diffserve_instance(load / 10.0, rows),
        "dag30": lambda load: dag30_instance(load / 5.0),
    }
    for name, make in kinds.items():
        solve(make(loads[0]))  # warm-up: imports, solver library load
        times, statuses = [], []
        for load in loads:
            ms, status = _timed(make(load))
            times.append(ms)
            statuses.append(status)
        result[name] = _summary(times, statuses)
    if INFADAPTER_EXAMPLE.exists():
        result["infadapter"] = bench_infadapter([10.0 + i * (240.0 / max(1, n - 1)) for i in range(n)])
    problem = ipa_instance(60.0)
    started = time.perf_counter()
    oracle = brute_force(problem)
    result["ipa_bruteforce_ms"] = round((time.perf_counter() - started) * 1000.0, 1)
    milp = solve(problem)
    result["ipa_bruteforce_matches_milp"] = (
        oracle.objective is not None and milp.objective is not None
        and abs(oracle.objective - milp.objective) <= 1e-6
    )
    result["bruteforce_over_ipa_p50"] = round(result["ipa_bruteforce_ms"] / result["ipa"]["p50_ms"], 1)
    result["diffserve_thresholds"] = len(rows)
    return result
