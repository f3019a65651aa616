"""`paretoserve plan FILE --load RPS`: solve the integer program once and print the plan."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.model import Baseline, Plan, SolveLimits
from paretoserve.planner.solve import solve
from paretoserve.planner.spec import SpecError
from paretoserve.shell.errors import CliError
from paretoserve.shell.manifests import read_pipeline
from paretoserve.shell.render import plan_json, plan_table
from paretoserve.workers.solver_banner import silence_solver_banner


def cmd_plan(args: argparse.Namespace) -> int:
    pipeline = read_pipeline(args.file)
    if args.load < 0:
        raise CliError(f"--load: must be >= 0, got {args.load}")
    try:
        problem = compile_problem(
            pipeline,
            Observation(load_rps=args.load, min_remaining_budget_ms=args.min_deadline_ms),
            baseline=Baseline(args.baseline),
        )
    except SpecError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    silence_solver_banner()
    plan: Plan = solve(problem, limits=SolveLimits(time_limit_s=args.time_limit, solver=args.solver),
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
    plan.add_argument("--time-limit", type=float, default=10.0, help="solver time limit in seconds")
    plan.add_argument("--min-deadline-ms", type=float, default=None,
                      help="tightest remaining per-request deadline (dynamic SLO)")
    plan.set_defaults(func=cmd_plan)
