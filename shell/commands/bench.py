"""`paretoserve bench TARGET [--json] [--quick] [--out DIR]`: a benchmark from `paretoserve.research`,
printed as JSON. Speed and memory targets live in these benchmarks, never in timed tests."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from paretoserve.shell.errors import CliError
from paretoserve.workers.solver_banner import silence_solver_banner

NAMES = ("agents", "cascade", "fastpath", "fusion", "generation", "grpc-front", "knobs", "llm", "mm", "operator",
         "planner", "real-node", "router", "simulator")
"""The benchmarks of `paretoserve.research.benchmarks.BENCHMARKS` (a unit test keeps the two equal); named
here so that building the parser does not need the research package, which the sidecar image leaves out."""


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from paretoserve.research.benchmarks import BenchmarkUnavailable, run_bench
    except ImportError:
        raise CliError("bench: this installation has no research package (the sidecar image leaves it out)") from None
    silence_solver_banner()
    if args.out:  # benchmarks that write files (plots) put them here
        os.environ["PARETOSERVE_BENCH_OUT"] = args.out
    try:
        result = run_bench(args.target, quick=args.quick)
    except BenchmarkUnavailable as exc:
        raise CliError(f"bench {args.target}: {exc}") from None
    print(json.dumps(result, indent=2 if not args.json else None))
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print JSON")
    bench.add_argument("target", choices=NAMES)
    bench.add_argument("--json", action="store_true", help="compact JSON on one line")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions")
    bench.add_argument("--out", default=None, help="folder for files a benchmark writes (plots)")
    bench.set_defaults(func=cmd_bench)
