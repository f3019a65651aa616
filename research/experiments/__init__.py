"""`paretoserve experiment …`: the papers' comparisons (E1–E5 of papers.md) replayed in the simulator.

Each module describes one experiment — its workloads from ``../shared/data``, ParetoServe and the
baselines as controllers, and the papers' headline claims to check — and `harness.py` runs them all
the same way and writes DIR/results.json, DIR/results.md and PNG plots. These modules are edges: they
read files and print progress; everything they simulate goes through the pure `paretoserve.planner`.
"""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path
from typing import Any

from paretoserve.research.experiments.common import parse_window

EXPERIMENTS = {
    "ipa-video": "paretoserve.research.experiments.ipa_video",
    "infadapter": "paretoserve.research.experiments.infadapter",
    "sponge": "paretoserve.research.experiments.sponge",
    "diffserve": "paretoserve.research.experiments.diffserve",
    "hadis": "paretoserve.research.experiments.hadis",
    "agents": "paretoserve.research.experiments.agents",
    "llm": "paretoserve.research.experiments.llm",
    "llm-mm": "paretoserve.research.experiments.llm_mm",
    "predictors": "paretoserve.research.experiments.predictors",
}


def run_experiment(name: str, out: Path, *, quick: bool = False, window: str | None = None,
                   windows: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Run one experiment and write its outputs under `out`; returns the results document."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    command = ["paretoserve", "experiment", name] + (["--quick"] if quick else []) + ["--out", str(out)]
    if window:
        command += ["--trace-window", window]
    if windows is not None:
        from paretoserve.research.experiments.windows import parse_windows, run_windows
        from paretoserve.workers.solver_banner import silence_solver_banner

        if window or quick:
            raise ValueError("--windows cannot be combined with --trace-window or --quick")
        count = parse_windows(windows)
        silence_solver_banner()
        return run_windows(name, out, count, command=shlex.join([*command, "--windows", windows]),
                           show_progress=show_progress)
    module = importlib.import_module(EXPERIMENTS[name])
    if name == "predictors":
        doc: dict[str, Any] = module.run(out, quick=quick, window=parse_window(window), command=shlex.join(command))
        return doc
    from paretoserve.research.experiments.harness import run_setup, write_outputs
    from paretoserve.workers.solver_banner import silence_solver_banner

    silence_solver_banner()
    setup = module.setup(quick, parse_window(window))
    setup.config = {**setup.config, "command": shlex.join(command), "quick": quick}
    doc, timelines = run_setup(setup, show_progress=show_progress)
    write_outputs(doc, timelines, out)
    return doc
