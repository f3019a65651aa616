"""The `paretoserve` command line: plan, serve locally, profile, replay traces, run experiments and benchmarks.

Bad input never produces a traceback: the CLI prints one line naming the field and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.model import Baseline, Plan, SolveLimits
from paretoserve.planner.solve import solve
from paretoserve.planner.spec import SpecError, load_pipeline_text
from paretoserve.render import plan_json, plan_table
from paretoserve.solver_banner import silence_solver_banner

EXIT_USAGE = 2


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _read_pipeline(path: str) -> object:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return load_pipeline_text(text)
    except SpecError as exc:
        raise CliError(f"{path}: {exc}") from None


def cmd_plan(args: argparse.Namespace) -> int:
    pipeline = _read_pipeline(args.file)
    if args.load < 0:
        raise CliError(f"--load: must be >= 0, got {args.load}")
    try:
        problem = compile_problem(
            pipeline,  # type: ignore[arg-type]
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


def cmd_bench(args: argparse.Namespace) -> int:
    from paretoserve.bench import run_bench

    silence_solver_banner()
    if args.out:  # benchmarks that write files (plots) put them here
        os.environ["PARETOSERVE_BENCH_OUT"] = args.out
    result = run_bench(args.target, quick=args.quick)
    print(json.dumps(result, indent=2 if not args.json else None))
    return 0


# Further command groups live in their own modules, each with `register(subparsers)`; a module keeps its
# heavy imports (torch, tritonclient, starlette) inside its command functions so `paretoserve plan` stays
# fast.
COMMAND_MODULES: tuple[str, ...] = ("paretoserve.experiments.command", "paretoserve.cmd_runtime",
                                    "paretoserve.cmd_router")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paretoserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

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

    from paretoserve.bench import BENCHMARKS

    bench = sub.add_parser("bench", help="benchmarks that print JSON")
    bench.add_argument("target", choices=sorted(BENCHMARKS))
    bench.add_argument("--json", action="store_true", help="compact JSON on one line")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions")
    bench.add_argument("--out", default=None, help="folder for files a benchmark writes (plots)")
    bench.set_defaults(func=cmd_bench)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed a one-line usage error
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"paretoserve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def entrypoint() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `paretoserve plan ... | head`
        code = 0
    sys.exit(code)
