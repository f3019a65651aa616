"""`paretoserve plan FILE --load RPS`: solve the integer program once and print the plan.

Options it cannot honour are errors, not silently replaced: `--load`, `--min-deadline-ms` and
`--time-limit` must be finite and within the planner's bounds, or the command prints one line naming the
option and exits 2. `--time-limit` bounds the whole solve (building the program, the solver, diagnosis).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

from paretoserve.planner.bounds import MAX_LATENCY_MS, MAX_SOLVER_TIME_LIMIT_S
from paretoserve.planner.compile import MAX_LOAD_RPS, Observation, compile_problem
from paretoserve.planner.model import Baseline, Plan, SolveLimits
from paretoserve.planner.solve import solve
from paretoserve.planner.spec import SpecError
from paretoserve.shell.errors import CliError
from paretoserve.shell.manifests import read_pipeline
from paretoserve.shell.render import plan_json, plan_table
from paretoserve.workers.solver_banner import silence_solver_banner


def _within(option: str, value: float, low: float, high: float, *, low_open: bool = False, unit: str = "") -> float:
    """`value` if it is a finite number in [low, high] ((low, high] with `low_open`), else a CliError."""
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise CliError(f"{option}: must be a finite number{unit} in {interval}, got {value!r}")
    return value


def cmd_plan(args: argparse.Namespace) -> int:
    load = _within("--load", args.load, 0.0, MAX_LOAD_RPS, unit=" of requests/s")
    time_limit = _within("--time-limit", args.time_limit, 0.0, MAX_SOLVER_TIME_LIMIT_S, low_open=True,
                         unit=" of seconds")
    deadline = args.min_deadline_ms
    if deadline is not None:
        deadline = _within("--min-deadline-ms", deadline, 0.0, MAX_LATENCY_MS, unit=" of milliseconds")
    pipeline = read_pipeline(args.file)
    if deadline is not None and pipeline.spec.slo.dynamic is None:
        raise CliError(f"--min-deadline-ms: {args.file} has no spec.slo.dynamic, so a deadline would be ignored")
    try:
        problem = compile_problem(
            pipeline,
            Observation(load_rps=load, min_remaining_budget_ms=deadline),
            baseline=Baseline(args.baseline),
        )
    except SpecError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    silence_solver_banner()
    plan: Plan = solve(problem, limits=SolveLimits(time_limit_s=time_limit, solver=args.solver),
                       clock=time.perf_counter)
    if args.json:
        print(json.dumps(plan_json(plan), indent=2))
    else:
        print(plan_table(plan))
    return 0 if plan.status.has_plan else 1


def register(sub: argparse._SubParsersAction[Any]) -> None:
    plan = sub.add_parser("plan", help="solve the integer program for a ServingPipeline at a given load")
    plan.add_argument("file", help="ServingPipeline YAML")
    plan.add_argument("--load", type=float, required=True, help="pipeline requests per second")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--baseline", default="none", choices=[b.value for b in Baseline])
    plan.add_argument("--solver", default="highs", choices=["highs", "cbc"])
    plan.add_argument("--time-limit", type=float, default=10.0,
                      help=f"time limit of the whole solve in seconds, (0, {MAX_SOLVER_TIME_LIMIT_S:g}]")
    plan.add_argument("--min-deadline-ms", type=float, default=None,
                      help=f"tightest remaining per-request deadline in ms, [0, {MAX_LATENCY_MS:g}]; "
                           "needs slo.dynamic")
    plan.set_defaults(func=cmd_plan)
