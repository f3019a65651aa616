"""Benchmarks that print JSON (`paretoserve bench TARGET`): speed and memory targets live here.

Each benchmark is a function `(quick: bool) -> dict`, imported only when it runs, so the registry costs
nothing. The operator benchmark needs the e2e cluster harness, which exists only in a repository checkout:
it lives beside that harness (`e2e/bench_operator.py`) and runs as its own process.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any


class BenchmarkUnavailable(RuntimeError):
    """The benchmark cannot run from this installation (e.g. no repository checkout for the e2e harness)."""


def bench_operator(quick: bool = False) -> dict[str, Any]:
    """Run `e2e/bench_operator.py` from the checkout this package was installed from (editable install)."""
    import paretoserve

    script = Path(paretoserve.__file__).resolve().parents[1] / "e2e" / "bench_operator.py"
    if not script.is_file():
        raise BenchmarkUnavailable("needs a repository checkout (e2e/bench_operator.py and the e2e cluster harness)")
    command = [sys.executable, str(script), "--json"] + (["--quick"] if quick else [])
    done = subprocess.run(command, check=False, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise BenchmarkUnavailable(f"{script.name} exited with {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# target -> "module:function(quick: bool) -> dict"; imported only when that benchmark runs.
BENCHMARKS: dict[str, str] = {
    "planner": "paretoserve.research.benchmarks.planner:bench_planner",
    "simulator": "paretoserve.research.benchmarks.simulator:bench_simulator",
    "operator": "paretoserve.research.benchmarks:bench_operator",
    "router": "paretoserve.research.benchmarks.router:bench_router",
    "cascade": "paretoserve.research.benchmarks.cascade:bench_cascade",
}


def run_bench(target: str, *, quick: bool = False) -> dict[str, Any]:
    module, _, function = BENCHMARKS[target].partition(":")
    result: dict[str, Any] = getattr(importlib.import_module(module), function)(quick)
    return result
