"""Benchmarks that print JSON (`paretoserve bench TARGET`): speed and memory targets live here.

Each benchmark is a function `(quick: bool) -> dict`, imported only when it runs, so the registry costs
nothing. The operator and real-node benchmarks need the e2e cluster harness, which exists only in a
repository checkout: they live beside it (`e2e/bench_operator.py`, `e2e/bench_real_node.py`) and run as
their own processes.
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


def _e2e_bench(name: str, quick: bool) -> dict[str, Any]:
    """Run ``e2e/<name>`` from the checkout this package was installed from (editable install)."""
    import paretoserve

    script = Path(paretoserve.__file__).resolve().parents[1] / "e2e" / name
    if not script.is_file():
        raise BenchmarkUnavailable(f"needs a repository checkout (e2e/{name} and the e2e cluster harness)")
    command = [sys.executable, str(script), "--json"] + (["--quick"] if quick else [])
    done = subprocess.run(command, check=False, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise BenchmarkUnavailable(f"{script.name} exited with {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench_operator(quick: bool = False) -> dict[str, Any]:
    """The operator on the kwok cluster (`e2e/bench_operator.py`)."""
    return _e2e_bench("bench_operator.py", quick)


def bench_real_node(quick: bool = False) -> dict[str, Any]:
    """The Kubernetes path on real pods (`e2e/bench_real_node.py`)."""
    return _e2e_bench("bench_real_node.py", quick)


# target -> "module:function(quick: bool) -> dict"; imported only when that benchmark runs.
BENCHMARKS: dict[str, str] = {
    "planner": "paretoserve.research.benchmarks.planner:bench_planner",
    "simulator": "paretoserve.research.benchmarks.simulator:bench_simulator",
    "operator": "paretoserve.research.benchmarks:bench_operator",
    "real-node": "paretoserve.research.benchmarks:bench_real_node",
    "router": "paretoserve.research.benchmarks.router:bench_router",
    "fastpath": "paretoserve.research.benchmarks.fastpath:bench_fastpath",
    "knobs": "paretoserve.research.benchmarks.knobs:bench_knobs",
    "grpc-front": "paretoserve.research.benchmarks.grpc_front:bench_grpc_front",
    "cascade": "paretoserve.research.benchmarks.cascade:bench_cascade",
    "fusion": "paretoserve.research.benchmarks.fusion:bench_fusion",
    "agents": "paretoserve.research.benchmarks.agents:bench_agents",
    "llm": "paretoserve.research.benchmarks.llm:bench_llm",
    "generation": "paretoserve.research.benchmarks.generation:bench_generation",
    "mm": "paretoserve.research.benchmarks.mm:bench_mm",
}


def run_bench(target: str, *, quick: bool = False) -> dict[str, Any]:
    module, _, function = BENCHMARKS[target].partition(":")
    result: dict[str, Any] = getattr(importlib.import_module(module), function)(quick)
    return result
